"""Run a built model on token ids: full logits, the residual stream at one layer, or both.

The residual stream "pre" block L is the input of block L (the output of blocks 0..L-1; for L = 0
the scaled embeddings), "post" block L is its output — Hugging Face's hidden_states[L] and
hidden_states[L + 1]. A forward that only needs the residual stops at that layer.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts

from harness.errors import InputError
from harness.model.forms import LAYER_AXIS

Where = Literal["pre", "post"]
# Axis names of token inputs and of the activations returned here, in this order.
BATCH, SEQ, EMBEDDING, VOCAB = "batch", "seq", "embedding", "vocabulary"


def _parts(model: model_parts.TransformerLM):
    """(layers before the blocks, list of blocks or one stack, layers after the blocks)."""
    layers = list(model.body.sublayers)
    is_block = [isinstance(l, (model_parts.TransformerBlock, pz.nn.LayerStack)) for l in layers]
    first, last = is_block.index(True), len(is_block) - 1 - is_block[::-1].index(True)
    return layers[:first], layers[first : last + 1], layers[last + 1 :]


def n_layers(model: model_parts.TransformerLM) -> int:
    _, blocks, _ = _parts(model)
    if isinstance(blocks[0], pz.nn.LayerStack):
        return blocks[0].stack_axis_size
    return len(blocks)


def _block_range(blocks: list, start: int, stop: int) -> list:
    """Blocks [start, stop) in the model's own form (a stack is sliced along LAYER_AXIS)."""
    if stop <= start:
        return []
    if not isinstance(blocks[0], pz.nn.LayerStack):
        return blocks[start:stop]
    stack = blocks[0]
    sliced = (
        pz.select(stack.stacked_sublayers)
        .at_instances_of(pz.nx.NamedArrayBase)
        .where(lambda x: LAYER_AXIS in x.named_shape)
        .apply(lambda x: x[{LAYER_AXIS: slice(start, stop)}])
    )
    return [type(stack)(sliced, stack.stack_axis, stop - start)]


def check_layer(model, layer: int, where: Where) -> int:
    """Number of blocks to run for the residual `where` block `layer`; InputError if out of range."""
    total = n_layers(model)
    if where not in ("pre", "post"):
        raise InputError(f"where={where!r}: expected 'pre' or 'post'")
    if not 0 <= layer < total:
        raise InputError(f"layer {layer} out of range: the model has blocks 0..{total - 1}")
    return layer if where == "pre" else layer + 1


def check_tokens(tokens: np.ndarray, max_context: int) -> None:
    """Token ids must be a 2-d integer [batch, seq] array no longer than the context."""
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise InputError(f"tokens: expected an integer [batch, seq] array, got {tokens.dtype} {tokens.shape}")
    if tokens.shape[1] > max_context:
        raise InputError(
            f"prompt of {tokens.shape[1]} tokens is longer than the model's context of {max_context}"
        )


def _named_tokens(tokens) -> pz.nx.NamedArray:
    return pz.nx.wrap(jnp.asarray(tokens, jnp.int32)).tag(BATCH, SEQ)


def _residual(model, tokens, n_blocks: int):
    prefix, blocks, _ = _parts(model)
    positions = pz.nx.arange(SEQ, tokens.shape[1])
    x = _named_tokens(tokens)
    for layer in [*prefix, *_block_range(blocks, 0, n_blocks)]:
        x = layer(x, token_positions=positions)
    return x


def _logits_from(model, resid, start_block: int):
    _, blocks, suffix = _parts(model)
    positions = pz.nx.arange(SEQ, resid.named_shape[SEQ])
    x = resid
    for layer in [*_block_range(blocks, start_block, n_layers(model)), *suffix]:
        x = layer(x, token_positions=positions)
    return x


@jax.jit
def _logits(model, tokens):
    return _residual_and_logits(model, tokens, 0)[1].unwrap(BATCH, SEQ, VOCAB)


@functools.partial(jax.jit, static_argnames="n_blocks")
def _resid_only(model, tokens, n_blocks):
    return _residual(model, tokens, n_blocks).unwrap(BATCH, SEQ, EMBEDDING)


@functools.partial(jax.jit, static_argnames="n_blocks")
def _resid_and_logits_jit(model, tokens, n_blocks):
    resid, logits = _residual_and_logits(model, tokens, n_blocks)
    return resid.unwrap(BATCH, SEQ, EMBEDDING), logits.unwrap(BATCH, SEQ, VOCAB)


def _residual_and_logits(model, tokens, n_blocks):
    resid = _residual(model, tokens, n_blocks)
    return resid, _logits_from(model, resid, n_blocks)


def logits(model, tokens: np.ndarray, *, max_context: int) -> jax.Array:
    """Logits [batch, seq, vocabulary] of a full forward (jit-compiled, params frozen)."""
    tokens = np.asarray(tokens)
    check_tokens(tokens, max_context)
    return _logits(pz.freeze_params(model), tokens)


def residual(model, tokens: np.ndarray, *, layer: int, where: Where = "pre", max_context: int) -> jax.Array:
    """Residual stream [batch, seq, embedding] at `layer`; the forward stops there."""
    tokens = np.asarray(tokens)
    check_tokens(tokens, max_context)
    return _resid_only(pz.freeze_params(model), tokens, check_layer(model, layer, where))


def residual_and_logits(
    model, tokens: np.ndarray, *, layer: int, where: Where = "pre", max_context: int
) -> tuple[jax.Array, jax.Array]:
    """(residual [batch, seq, embedding] at `layer`, logits [batch, seq, vocabulary]) in one forward."""
    tokens = np.asarray(tokens)
    check_tokens(tokens, max_context)
    return _resid_and_logits_jit(pz.freeze_params(model), tokens, check_layer(model, layer, where))


@functools.partial(jax.jit, static_argnames="start_block")
def _logits_from_jit(model, resid, start_block):
    return _logits_from(model, pz.nx.wrap(resid).tag(BATCH, SEQ, EMBEDDING), start_block).unwrap(BATCH, SEQ, VOCAB)


def logits_from_residual(model, resid, *, layer: int, where: Where = "pre") -> jax.Array:
    """Logits [batch, seq, vocabulary] continuing the forward from a residual at `layer`.

    Splicing a modified residual (an SAE reconstruction, an ablation) back into the model.
    """
    return _logits_from_jit(pz.freeze_params(model), jnp.asarray(resid), check_layer(model, layer, where))
