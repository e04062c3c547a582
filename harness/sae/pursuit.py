"""Gradient pursuit: decompose a vector into a few dictionary rows (SAE decoder rows), as micrlhf's ito.py does.

D is [atom, d_model] (W_dec), x is [d_model]. Weights w = 0; repeat exactly k times: r = x - Dᵀw; g = D r;
add argmax g (or argmax |g|) to the support; g restricted to the support; c = Dᵀg; step = <c, r>/<c, c>;
w += step·g; optionally clip w >= 0. Without the clip each step is an exact line search, so ‖r‖ never grows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.errors import InputError


@dataclasses.dataclass(frozen=True, kw_only=True)
class PursuitResult:
    """weights [atom]; support in the order atoms were added (never repeated); ‖r‖ before each step and after the last."""

    weights: np.ndarray
    support: tuple[int, ...]
    residual_norms: tuple[float, ...]

    def top(self, n: int) -> tuple[int, ...]:
        """The n atoms with the largest |weight|, largest first."""
        return tuple(int(i) for i in np.argsort(-np.abs(self.weights), kind="stable")[:n])


BLOCK_CELLS = 1 << 22  # dictionary cells widened to float64 at a time (32 MiB), so a 49,152-atom decoder is never copied


def _gradient(D: np.ndarray, r: np.ndarray) -> np.ndarray:
    """g = D r [atom] in float64, the dictionary widened a block of rows at a time (each row's dot is its own)."""
    g = np.empty(D.shape[0])
    step = max(1, BLOCK_CELLS // max(1, D.shape[1]))
    for start in range(0, D.shape[0], step):
        g[start:start + step] = D[start:start + step].astype(np.float64) @ r
    return g


def gradient_pursuit(x, dictionary, *, k: int, select: str = "max", nonnegative: bool = False) -> PursuitResult:
    """k steps of gradient pursuit of x over the rows of `dictionary`; select "max" (argmax g) or "abs" (argmax |g|).

    Float64 arithmetic on a dictionary of any float dtype, held as given: D r is taken a block of rows at a time and
    Dᵀw, Dᵀg over the support only (w and the restricted g are zero elsewhere).
    """
    if select not in ("max", "abs"):
        raise InputError(f"select: expected 'max' or 'abs', got {select!r}")
    D = np.asarray(dictionary)
    x = np.asarray(x, dtype=np.float64)
    if D.ndim != 2 or x.shape != (D.shape[1],):
        raise InputError(f"gradient_pursuit: expected dictionary [atom, d] and x [d], got {D.shape} and {x.shape}")
    if k < 1:
        raise InputError(f"k: expected at least 1 step, got {k}")
    w = np.zeros(D.shape[0])
    in_support = np.zeros(D.shape[0], dtype=bool)
    support: list[int] = []
    norms: list[float] = []

    def combine(v: np.ndarray) -> np.ndarray:  # Dᵀv for v zero outside the support
        rows = np.asarray(support, dtype=np.int64)
        return D[rows].astype(np.float64).T @ v[rows]

    for _ in range(k):
        r = x - combine(w)
        norms.append(float(np.linalg.norm(r)))
        g = _gradient(D, r)
        pick = int(np.argmax(g if select == "max" else np.abs(g)))
        if not in_support[pick]:
            in_support[pick] = True
            support.append(pick)
        g = np.where(in_support, g, 0.0)
        c = combine(g)
        cc = float(c @ c)
        step = float(c @ r) / cc if cc > 0 else 0.0
        w = w + step * g
        if nonnegative:
            w = np.maximum(w, 0.0)
    norms.append(float(np.linalg.norm(x - combine(w))))
    return PursuitResult(weights=w, support=tuple(support), residual_norms=tuple(norms))
