"""One definition of forward efficiency, shared by scripts/bench_forward.py and scripts/bench_evaluation.py.

efficiency = (XLA cost-analysis FLOPs of the forward / its wall seconds) / (FLOP/s of a jitted matmul of the forward's
own MLP shape [tokens, d_model] x [d_ffn, d_model]^T in the forward's dtype with float32 accumulation, timed in the same
process). FLOPs are counted on a
program with no while loop: XLA's cost analysis counts a loop body once, so the scan form's own count is about
1/n_layers of the work — count on the unrolled form of the same weights (same math, same FLOPs).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from harness.errors import InputError

_WHILE = re.compile(r"\bstablehlo\.while\b")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Efficiency:
    """A forward's FLOP/s against the same-run matmul's FLOP/s."""

    flops: float                          # XLA cost-analysis FLOPs of the work timed
    seconds: float                        # wall seconds of that work
    matmul_shape: tuple[int, int, int]    # (m, k, n) of the reference matmul [m, k] x [n, k]^T
    matmul_flops_per_s: float             # its best FLOP/s in this process
    dtype: str = "float32"                # the matmul's operand dtype (float32 result either way)

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def fraction(self) -> float:
        """FLOP/s of the forward / FLOP/s of the matmul (the target is >= 0.5)."""
        return self.flops_per_s / self.matmul_flops_per_s

    def summary(self) -> str:
        m, k, n = self.matmul_shape
        return (f"{self.flops_per_s / 1e9:.1f} GFLOP/s = {self.fraction:.0%} of a jitted {self.dtype} matmul "
                f"[{m},{k}]x[{n},{k}]^T ({self.matmul_flops_per_s / 1e9:.1f} GFLOP/s, same run)")


def lowered_flops(lowered) -> float:
    """XLA's cost-analysis FLOPs of a `jax.jit(...).lower(...)` result; refuses a program with a while loop."""
    if _WHILE.search(lowered.as_text()):
        raise InputError("lowered program has a while loop: XLA counts its body once; count FLOPs on the unrolled form")
    analysis = lowered.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def best_seconds(call: Callable[[], object], *, repeats: int = 3) -> float:
    """Least wall seconds of `repeats` calls of `call()` (each waited for), after one untimed warm-up call."""
    if repeats < 1:
        raise InputError(f"repeats={repeats}: expected >= 1")
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_s(m: int, k: int, n: int, *, dtype: str = "float32", repeats: int = 5) -> float:
    """Best FLOP/s of a jitted [m, k] x [n, k]^T dot (2 m k n FLOPs) in `dtype` with a float32 result, in this process:
    the layout and accumulation of the model's own contractions (harness.model.rewrites), so its ceiling."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(m, k)), dtype)
    b = jnp.asarray(rng.normal(size=(n, k)), dtype)
    f = jax.jit(lambda x, w: jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32))
    return 2.0 * m * k * n / best_seconds(lambda: f(a, b), repeats=repeats)


def efficiency(*, flops: float, seconds: float, tokens: int, d_model: int, d_ffn: int, dtype: str = "float32",
               repeats: int = 5) -> Efficiency:
    """`flops` done in `seconds` against a `dtype` matmul [tokens, d_model] x [d_ffn, d_model]^T timed now."""
    if flops <= 0 or seconds <= 0 or tokens < 1:
        raise InputError(f"flops={flops}, seconds={seconds}, tokens={tokens}: expected positive values")
    shape = (int(tokens), int(d_model), int(d_ffn))
    return Efficiency(flops=flops, seconds=seconds, matmul_shape=shape, dtype=dtype,
                      matmul_flops_per_s=matmul_flops_per_s(*shape, dtype=dtype, repeats=repeats))
