"""SAE quality metrics (SAEBench's core set) as pure functions of arrays.

Axis order: x, x_hat [token, d_model]; f [token, d_sae]. Every mean is over the token axis of the
sample given, so dead/dense fractions depend on the sample size (``SAEQuality.n_tokens`` says it).
Variance-based figures follow SAEBench: the total variance is E‖x − E x‖² over the whole sample,
not a per-token normalisation (which SAEBench flags as wrong).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from harness.errors import InputError
from harness.sae.sae import SAEParams, encode, decode


def _as_matrix(a, name: str, width: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise InputError(f"{name}: shape {a.shape}, expected [token, features] with at least one token")
    if width is not None and a.shape[1] != width:
        raise InputError(f"{name}: shape {a.shape}, expected {width} columns")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: {int((~np.isfinite(a)).sum())} NaN/inf values, expected all finite")
    return a


def _pair(x, x_hat) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 [token, d_model] of the same shape."""
    x, x_hat = _as_matrix(x, "x"), _as_matrix(x_hat, "x_hat")
    if x_hat.shape != x.shape:
        raise InputError(f"x_hat: shape {x_hat.shape}, expected the shape of x {x.shape}")
    return x, x_hat


def total_variance(x) -> float:
    """E‖x − E x‖² = E‖x‖² − ‖E x‖² over tokens."""
    x = _as_matrix(x, "x")
    return float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())


def mse(x, x_hat) -> float:
    """E‖x − x̂‖² over tokens (summed over d_model)."""
    x, x_hat = _pair(x, x_hat)
    return float(((x - x_hat) ** 2).sum(axis=1).mean())


def fraction_of_variance_unexplained(x, x_hat) -> float:
    """FVU = E‖x − x̂‖² / E‖x − E x‖²; 0 is perfect, 1 is no better than predicting the mean."""
    variance = total_variance(x)
    if variance == 0:
        raise InputError("x: all tokens are identical (zero variance), FVU is undefined")
    return mse(x, x_hat) / variance


def explained_variance(x, x_hat) -> float:
    """SAEBench's explained variance, 1 − FVU."""
    return 1.0 - fraction_of_variance_unexplained(x, x_hat)


def cosine_similarity(x, x_hat) -> float:
    """Mean over tokens of cos(x, x̂); a token where either vector is zero counts as 0."""
    x, x_hat = _pair(x, x_hat)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
    dots = (x * x_hat).sum(axis=1)
    return float(np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0).mean())


def relative_reconstruction_bias(x, x_hat) -> float:
    """γ = E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE paper, SAEBench): < 1 means the SAE shrinks its outputs."""
    x, x_hat = _pair(x, x_hat)
    dot = (x * x_hat).sum(axis=1).mean()
    if dot == 0:
        raise InputError("x_hat: orthogonal to x on average, relative reconstruction bias is undefined")
    return float((x_hat**2).sum(axis=1).mean() / dot)


def firing_frequency(f) -> np.ndarray:
    """Fraction of tokens on which each feature is non-zero, [d_sae]."""
    return (_as_matrix(f, "f") != 0).mean(axis=0)


def mean_l0(f) -> float:
    """Mean number of non-zero features per token."""
    return float((_as_matrix(f, "f") != 0).sum(axis=1).mean())


def mean_l1(f) -> float:
    """Mean L1 norm of the feature vector per token."""
    return float(np.abs(_as_matrix(f, "f")).sum(axis=1).mean())


def dead_fraction(f) -> float:
    """Fraction of features that never fire on the sample."""
    return float((firing_frequency(f) == 0).mean())


def dense_fraction(f, *, above: float) -> float:
    """Fraction of features firing on more than ``above`` of the tokens (SAEBench: 0.01 and 0.1)."""
    if not 0 <= above < 1:
        raise InputError(f"dense_fraction above={above}, expected a frequency in [0, 1)")
    return float((firing_frequency(f) > above).mean())


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_zero_ablate: float) -> float:
    """(CE_zero − CE_sae) / (CE_zero − CE_clean): 1 when splicing the SAE in costs nothing, 0 as bad as zeroing."""
    values = dict(ce_clean=ce_clean, ce_sae=ce_sae, ce_zero_ablate=ce_zero_ablate)
    for name, value in values.items():
        if not math.isfinite(value):
            raise InputError(f"{name}={value}, expected a finite cross-entropy")
    if ce_zero_ablate == ce_clean:
        raise InputError(f"ce_zero_ablate == ce_clean == {ce_clean}, CE loss recovered is undefined")
    return (ce_zero_ablate - ce_sae) / (ce_zero_ablate - ce_clean)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEQuality:
    """All core quality figures of one SAE on one sample of ``n_tokens`` tokens; computed once, read everywhere.

    ``ce_loss_recovered`` is None until the model-side splice measures it.
    """

    n_tokens: int
    fvu: float
    explained_variance: float
    mse: float
    mean_l0: float
    mean_l1: float
    dead_fraction: float
    dense_fraction_1pct: float
    dense_fraction_10pct: float
    cosine_similarity: float
    relative_reconstruction_bias: float
    ce_loss_recovered: float | None = None


def quality_from_arrays(x, x_hat, f, *, ce_loss_recovered: float | None = None) -> SAEQuality:
    """Every SAEQuality figure from activations x, reconstructions x̂ and features f (same token axis)."""
    x, x_hat = _pair(x, x_hat)
    f = _as_matrix(f, "f")
    if f.shape[0] != x.shape[0]:
        raise InputError(f"f: {f.shape[0]} tokens, expected the {x.shape[0]} tokens of x")
    fvu = fraction_of_variance_unexplained(x, x_hat)
    return SAEQuality(
        n_tokens=int(x.shape[0]), fvu=fvu, explained_variance=1.0 - fvu, mse=mse(x, x_hat),
        mean_l0=mean_l0(f), mean_l1=mean_l1(f), dead_fraction=dead_fraction(f),
        dense_fraction_1pct=dense_fraction(f, above=0.01), dense_fraction_10pct=dense_fraction(f, above=0.1),
        cosine_similarity=cosine_similarity(x, x_hat),
        relative_reconstruction_bias=relative_reconstruction_bias(x, x_hat),
        ce_loss_recovered=ce_loss_recovered,
    )


def measure_quality(params: SAEParams, x, *, ce_loss_recovered: float | None = None,
                    chunk: int = 4096) -> SAEQuality:
    """Run the SAE over x [token, d_model] in chunks of ``chunk`` tokens and measure its quality.

    An SAE that reads a centred residual (``center_input``) is measured in that space, x minus its mean over d_model
    against decode(f), as SAELens measures it on TransformerLens' centred residual."""
    x = _as_matrix(x, "x", width=params.d_model)
    if params.center_input:
        x = x - x.mean(axis=1, keepdims=True)
    fs, x_hats = [], []
    for start in range(0, x.shape[0], chunk):
        f = encode(params, x[start:start + chunk].astype(np.float32))
        fs.append(np.asarray(f))
        x_hats.append(np.asarray(decode(params, f)))
    return quality_from_arrays(x, np.concatenate(x_hats), np.concatenate(fs), ce_loss_recovered=ce_loss_recovered)
