"""Build penzai's llamalike transformer from canonical weights, in three execution forms.

The same weights run as (a) an unrolled `Sequential` of blocks, (b) penzai's `pz.nn.LayerStack`
(which, in penzai 0.2.5, scans with ``unroll=True`` and so lowers to straight-line code), or
(c) a true scan: one ``jax.lax.scan`` with ``unroll=1`` over the same stacked params, which lowers
to exactly one while loop. Forms convert into each other through the stacked block params.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts
from penzai.models.transformer.variants import llamalike_common as llamalike

from harness.errors import InputError
from harness.model import rewrites
from harness.model.config import DTYPES, Checkpoint, ModelConfig, Weights

# The named axis that stacks the decoder blocks (penzai's own name for it).
LAYER_AXIS = "blocks"
_PREFIX = "transformer"


class Form(str, enum.Enum):
    """How the decoder blocks are executed; the weights are the same in every form."""

    UNROLLED = "unrolled"
    LAYERSTACK = "layerstack"
    SCAN = "scan"


@pz.pytree_dataclass(has_implicitly_inherited_fields=True)  # same fields as LayerStack
class ScanLayerStack(pz.nn.LayerStack):
    """`pz.nn.LayerStack` run as a true ``jax.lax.scan`` (``unroll=1``): one compiled block body.

    Runs blocks [start, stop) of the stack (default: all) by indexing the whole stacked params inside the loop, so a
    forward that stops at a layer or starts from one copies no parameter. Parameters only (no mutable state variables),
    which is all an inference model holds.
    """

    start: int = dataclasses.field(default=0, metadata={"pytree_node": False})
    stop: int | None = dataclasses.field(default=None, metadata={"pytree_node": False})

    def blocks(self, start: int, stop: int) -> "ScanLayerStack":
        """The same stack running blocks [start, stop) only."""
        return dataclasses.replace(self, start=start, stop=stop)

    def __call__(self, argument, /, **side_inputs) -> Any:
        sublayer = pz.freeze_params(self.stacked_sublayers)
        _, state_vars = pz.unbind_state_vars(sublayer)
        if state_vars:
            raise ValueError("ScanLayerStack holds parameters only, found state variables")
        stacked = (
            pz.select(sublayer)
            .at_instances_of(pz.nx.NamedArrayBase)
            .where(lambda x: self.stack_axis in x.named_shape)
        )
        slices = [a.untag_prefix(self.stack_axis).with_positional_prefix() for a in stacked.get_sequence()]

        def body(carry, index):
            layer = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, index, 0, keepdims=False), slices)
            out = stacked.set_sequence(layer)(carry, **side_inputs)
            return pz.nx.order_like(out, carry), None

        stop = self.stack_axis_size if self.stop is None else self.stop
        out, _ = jax.lax.scan(body, argument, jnp.arange(self.start, stop), unroll=1)
        return out


def param_dtype_of(dtype) -> jnp.dtype:
    """`dtype` (a name in DTYPES or the dtype itself) as a jnp dtype; anything else is a one-line InputError."""
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in DTYPES:
        raise InputError(f"dtype {name!r}: expected one of {list(DTYPES)}")
    return jnp.dtype(name)


def penzai_config(config: ModelConfig, *, form: Form, param_dtype=jnp.float32) -> llamalike.LlamalikeTransformerConfig:
    """Our config in penzai's terms; embeddings are never tied here (penzai's tie also rescales).

    Activations (the residual stream, norms, softmax) are float32 whatever the parameters' dtype; contractions run in
    the parameters' dtype with float32 accumulation (harness.model.rewrites).
    """
    if config.sliding_window is not None and config.sliding_window < config.max_context:
        attention_type = llamalike.AttentionTypeSlidingWindowCausal(config.sliding_window)
    else:
        attention_type = llamalike.AttentionTypeGlobalCausal()
    return llamalike.LlamalikeTransformerConfig(
        num_kv_heads=config.n_kv_heads,
        query_head_multiplier=config.n_heads // config.n_kv_heads,
        embedding_dim=config.d_model,
        projection_dim=config.head_dim,
        mlp_hidden_dim=config.d_ffn,
        num_decoder_blocks=config.n_layers,
        vocab_size=config.vocab_size,
        mlp_variant="swiglu",
        tie_embedder_and_logits=False,
        rope_wavelength=config.rope_base,
        rms_norm_eps=config.rms_norm_eps,
        attention_type=attention_type,
        parameter_dtype=param_dtype,
        activation_dtype=jnp.float32,
        use_layer_stack=form is not Form.UNROLLED,
    )


def _head_axes(which: str, c: ModelConfig) -> dict[str, int]:
    """penzai's named head axes of the q/k/v/o projection (llamalike: heads, query_heads or head_groups x query_heads)."""
    g, m = c.n_kv_heads, c.n_heads // c.n_kv_heads
    if m == 1:
        heads, kv_heads = {"heads": g}, {"heads": g}
    elif g == 1:
        heads, kv_heads = {"query_heads": m}, {}
    else:
        heads, kv_heads = {"head_groups": g, "query_heads": m}, {"head_groups": g}
    return kv_heads if which in ("k", "v") else heads


# penzai label suffix of each per-block parameter -> the canonical weight it is read from (shaped by _block_axes).
_BLOCK_PARAMS = {
    "pre_attention_norm/scale.weights": "input_layernorm.weight",
    "pre_ffw_norm/scale.weights": "post_attention_layernorm.weight",
    "mlp/gating_linear.weights": "mlp.gate_proj.weight",
    "mlp/value_linear.weights": "mlp.up_proj.weight",
    "mlp/out_linear.weights": "mlp.down_proj.weight",
    "attention/query.weights": "self_attn.q_proj.weight",
    "attention/key.weights": "self_attn.k_proj.weight",
    "attention/value.weights": "self_attn.v_proj.weight",
    "attention/output.weights": "self_attn.o_proj.weight",
}


def _block_axes(label: str, c: ModelConfig) -> dict[str, int]:
    """Named axes of one block's parameter, in the canonical [out, in] data order (so no transpose is ever needed)."""
    d, p = c.d_model, c.head_dim
    if label.endswith("norm/scale.weights"):
        return {"embedding": d}
    if label.startswith("mlp/"):
        return {"embedding": d, "neurons": c.d_ffn} if label.startswith("mlp/out") else {"neurons": c.d_ffn, "embedding": d}
    which = label.removeprefix("attention/")[0]  # q, k, v, o
    heads = _head_axes(which, c)
    if which == "o":
        return {"embedding": d, **heads, "projection": p}
    return {**heads, "projection": p, "embedding": d}


@functools.partial(jax.jit, donate_argnums=0)
def _put_layer(stacked: jax.Array, layer: jax.Array, index: jax.Array) -> jax.Array:
    """`stacked` with row `index` of its leading axis set to `layer`, in place (the buffer is donated)."""
    return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), index, 0)


def stacked_block_params(config: ModelConfig, weights: Weights, dtype) -> dict[str, pz.nx.NamedArray]:
    """Per-block parameters keyed by penzai's label suffix, stacked along LAYER_AXIS (the leading data axis).

    Each stack is allocated once in `dtype` and filled layer by layer from the memory-mapped files (read as stored, cast
    on the device), so the host holds one layer at a time and the stacks are the only full copy.
    """
    out = {}
    for label, suffix in _BLOCK_PARAMS.items():
        axes = _block_axes(label, config)
        stacked = jnp.zeros((config.n_layers, *axes.values()), dtype)
        for i in range(config.n_layers):
            layer = weights.stored(f"model.layers.{i}.{suffix}").reshape(tuple(axes.values()))
            stacked = _put_layer(stacked, layer, np.int32(i)).block_until_ready()  # else queued layers pile up on the host
        out[label] = pz.nx.wrap(stacked).tag(LAYER_AXIS, *axes)
    return out


def _global_params(config: ModelConfig, weights: Weights, dtype) -> dict[str, pz.nx.NamedArray]:
    """Embedding, final norm and unembedding in `dtype`; a tied unembedding is the embedding's own array (held once)."""
    embed = jnp.asarray(weights.stored("model.embed_tokens.weight")).astype(dtype)
    head = embed if config.tie_embeddings else jnp.asarray(weights.stored("lm_head.weight")).astype(dtype)
    return {
        "embedder.embeddings": pz.nx.wrap(embed).tag("vocabulary", "embedding"),
        "final_norm/scale.weights": pz.nx.wrap(jnp.asarray(weights.stored("model.norm.weight")).astype(dtype)).tag("embedding"),
        "lm_head.weights": pz.nx.wrap(head).tag("vocabulary", "embedding"),
    }


def assemble(
    config: ModelConfig,
    global_params: dict[str, pz.nx.NamedArray],
    blocks: dict[str, pz.nx.NamedArray],
    form: Form,
) -> model_parts.TransformerLM:
    """Bind global and stacked block params into the penzai skeleton of `form`, contracting in the params' dtype."""
    form = Form(form)
    dtype = blocks["mlp/out_linear.weights"].dtype
    skeleton = llamalike.build_llamalike_transformer(
        penzai_config(config, form=form, param_dtype=dtype), init_base_rng=None, name=_PREFIX
    )
    params = dict(global_params)
    if form is Form.UNROLLED:
        for label, stacked in blocks.items():
            for i in range(config.n_layers):
                params[f"block_{i}/{label}"] = stacked[{LAYER_AXIS: i}]
    else:
        params |= {f"blocks/{label}": v for label, v in blocks.items()}
    model = pz.bind_variables(
        skeleton, [pz.Parameter(value=v, label=f"{_PREFIX}/{k}") for k, v in params.items()]
    )
    pz.nn.assert_no_parameter_slots(model)
    model = rewrites.rewrite_layers(model, dtype)
    if form is Form.SCAN:
        model = (
            pz.select(model)
            .at_instances_of(pz.nn.LayerStack)
            .apply(lambda s: ScanLayerStack(s.stacked_sublayers, s.stack_axis, s.stack_axis_size))
        )
    return model


def build_model(checkpoint: Checkpoint, *, form: Form | str = Form.SCAN, dtype="float32"):
    """A penzai TransformerLM for `checkpoint` in the given execution form, its parameters in `dtype`.

    "bfloat16" halves the parameters' memory and runs every contraction bf16 x bf16 -> float32 (the CPU's bf16 matrix
    units); the residual stream, norms and softmax stay float32.
    """
    c, w, dtype = checkpoint.config, checkpoint.weights, param_dtype_of(dtype)
    return assemble(c, _global_params(c, w, dtype), stacked_block_params(c, w, dtype), Form(form))


def form_of(model: model_parts.TransformerLM) -> Form:
    """Which execution form a model built here is in."""
    layers = model.body.sublayers
    if any(isinstance(layer, ScanLayerStack) for layer in layers):
        return Form.SCAN
    if any(isinstance(layer, pz.nn.LayerStack) for layer in layers):
        return Form.LAYERSTACK
    return Form.UNROLLED


def split_params(model: model_parts.TransformerLM) -> tuple[dict, dict]:
    """(global params, block params stacked along LAYER_AXIS) of a model in any form."""
    _, params = pz.unbind_params(model, freeze=True)
    global_params, stacked, per_block = {}, {}, {}
    for p in params:
        label = p.label.removeprefix(f"{_PREFIX}/")
        head, _, rest = label.partition("/")
        if head == "blocks":
            stacked[rest] = p.value
        elif head.startswith("block_"):
            per_block.setdefault(rest, {})[int(head.removeprefix("block_"))] = p.value
        else:
            global_params[label] = p.value
    for label, by_index in per_block.items():
        names = tuple(by_index[0].named_shape)
        layers = [by_index[i].unwrap(*names) for i in range(len(by_index))]
        stacked[label] = pz.nx.wrap(jnp.stack(layers)).tag(LAYER_AXIS, *names)  # layer axis leading, as built
    return global_params, stacked


def convert(model: model_parts.TransformerLM, config: ModelConfig, form: Form | str):
    """The same weights in another execution form."""
    global_params, blocks = split_params(model)
    return assemble(config, global_params, blocks, Form(form))
