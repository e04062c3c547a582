"""Run an SAE inside the model: residual activations at its layer, and next-token CE with the residual
kept (clean), replaced by the SAE's reconstruction (spliced), or zeroed (zero-ablated).

Works with every execution form, because it only calls ``harness.model.capture``. Axis order:
tokens [batch, seq]; residuals [batch, seq, d_model]; collected activations [token, d_model]
(sequence-major, BOS position left out). BOS (position 0) keeps its clean residual in every CE
variant: it is an attention sink the SAE is not trained on (BRIEF §4), and all three variants see
the same BOS, so the comparison measures the SAE on text tokens only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from harness.errors import InputError
from harness.model import capture
from harness.runs.batching import Batch, run_batches
from harness.sae.metrics import SAEQuality, ce_loss_recovered, measure_quality
from harness.sae.sae import SAEParams, reconstruct
from harness.sae.train import drop_outlier_tokens

Edit = Callable[[jax.Array], jax.Array]  # residual [batch, seq, d_model] -> same shape


@dataclasses.dataclass(frozen=True, kw_only=True)
class CELosses:
    """Mean next-token cross-entropy (nats) over ``n_predictions`` predictions, three ways."""

    ce_clean: float
    ce_spliced: float
    ce_zero_ablate: float
    n_predictions: int

    @property
    def recovered(self) -> float:
        """(CE_zero − CE_spliced) / (CE_zero − CE_clean), SAEBench's CE score."""
        return ce_loss_recovered(self.ce_clean, self.ce_spliced, self.ce_zero_ablate)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEEvaluation:
    """An SAE measured on a token sample: quality on the kept tokens, CE over every prediction, outliers dropped."""

    quality: SAEQuality
    ce: CELosses
    n_sequences: int  # sequences the quality figures read (CE reads the first ce.n_predictions/(seq-1) of them)
    n_tokens: int  # text tokens (BOS excluded) before outliers were dropped
    n_outliers: int  # tokens left out of the quality figures by drop_outlier_tokens
    outlier_factor: float


def _check_sequences(tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise InputError(f"token sequences: shape {tokens.shape}, expected [sequence, position] with ≥1 sequence of ≥2 tokens")
    return tokens


def _batches(tokens: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}, expected >= 1")
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start:start + batch_size]


def next_token_ce(logits, tokens) -> np.ndarray:
    """Cross-entropy [batch, seq-1] of token t+1 under the logits at position t (float64 numpy)."""
    logits = jnp.asarray(logits, jnp.float32)
    tokens = jnp.asarray(tokens)
    if logits.shape[:2] != tokens.shape:
        raise InputError(f"logits shape {logits.shape} does not match tokens shape {tokens.shape}")
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return -np.asarray(picked, dtype=np.float64)


def with_positions_kept(resid: jax.Array, edited: jax.Array, *, keep_first: int) -> jax.Array:
    """``edited`` at positions ≥ keep_first, the original ``resid`` before (BOS stays clean)."""
    position = jnp.arange(resid.shape[1])[None, :, None]
    return jnp.where(position < keep_first, resid, edited)


def ce_losses(model, tokens, *, layer: int, edit: Edit, where: capture.Where = "pre", max_context: int,
              batch_size: int = 8, keep_first: int = 1, progress: bool = False) -> CELosses:
    """Mean next-token CE of ``tokens`` [sequence, position]: clean, with ``edit`` applied to the residual
    at ``layer`` (positions ≥ keep_first), and with that residual zeroed at the same positions.

    Clean logits and the residual at the layer come from one forward (``capture.residual_and_logits``), the other two
    from that residual continued by ``capture.logits_from_residual`` — so an identity edit checks the splice itself.
    """
    tokens = _check_sequences(tokens)
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}, expected >= 1")
    sums = np.zeros(3)
    bar = tqdm(total=tokens.shape[0], desc="CE clean/spliced/zero", disable=not progress)

    def forward(batch: Batch):
        resid, clean = capture.residual_and_logits(model, batch.tokens, layer=layer, where=where,
                                                   max_context=max_context)
        spliced = with_positions_kept(resid, jnp.asarray(edit(resid), resid.dtype), keep_first=keep_first)
        zeroed = with_positions_kept(resid, jnp.zeros_like(resid), keep_first=keep_first)
        return (clean, capture.logits_from_residual(model, spliced, layer=layer, where=where),
                capture.logits_from_residual(model, zeroed, layer=layer, where=where))

    def take(batch: Batch, logits) -> None:
        k = len(batch.members)   # rows past the members are padding
        for i, lg in enumerate(logits):
            sums[i] += next_token_ce(lg[:k], batch.tokens[:k]).sum()

    run_batches(tokens, forward=forward, take=take, max_len=tokens.shape[1], batch_size=batch_size,
                token_budget=batch_size * tokens.shape[1], label="CE clean/spliced/zero",
                progress=lambda p: bar.update(p.done - bar.n))
    bar.close()
    count = tokens.shape[0] * (tokens.shape[1] - 1)
    ce_clean, ce_spliced, ce_zero = (float(s / count) for s in sums)
    return CELosses(ce_clean=ce_clean, ce_spliced=ce_spliced, ce_zero_ablate=ce_zero, n_predictions=count)


def residual_batches(model, tokens, *, layer: int, where: capture.Where = "pre", max_context: int,
                     batch_size: int = 32, skip_first: int = 1) -> Iterator[np.ndarray]:
    """Residuals at ``layer`` as float32 [token, d_model] per batch of sequences, positions < skip_first left out.

    A lazy stream for SAE training (train_sae consumes it batch by batch); the gate's residuals (gate_arrays) and the
    CE figures run through runs.batching like every study's forwards."""
    tokens = _check_sequences(tokens)
    if not 0 <= skip_first < tokens.shape[1]:
        raise InputError(f"skip_first={skip_first}, expected 0..{tokens.shape[1] - 1}")
    for batch in _batches(tokens, batch_size):
        resid = capture.residual(model, batch, layer=layer, where=where, max_context=max_context)
        resid = np.asarray(resid[:, skip_first:], dtype=np.float32)
        yield resid.reshape(-1, resid.shape[-1])


def gate_arrays(model, params: SAEParams, tokens, *, layer: int, where: capture.Where = "pre", max_context: int,
                n_ce_sequences: int | None = None, batch_size: int = 8, progress: bool = False) -> dict[str, np.ndarray]:
    """The model part of evaluate_sae as plain arrays (so a caller can cache them): residuals "x" [token, d_model]
    (BOS left out) and "ce" = [clean, spliced, zero-ablated] mean CE with "n_predictions" over the first n_ce_sequences.
    The spliced reconstruction's contractions run in ``params.compute_dtype`` (bf16 x bf16 -> float32 under bfloat16)."""
    tokens = _check_sequences(tokens)
    n_ce = tokens.shape[0] if n_ce_sequences is None else n_ce_sequences
    if not 0 < n_ce <= tokens.shape[0]:
        raise InputError(f"n_ce_sequences={n_ce_sequences}, expected 1..{tokens.shape[0]} (the sequences given)")
    x = np.empty((tokens.shape[0], tokens.shape[1] - 1, params.d_model), np.float32)   # BOS left out

    def take(batch: Batch, resid) -> None:
        x[batch.members] = np.asarray(resid[: len(batch.members), 1:], np.float32)

    run_batches(tokens, take=take, max_len=tokens.shape[1], batch_size=batch_size,
                token_budget=batch_size * tokens.shape[1], label="SAE gate residuals",
                forward=lambda batch: capture.residual(model, batch.tokens, layer=layer, where=where,
                                                       max_context=max_context))
    x = x.reshape(-1, params.d_model)
    ce = ce_losses(model, tokens[:n_ce], layer=layer, where=where, max_context=max_context, batch_size=batch_size,
                   edit=lambda r: reconstruct(params, r), progress=progress)
    return {"x": x, "ce": np.array([ce.ce_clean, ce.ce_spliced, ce.ce_zero_ablate], np.float64),
            "n_predictions": np.int64(ce.n_predictions), "n_sequences": np.int64(tokens.shape[0])}


def evaluation_from_arrays(params: SAEParams, arrays: dict[str, np.ndarray], *,
                           outlier_factor: float = 10.0) -> SAEEvaluation:
    """The pure part of evaluate_sae: quality on gate_arrays' residuals (norm outliers dropped) and its CE figures."""
    x = np.asarray(arrays["x"])
    kept, n_outliers = drop_outlier_tokens(x, factor=outlier_factor)
    ce_clean, ce_spliced, ce_zero = (float(v) for v in arrays["ce"])
    ce = CELosses(ce_clean=ce_clean, ce_spliced=ce_spliced, ce_zero_ablate=ce_zero,
                  n_predictions=int(arrays["n_predictions"]))
    quality = measure_quality(params, kept, ce_loss_recovered=ce.recovered)
    return SAEEvaluation(quality=quality, ce=ce, n_sequences=int(arrays["n_sequences"]), n_tokens=int(x.shape[0]),
                         n_outliers=n_outliers, outlier_factor=outlier_factor)


def evaluate_sae(model, params: SAEParams, tokens, *, layer: int, where: capture.Where = "pre", max_context: int,
                 n_ce_sequences: int | None = None, outlier_factor: float = 10.0, batch_size: int = 8,
                 progress: bool = False) -> SAEEvaluation:
    """Every quality figure of ``params`` on ``tokens`` [sequence, position] in one place.

    FVU/L0/dead/dense on the text tokens with BOS and norm outliers (> outlier_factor × median) left
    out, as in training; CE clean/spliced/zero over every next-token prediction of the first
    ``n_ce_sequences`` sequences (all when None: CE needs ~3 forwards, so it is the costly part), BOS kept clean.
    """
    arrays = gate_arrays(model, params, tokens, layer=layer, where=where, max_context=max_context,
                         n_ce_sequences=n_ce_sequences, batch_size=batch_size, progress=progress)
    return evaluation_from_arrays(params, arrays, outlier_factor=outlier_factor)
