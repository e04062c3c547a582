"""Feature readings [question, option, feature] of residuals at the scored position, chunked over features.

Three readings: "encoder" (the SAE's own activation, sae.encode), "preact" (sae.pre_activations) and "decoder"
(the original work's resid · W_dec[f], sae.decoder_projection). Axis order: resid [question, option, embedding].
Every block's contraction runs in the SAE's compute dtype (SAEParams.compute_dtype: bf16 x bf16 -> float32 under
--dtype bfloat16, each chunk's weight slice cast inside its dot); the readings themselves are float32 either way.
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
# float32 cells of one [question, option, feature-chunk] block (64 MiB), so the all-feature readings and their scores
# take a bounded ~0.5 GB whatever d_sae is. The readings' float32 rounding depends on the chunk's width (the matmul's
# shape), so changing this moves figures by float noise.
CHUNK_CELLS = 1 << 24


def _check_resid(resid, params: sae_lib.SAEParams) -> np.ndarray:
    """resid [question, option, embedding] as float32 (a bfloat16 residual widened), finite."""
    r = np.asarray(resid, dtype=np.float32)
    if r.ndim != 3 or r.shape[2] != params.d_model:
        raise InputError(f"resid: expected [question, option, embedding={params.d_model}], got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise InputError(f"resid: {int(np.sum(~np.isfinite(r)))} NaN/inf values, expected all finite")
    return r


def _check_reading(reading: str) -> None:
    if reading not in READINGS:
        raise InputError(f"reading: expected one of {READINGS}, got {reading!r}")


def _encoder_of(params: sae_lib.SAEParams, features: np.ndarray) -> sae_lib.SAEParams:
    """The SAE's encoder restricted to `features` (an index array), for encode and pre_activations only: exact for the
    feature-local encoders (relu, jumprelu, gated), not for TopK's (which reads the full support, see _blocks). The
    decoder is left whole and uncopied (neither function reads W_dec), so the result is not a consistent SAE."""
    cut = {name: (None if getattr(params, name) is None else getattr(params, name)[features])
           for name in ("b_enc", "threshold", "mag_scale", "b_mag")}
    return dataclasses.replace(params, W_enc=params.W_enc[:, features], **cut)


def _topk_support(params: sae_lib.SAEParams, x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) [rows, k] of a TopK SAE's active features on x [rows, embedding] (ties at the k-th value:
    lowest index, as encode), a block of rows at a time so no [rows, d_sae] array is held."""
    step = max(1, CHUNK_CELLS // params.d_sae)  # rows per block of at most CHUNK_CELLS pre-activations
    idx, val = [], []
    for start in range(0, x.shape[0], step):
        values, top = jax.lax.top_k(sae_lib.pre_activations(params, x[start:start + step], name="resid"), params.k)
        idx.append(np.asarray(top))
        val.append(np.asarray(jax.nn.relu(values)))
    return (np.concatenate(idx), np.concatenate(val)) if idx else (np.zeros((0, params.k), np.int32),
                                                                    np.zeros((0, params.k), np.float32))


def _topk_block(support: tuple[np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
    """TopK encoder readings [rows, len(features)] from the support: a feature's value where it is among the k."""
    idx, val = support
    wanted, back = np.unique(features, return_inverse=True)
    pos = np.minimum(np.searchsorted(wanted, idx), wanted.size - 1)
    rows, cols = np.nonzero(wanted[pos] == idx)
    out = np.zeros((idx.shape[0], wanted.size), np.float32)
    out[rows, pos[rows, cols]] = val[rows, cols]
    return out[:, back.reshape(-1)]


def feature_chunk_size(n_rows: int, n_features: int) -> int:
    """Features per chunk so that one float32 block [rows, chunk] stays within CHUNK_CELLS."""
    return int(max(1, min(n_features, CHUNK_CELLS // max(1, n_rows))))


def _blocks(params: sae_lib.SAEParams, x: jax.Array, features: np.ndarray | None, *, reading: str,
            chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """The one reading loop: (slice into the features asked, readings [rows, chunk] float32) for x [rows, embedding].

    features None means all of the SAE's, in order. A chunk's readings of the feature-local encoders need only those
    features' weights; TopK's encoder reads its full support once (in row blocks) and keeps the features asked.
    """
    feats = np.arange(params.d_sae) if features is None else features
    if feats.size == 0:
        return
    step = chunk or feature_chunk_size(x.shape[0], feats.size)
    support = _topk_support(params, x) if reading == "encoder" and params.architecture == "topk" else None
    for start in range(0, feats.size, step):
        sl = slice(start, min(start + step, feats.size))
        idx = feats[sl]
        if reading == "decoder":
            block = sae_lib.decoder_projection(params, x, idx, name="resid")
        elif reading == "preact":
            block = sae_lib.pre_activations(_encoder_of(params, idx), x, name="resid")
        elif support is None:
            block = sae_lib.encode(_encoder_of(params, idx), x, name="resid")
        else:
            block = _topk_block(support, idx)
        yield sl, np.asarray(block, dtype=np.float32)


def _rows(params: sae_lib.SAEParams, x) -> jax.Array:
    """x [..., embedding] (any float dtype, bfloat16 included) as float32 rows [rows, embedding]."""
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != params.d_model:
        raise InputError(f"resid: shape {tuple(x.shape)}, expected last axis d_model={params.d_model}")
    return x.astype(jnp.float32).reshape(-1, params.d_model)


def feature_subset(params: sae_lib.SAEParams, x, features, *, reading: str, chunk: int | None = None) -> np.ndarray:
    """Readings [..., feature] of the given `features` (in that order) on residuals x [..., embedding], any leading axes.

    Feature-local encoders run on those features only; a TopK feature fires only when among the k largest of all
    pre-activations, so TopK reads the full support once and keeps the asked features.
    """
    _check_reading(reading)
    idx = sae_lib.check_features(params, features).reshape(-1)
    rows = _rows(params, x)
    out = np.empty((rows.shape[0], idx.size), np.float32)
    for sl, block in _blocks(params, rows, idx, reading=reading, chunk=chunk):
        out[:, sl] = block
    return out.reshape(*np.shape(x)[:-1], idx.size)


def reading_chunks(resid, params: sae_lib.SAEParams, *, reading: str, features=None,
                   chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (slice into the features, readings [question, option, feature-chunk] float32) over all SAE features, or
    over the `features` given (in that order).

    Only one chunk is held at a time, so all 49,152 features of a large SAE can be scored on any machine; `chunk`
    forces the features per chunk (the default keeps a chunk within CHUNK_CELLS float32 cells).
    """
    _check_reading(reading)
    r = _check_resid(resid, params)
    n_q, n_opt, d = r.shape
    feats = None if features is None else sae_lib.check_features(params, features).reshape(-1)
    for sl, block in _blocks(params, jnp.asarray(r.reshape(n_q * n_opt, d)), feats, reading=reading, chunk=chunk):
        yield sl, block.reshape(n_q, n_opt, -1)


def feature_readings(resid, params: sae_lib.SAEParams, *, reading: str, features=None) -> np.ndarray:
    """Readings [question, option, feature] of all features, or of the `features` given (in that order).

    All features of a wide SAE make a large array (1,531 questions x 4 options x 49,152 features: 1.2 GB); whatever
    reduces over features should loop over reading_chunks instead."""
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
                   tolerance: scores.Tolerance = scores.EXACT, identical=None, chunk: int | None = None) -> FeatureScores:
    """Score every SAE feature of one reading, one feature chunk at a time (seconds for 4096 features).

    tolerance / identical: the tie rule of the tie-aware ("share") figures (scores.argmax_credit); the "first" figures
    are the original's np.argmax / np.argmin rule on the raw readings, as it computed them.
    """
    a = np.asarray(answers)
    tie = dict(tolerance=tolerance, identical=identical)
    fields = {k: np.empty(params.d_sae) for k in ("share", "first", "argmin_share", "argmin_first", "auc", "logprob")}
    for sl, block in reading_chunks(resid, params, reading=reading, chunk=chunk):
        fields["share"][sl] = scores.argmax_accuracy(block, a, ties="share", **tie)
        fields["first"][sl] = scores.argmax_accuracy(block, a, ties="first")
        fields["argmin_share"][sl] = scores.argmin_accuracy(block, a, ties="share", **tie)
        fields["argmin_first"][sl] = scores.argmin_accuracy(block, a, ties="first")
        fields["auc"][sl] = scores.option_auc(block, a)
        fields["logprob"][sl] = scores.correct_logprob(block, a)
    return FeatureScores(reading=reading, n=int(a.size), **fields)
