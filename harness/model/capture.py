"""Run a built model on token ids: full logits, the residual stream at one layer, or both.

The residual stream "pre" block L is the input of block L (the output of blocks 0..L-1; for L = 0
the scaled embeddings), "post" block L is its output — Hugging Face's hidden_states[L] and
hidden_states[L + 1]; "attn_out" / "mlp_out" block L are what its attention / MLP sub-block adds to the residual
(TransformerLens' hook_attn_out / hook_mlp_out). A forward that only needs the residual stops at that layer.
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
from harness.model.blocks import SEGMENT_ENDS, SEGMENTS
from harness.model.forms import LAYER_AXIS, ScanLayerStack
from harness.model.parallel import mesh_of, shard_batch

Where = Literal["pre", "post", "attn_out", "mlp_out"]
WHERES: tuple[str, ...] = ("pre", "post", "attn_out", "mlp_out")
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
    if isinstance(blocks[0], ScanLayerStack):  # indexes its whole stack: nothing sliced, nothing copied
        return [blocks[0].blocks(start, stop)]
    stack = blocks[0]
    sliced = (
        pz.select(stack.stacked_sublayers)
        .at_instances_of(pz.nx.NamedArrayBase)
        .where(lambda x: LAYER_AXIS in x.named_shape)
        .apply(lambda x: x[{LAYER_AXIS: slice(start, stop)}])
    )
    return [type(stack)(sliced, stack.stack_axis, stop - start)]


def check_layer(model, layer: int, where: Where) -> int:
    """Number of whole blocks to run before the point `where` of block `layer`; InputError if out of range.

    "attn_out" / "mlp_out" are what block `layer`'s attention / MLP sub-block adds to the residual (after any post-norm,
    as TransformerLens' hook_attn_out / hook_mlp_out); they need a block of two residual sub-blocks, so a parallel
    block (GPT-NeoX: x + attn(x) + mlp(x)) is refused.
    """
    total = n_layers(model)
    if where not in WHERES:
        raise InputError(f"where={where!r}: expected one of {list(WHERES)}")
    if not 0 <= layer < total:
        raise InputError(f"layer {layer} out of range: the model has blocks 0..{total - 1}")
    if where in ("attn_out", "mlp_out") and len(_block(model, layer).sublayers) != 2:
        raise InputError(f"hook {where}: this model adds attention and MLP to the residual in one parallel step, so "
                         "their outputs cannot be told apart at the residual; read resid_pre or resid_post")
    return layer + 1 if where == "post" else layer


def _block(model, layer: int) -> model_parts.TransformerBlock:
    """Block `layer` on its own (a stack's sublayers indexed at `layer`)."""
    _, blocks, _ = _parts(model)
    if not isinstance(blocks[0], pz.nn.LayerStack):
        return blocks[layer]
    return (pz.select(blocks[0].stacked_sublayers).at_instances_of(pz.nx.NamedArrayBase)
            .where(lambda x: LAYER_AXIS in x.named_shape).apply(lambda x: x[{LAYER_AXIS: layer}]))


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


def _side_inputs(tokens, packing) -> dict:
    """penzai side inputs: positions 0.. for a plain batch; a packed batch's (positions, segments, segment ends)."""
    if packing is None:
        return {"token_positions": pz.nx.arange(SEQ, tokens.shape[1])}
    return {name: pz.nx.wrap(jnp.asarray(a, jnp.int32)).tag(BATCH, SEQ)
            for name, a in zip(("token_positions", SEGMENTS, SEGMENT_ENDS), packing)}


def _reading(model, tokens, layer: int, where: Where, side: dict):
    """(the activation at `where` of block `layer`, the residual to continue from, the block it continues at)."""
    prefix, blocks, _ = _parts(model)
    x = _named_tokens(tokens)
    n_blocks = layer + 1 if where == "post" else layer
    for step in [*prefix, *_block_range(blocks, 0, n_blocks)]:
        x = step(x, **side)
    if where in ("pre", "post"):
        return x, x, n_blocks
    attention, mlp = _block(model, layer).sublayers
    mid = attention(x, **side)
    post = mlp(mid, **side)
    return (mid - x if where == "attn_out" else post - mid), post, layer + 1


def _logits_from(model, resid, start_block: int, side: dict, at=None):
    """Run the remaining blocks, then the final norm and unembedding — at positions `at` [batch, k] only if given."""
    _, blocks, suffix = _parts(model)
    x = resid
    for layer in _block_range(blocks, start_block, n_layers(model)):
        x = layer(x, **side)
    if at is not None:
        x = pz.nx.nmap(jnp.take)(x.untag(SEQ), at.untag(SEQ)).tag(SEQ)
    for layer in suffix:
        x = layer(x, **side)
    return x


def _prepared(model, tokens, packing):
    return model, _side_inputs(tokens, packing)  # blocks.CausalMask reads a packed batch's segments itself


# XLA:CPU converts bf16 stacked weights to float32 around the scan's per-layer slice and then hoists that convert out of
# the loop: a float32 copy of every stacked weight for the whole forward (2.9 GB of temporaries for a 6-layer
# Phi-3-wide model in bf16, 0.22 GB without the hoisting; float32 forwards are unchanged, measured). So the forwards
# compile without that one pass.
JIT_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


@functools.partial(jax.jit, compiler_options=JIT_OPTIONS)
def _logits(model, tokens, packing=None):
    return _residual_and_logits(model, tokens, 0, "pre", packing)[1].unwrap(BATCH, SEQ, VOCAB)


@functools.partial(jax.jit, static_argnames=("layer", "where"), compiler_options=JIT_OPTIONS)
def _resid_only(model, tokens, layer, where, packing=None):
    model, side = _prepared(model, tokens, packing)
    return _reading(model, tokens, layer, where, side)[0].unwrap(BATCH, SEQ, EMBEDDING)


@functools.partial(jax.jit, static_argnames=("layer", "where"), compiler_options=JIT_OPTIONS)
def _resid_and_logits_jit(model, tokens, layer, where, packing=None, at=None):
    resid, logits = _residual_and_logits(model, tokens, layer, where, packing, at)
    return resid.unwrap(BATCH, SEQ, EMBEDDING), logits.unwrap(BATCH, SEQ, VOCAB)


def _residual_and_logits(model, tokens, layer, where, packing, at=None):
    model, side = _prepared(model, tokens, packing)
    reading, resid, start = _reading(model, tokens, layer, where, side)
    if at is not None:
        at = pz.nx.wrap(jnp.asarray(at, jnp.int32)).tag(BATCH, SEQ)
    return reading, _logits_from(model, resid, start, side, at)


def check_positions(positions, shape: tuple[int, ...], what: str) -> np.ndarray:
    """`positions` as a [batch, k] int array of row indices into a [batch, seq] batch of `shape`, else InputError."""
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[0] != shape[0]:
        raise InputError(f"{what}: expected [batch={shape[0]}, k] indices, got {positions.shape}")
    if positions.size and not 0 <= positions.min() <= positions.max() < shape[1]:
        raise InputError(f"{what}: indices must lie in 0..{shape[1] - 1}")
    return positions


def _packing(tokens, packing):
    """A packed batch's (positions, segments, segment ends) as [batch, seq] int arrays shaped like the tokens, or None."""
    if packing is None:
        return None
    arrays = tuple(np.asarray(a) for a in packing)
    if len(arrays) != 3:
        raise InputError("packing: expected (positions, segments, segment_ends), e.g. runs.packing.stack_rows's output")
    for name, arr in zip(("positions", "segments", "segment_ends"), arrays):
        if arr.shape != tokens.shape:
            raise InputError(f"packing {name}: expected shape {tokens.shape} like the tokens, got {arr.shape}")
    return arrays


def _shard(model, tokens, packing, *more):
    """shard_batch over the tokens, the packing arrays (if any) and `more` on the (frozen) model's mesh, if any,
    keeping the packing a tuple."""
    n = 0 if packing is None else len(packing)
    out = shard_batch(tokens, *(packing or ()), *more, mesh=mesh_of(model))
    return (out[0], tuple(out[1 : 1 + n]) if n else None, *out[1 + n :])


def logits(model, tokens: np.ndarray, *, max_context: int, packing=None) -> jax.Array:
    """Logits [batch, seq, vocabulary] of a full forward (jit-compiled, params frozen).

    `packing` = (positions, segments, segment_ends), [batch, seq] ints each, runs a packed batch (blocks.CausalMask).
    """
    tokens = np.asarray(tokens)
    check_tokens(tokens, max_context)
    model = pz.freeze_params(model)
    tokens, packing = _shard(model, tokens, _packing(tokens, packing))
    return _logits(model, tokens, packing)


def residual(
    model, tokens: np.ndarray, *, layer: int, where: Where = "pre", max_context: int, packing=None
) -> jax.Array:
    """Residual stream [batch, seq, embedding] at `layer`; the forward stops there."""
    tokens = np.asarray(tokens)
    check_tokens(tokens, max_context)
    packing = _packing(tokens, packing)
    check_layer(model, layer, where)
    model = pz.freeze_params(model)
    tokens, packing = _shard(model, tokens, packing)
    return _resid_only(model, tokens, layer, where, packing)


def residual_and_logits(
    model,
    tokens: np.ndarray,
    *,
    layer: int,
    where: Where = "pre",
    max_context: int,
    packing=None,
    logit_positions=None,
) -> tuple[jax.Array, jax.Array]:
    """(residual [batch, seq, embedding] at `layer`, logits [batch, seq, vocabulary]) in one forward.

    With `logit_positions` ([batch, k] row indices) the unembedding runs at those positions only and
    the logits are [batch, k, vocabulary] — the vocabulary projection is a fifth of SmolLM2's FLOPs.
    """
    tokens = np.asarray(tokens)
    check_tokens(tokens, max_context)
    packing = _packing(tokens, packing)
    if logit_positions is not None:
        logit_positions = check_positions(logit_positions, tokens.shape, "logit_positions")
    check_layer(model, layer, where)
    model = pz.freeze_params(model)
    tokens, packing, logit_positions = _shard(model, tokens, packing, logit_positions)
    return _resid_and_logits_jit(model, tokens, layer, where, packing, logit_positions)


@functools.partial(jax.jit, static_argnames="start_block", compiler_options=JIT_OPTIONS)
def _logits_from_jit(model, resid, start_block):
    side = _side_inputs(resid, None)
    return _logits_from(model, pz.nx.wrap(resid).tag(BATCH, SEQ, EMBEDDING), start_block, side).unwrap(BATCH, SEQ, VOCAB)


def logits_from_residual(model, resid, *, layer: int, where: Where = "pre") -> jax.Array:
    """Logits [batch, seq, vocabulary] continuing the forward from a residual at `layer`.

    Splicing a modified residual (an SAE reconstruction, an ablation) back into the model; at "pre" or "post" only
    (a sub-block's output is not a residual the forward can continue from).
    """
    if where not in ("pre", "post"):
        raise InputError(f"where={where!r}: a residual is spliced back at 'pre' or 'post' only")
    start = check_layer(model, layer, where)
    model = pz.freeze_params(model)
    mesh = mesh_of(model)
    if mesh is not None and not isinstance(resid, jax.Array):  # a host residual follows the model's mesh
        (resid,) = shard_batch(np.asarray(resid), mesh=mesh)
    return _logits_from_jit(model, jnp.asarray(resid), start)
