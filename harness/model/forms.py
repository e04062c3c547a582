"""Build the penzai decoder (harness.model.blocks) from canonical weights, in three execution forms.

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

from harness.errors import InputError
from harness.model import blocks, rewrites
from harness.model.blocks import head_axes
from harness.model.config import DTYPES, Checkpoint, ModelConfig, Weights

# The named axis that stacks the decoder blocks (penzai's own name for it).
LAYER_AXIS = "blocks"


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


def block_param_table(c: ModelConfig) -> dict[str, tuple[str, dict[str, int]]]:
    """penzai label suffix of each per-block parameter -> (the canonical weight it is read from, its named axes in the
    canonical [out, in] data order, so no transpose is ever needed). Exactly the canonical names the config expects."""
    d, p, f = {"embedding": c.d_model}, {"projection": c.head_dim}, {"neurons": c.d_ffn}
    q, kv = {**head_axes(c, "q"), **p}, {**head_axes(c, "k"), **p}
    norms = {"pre_attention_norm": "input_layernorm", "pre_ffw_norm": "post_attention_layernorm"}
    if c.post_norms:
        norms |= {"post_attention_norm": "attn_out_norm", "post_ffw_norm": "mlp_out_norm"}
    table = {}
    for label, name in norms.items():
        table[f"{label}/scale.weights"] = (f"{name}.weight", d)
        if c.norm == "layer":
            table[f"{label}/shift.bias"] = (f"{name}.bias", d)
    linears = {
        "attention/query": ("self_attn.q_proj", q, d, c.attention_bias),
        "attention/key": ("self_attn.k_proj", kv, d, c.attention_bias),
        "attention/value": ("self_attn.v_proj", kv, d, c.attention_bias),
        "attention/output": ("self_attn.o_proj", d, q, c.output_bias),
        "mlp/value_linear": ("mlp.up_proj", f, d, c.mlp_bias),
        "mlp/out_linear": ("mlp.down_proj", d, f, c.mlp_bias),
    }
    if c.gated_mlp:
        linears["mlp/gating_linear"] = ("mlp.gate_proj", f, d, c.mlp_bias)
    for label, (name, out, inp, bias) in linears.items():
        table[f"{label}.weights"] = (f"{name}.weight", {**out, **inp})
        if bias:
            table[f"{label}.bias"] = (f"{name}.bias", out)
    if c.qk_norm:
        table |= {"attention/query_norm/scale.weights": ("self_attn.q_norm.weight", p),
                  "attention/key_norm/scale.weights": ("self_attn.k_norm.weight", p)}
    return table


def global_param_axes(c: ModelConfig) -> dict[str, dict[str, int]]:
    """penzai label of each global parameter -> its named axes (as `_global_params` reads them)."""
    d, vocab = {"embedding": c.d_model}, {"vocabulary": c.vocab_size}
    axes = {"embedder.embeddings": {**vocab, **d}, "final_norm/scale.weights": d, "lm_head.weights": {**vocab, **d}}
    if c.norm == "layer":
        axes["final_norm/shift.bias"] = d
    if c.positions == "learned":
        axes["embed_positions.table"] = {"positions": c.max_context, **d}
    return axes


def _offset(config: ModelConfig, label: str, array: np.ndarray) -> np.ndarray:
    """A Gemma RMSNorm scale (offset + weight, computed in float32 as transformers does); other weights as stored."""
    if config.norm_offset and label.endswith("norm/scale.weights"):
        return np.asarray(array, np.float32) + np.float32(config.norm_offset)
    return array


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
    for label, (suffix, axes) in block_param_table(config).items():
        stacked = jnp.zeros((config.n_layers, *axes.values()), dtype)
        for i in range(config.n_layers):
            layer = _offset(config, label, weights.stored(f"model.layers.{i}.{suffix}")).reshape(tuple(axes.values()))
            stacked = _put_layer(stacked, layer, np.int32(i)).block_until_ready()  # else queued layers pile up on the host
        out[label] = pz.nx.wrap(stacked).tag(LAYER_AXIS, *axes)
    return out


def _global_params(config: ModelConfig, weights: Weights, dtype) -> dict[str, pz.nx.NamedArray]:
    """Embedding, final norm and unembedding in `dtype`; a tied unembedding is the embedding's own array (held once)."""
    def read(name, *axes, label=""):
        return pz.nx.wrap(jnp.asarray(_offset(config, label, weights.stored(name))).astype(dtype)).tag(*axes)

    embed = read("model.embed_tokens.weight", "vocabulary", "embedding")
    out = {
        "embedder.embeddings": embed,
        "final_norm/scale.weights": read("model.norm.weight", "embedding", label="final_norm/scale.weights"),
        "lm_head.weights": embed if config.tie_embeddings else read("lm_head.weight", "vocabulary", "embedding"),
    }
    if config.norm == "layer":
        out["final_norm/shift.bias"] = read("model.norm.bias", "embedding")
    if config.positions == "learned":
        out["embed_positions.table"] = read("model.embed_positions.weight", "positions", "embedding")
    return out


def is_constant(label: str) -> bool:
    """Whether a parameter label is a per-layer constant (RoPE frequencies, window): computed from the config, not read."""
    return label.endswith((blocks.ROPE_LABEL, blocks.WINDOW_LABEL))


def assemble(
    config: ModelConfig,
    global_params: dict[str, pz.nx.NamedArray],
    block_params: dict[str, pz.nx.NamedArray],
    form: Form,
) -> model_parts.TransformerLM:
    """Bind global and stacked block params (and the config's per-layer constants) into the skeleton of `form`,
    contracting in the params' dtype."""
    form = Form(form)
    dtype = block_params["mlp/out_linear.weights"].dtype
    skeleton = blocks.build_skeleton(config, stacked=form is not Form.UNROLLED, dtype=dtype)
    constants = {label: pz.nx.wrap(jnp.asarray(value)).tag(LAYER_AXIS, *blocks.constant_axes(label))
                 for label, value in blocks.block_constants(config).items()}
    params = dict(global_params)
    for label, stacked in (block_params | constants).items():
        if form is Form.UNROLLED:
            params |= {f"block_{i}/{label}": stacked[{LAYER_AXIS: i}] for i in range(config.n_layers)}
        else:
            params[f"blocks/{label}"] = stacked
    model = pz.bind_variables(
        skeleton, [pz.Parameter(value=v, label=f"{blocks.PREFIX}/{k}") for k, v in params.items()]
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
    """(global params, block params stacked along LAYER_AXIS) of a model in any form; per-layer constants left out."""
    _, params = pz.unbind_params(model, freeze=True)
    global_params, stacked, per_block = {}, {}, {}
    for p in params:
        label = p.label.removeprefix(f"{blocks.PREFIX}/")
        head, _, rest = label.partition("/")
        if is_constant(label):
            continue  # recomputed from the config by assemble
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
    global_params, block_params = split_params(model)
    return assemble(config, global_params, block_params, Form(form))
