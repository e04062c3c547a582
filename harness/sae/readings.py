"""Feature readings [question, option, feature] of residuals at the scored position, chunked over features.

Three readings: "encoder" (the SAE's own activation, sae.encode), "preact" (sae.pre_activations) and "decoder"
(the original work's resid · W_dec[f], sae.decoder_projection). Axis order: resid [question, option, embedding].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from harness.errors import InputError
from harness.sae import sae as sae_lib
from harness.scoring import scores

READINGS = ("encoder", "preact", "decoder")
READING_AXES = ("question", "option", "feature")
CHUNK_CELLS = 1 << 24  # float32 cells of one [question, option, feature-chunk] block (64 MiB)


def _check_resid(resid, params: sae_lib.SAEParams) -> np.ndarray:
    r = np.asarray(resid, dtype=np.float32)
    if r.ndim != 3 or r.shape[2] != params.d_model:
        raise InputError(f"resid: expected [question, option, embedding={params.d_model}], got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise InputError(f"resid: {int(np.sum(~np.isfinite(r)))} NaN/inf values, expected all finite")
    return r


def _check_reading(reading: str) -> None:
    if reading not in READINGS:
        raise InputError(f"reading: expected one of {READINGS}, got {reading!r}")


def _select(params: sae_lib.SAEParams, features) -> sae_lib.SAEParams:
    """The SAE restricted to `features` (a slice or index array); exact for the feature-local encoders (relu,
    jumprelu, gated) and for pre-activations, not for TopK's encoder (see feature_subset)."""
    cut = {name: (None if getattr(params, name) is None else getattr(params, name)[features])
           for name in ("b_enc", "threshold", "mag_scale", "b_mag")}
    return dataclasses.replace(params, W_enc=params.W_enc[:, features], W_dec=params.W_dec[features], **cut)


def _topk_support(params: sae_lib.SAEParams, x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) [..., k] of a TopK SAE's active features (ties at the k-th value: lowest index, as encode)."""
    pre = sae_lib.pre_activations(params, x, name="resid")
    values, idx = jax.lax.top_k(pre, params.k)
    return np.asarray(idx), np.asarray(jax.nn.relu(values))


def feature_subset(params: sae_lib.SAEParams, x, features, *, reading: str) -> np.ndarray:
    """Readings [..., feature] of the given `features` (in that order) on residuals x [..., embedding], any leading axes.

    Feature-local encoders run on those features only; a TopK feature fires only when among the k largest of all
    pre-activations, so TopK reads the full support once and keeps the asked features.
    """
    _check_reading(reading)
    idx = sae_lib.check_features(params, features)
    x = jnp.asarray(x, jnp.float32)
    if reading == "decoder":
        return np.asarray(sae_lib.decoder_projection(params, x, idx, name="resid"), np.float32)
    if reading == "preact":
        return np.asarray(sae_lib.pre_activations(_select(params, idx), x, name="resid"), np.float32)
    if params.architecture != "topk":
        return np.asarray(sae_lib.encode(_select(params, idx), x, name="resid"), np.float32)
    top, values = _topk_support(params, x)                                        # [..., k]
    return np.einsum("...kf,...k->...f", (top[..., None] == idx).astype(np.float32), values)


def feature_chunk_size(n_rows: int, d_sae: int) -> int:
    """Features per chunk so that one float32 block [rows, chunk] stays within CHUNK_CELLS."""
    return int(max(1, min(d_sae, CHUNK_CELLS // max(1, n_rows))))


def reading_chunks(resid, params: sae_lib.SAEParams, *, reading: str,
                   chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (feature slice, readings [question, option, feature-chunk] float32) over all SAE features.

    Only one chunk is held at a time, so all 49,152 features of a large SAE can be scored on any machine.
    """
    _check_reading(reading)
    r = _check_resid(resid, params)
    n_q, n_opt, d = r.shape
    x = jnp.asarray(r.reshape(n_q * n_opt, d))
    step = chunk or feature_chunk_size(n_q * n_opt, params.d_sae)
    support = _topk_support(params, x) if reading == "encoder" and params.architecture == "topk" else None
    for start in range(0, params.d_sae, step):
        sl = slice(start, min(start + step, params.d_sae))
        if reading == "decoder":
            block = sae_lib.decoder_projection(params, x, np.arange(sl.start, sl.stop), name="resid")
        elif reading == "preact":
            block = sae_lib.pre_activations(_select(params, sl), x, name="resid")
        elif support is None:
            block = sae_lib.encode(_select(params, sl), x, name="resid")
        else:
            idx, val = support
            block = np.zeros((x.shape[0], sl.stop - sl.start), np.float32)
            rows, cols = np.nonzero((idx >= sl.start) & (idx < sl.stop))
            block[rows, idx[rows, cols] - sl.start] = val[rows, cols]
        yield sl, np.asarray(block, dtype=np.float32).reshape(n_q, n_opt, -1)


def feature_readings(resid, params: sae_lib.SAEParams, *, reading: str, features=None) -> np.ndarray:
    """Readings [question, option, feature] of all features, or of the `features` given (in that order)."""
    r = _check_resid(resid, params)
    if features is not None:
        return feature_subset(params, r, features, reading=reading)
    out = np.empty((r.shape[0], r.shape[1], params.d_sae), np.float32)
    for sl, block in reading_chunks(r, params, reading=reading):
        out[:, :, sl] = block
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureScores:
    """Per-feature scores [feature] of one reading on one question set (n questions).

    share/first: argmax accuracy with ties given 1/t credit vs np.argmax's tie-to-first (the original's rule);
    argmin_*: the same for the smallest score; better_first: the original's reported max(argmax, argmin) with
    tie-to-first; auc: ROC-AUC over (question, option) pairs; logprob: mean log-softmax of the correct option.
    """

    reading: str
    n: int
    share: np.ndarray
    first: np.ndarray
    argmin_share: np.ndarray
    argmin_first: np.ndarray
    auc: np.ndarray
    logprob: np.ndarray

    @property
    def better_first(self) -> np.ndarray:
        return np.maximum(self.first, self.argmin_first)


def score_features(resid, answers, params: sae_lib.SAEParams, *, reading: str,
                   tolerance: scores.Tolerance = scores.EXACT, identical=None) -> FeatureScores:
    """Score every SAE feature of one reading, one feature chunk at a time (seconds for 4096 features).

    tolerance / identical: the tie rule of the tie-aware ("share") figures (scores.argmax_credit); the "first" figures
    are the original's np.argmax / np.argmin rule on the raw readings, as it computed them.
    """
    a = np.asarray(answers)
    tie = dict(tolerance=tolerance, identical=identical)
    fields = {k: np.empty(params.d_sae) for k in ("share", "first", "argmin_share", "argmin_first", "auc", "logprob")}
    for sl, block in reading_chunks(resid, params, reading=reading):
        fields["share"][sl] = scores.argmax_accuracy(block, a, ties="share", **tie)
        fields["first"][sl] = scores.argmax_accuracy(block, a, ties="first")
        fields["argmin_share"][sl] = scores.argmin_accuracy(block, a, ties="share", **tie)
        fields["argmin_first"][sl] = scores.argmin_accuracy(block, a, ties="first")
        fields["auc"][sl] = scores.option_auc(block, a)
        fields["logprob"][sl] = scores.correct_logprob(block, a)
    return FeatureScores(reading=reading, n=int(a.size), **fields)
