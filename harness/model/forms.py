"""Build penzai's llamalike transformer from canonical weights, in three execution forms.

The same weights run as (a) an unrolled `Sequential` of blocks, (b) penzai's `pz.nn.LayerStack`
(which, in penzai 0.2.5, scans with ``unroll=True`` and so lowers to straight-line code), or
(c) a true scan: one ``jax.lax.scan`` with ``unroll=1`` over the same stacked params, which lowers
to exactly one while loop. Forms convert into each other through the stacked block params.
"""

from __future__ import annotations

import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts
from penzai.models.transformer.variants import llamalike_common as llamalike

from harness.model.config import Checkpoint, ModelConfig

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

    Supports parameters only (no mutable state variables), which is all an inference model holds.
    """

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

        def body(carry, layer_slices):
            out = stacked.set_sequence(layer_slices)(carry, **side_inputs)
            return pz.nx.order_like(out, carry), None

        out, _ = jax.lax.scan(body, argument, slices, length=self.stack_axis_size, unroll=1)
        return out


def penzai_config(
    config: ModelConfig, *, form: Form, param_dtype=jnp.float32, activation_dtype=jnp.float32
) -> llamalike.LlamalikeTransformerConfig:
    """Our config in penzai's terms; embeddings are never tied here (penzai's tie also rescales)."""
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
        activation_dtype=activation_dtype,
        use_layer_stack=form is not Form.UNROLLED,
    )


def _tag_qkvo(which: str, w: np.ndarray, c: ModelConfig) -> pz.nx.NamedArray:
    """Reshape a canonical [out, in] projection into penzai's named head axes."""
    g, m, p, d = c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim, c.d_model
    if m == 1:
        heads, q_heads, kv_heads = {"heads": g}, {"heads": g}, {"heads": g}
    elif g == 1:
        heads, q_heads, kv_heads = {"query_heads": m}, {"query_heads": m}, {}
    else:
        heads = {"head_groups": g, "query_heads": m}
        q_heads, kv_heads = heads, {"head_groups": g}
    axes = {"q": q_heads, "k": kv_heads, "v": kv_heads, "o": heads}[which]
    if which == "o":
        return pz.nx.wrap(w.reshape(d, *axes.values(), p)).tag("embedding", *axes, "projection")
    return pz.nx.wrap(w.reshape(*axes.values(), p, d)).tag(*axes, "projection", "embedding")


def stacked_block_params(config: ModelConfig, weights: dict[str, np.ndarray], dtype) -> dict[str, pz.nx.NamedArray]:
    """Per-block parameters keyed by penzai's label suffix, stacked along LAYER_AXIS."""
    per_layer = {
        "pre_attention_norm/scale.weights": ("input_layernorm.weight", ("embedding",)),
        "pre_ffw_norm/scale.weights": ("post_attention_layernorm.weight", ("embedding",)),
        "mlp/gating_linear.weights": ("mlp.gate_proj.weight", ("neurons", "embedding")),
        "mlp/value_linear.weights": ("mlp.up_proj.weight", ("neurons", "embedding")),
        "mlp/out_linear.weights": ("mlp.down_proj.weight", ("embedding", "neurons")),
    }
    out = {}
    for label, (name, axes) in per_layer.items():
        arr = np.stack([weights[f"model.layers.{i}.{name}"] for i in range(config.n_layers)])
        out[label] = pz.nx.wrap(jnp.asarray(arr, dtype)).tag(LAYER_AXIS, *axes)
    for which, name in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
        per_block = [
            _tag_qkvo(which, np.asarray(weights[f"model.layers.{i}.self_attn.{name}.weight"]), config)
            for i in range(config.n_layers)
        ]
        out[f"attention/{ {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'output'}[which] }.weights"] = (
            pz.nx.stack(per_block, LAYER_AXIS).astype(dtype)
        )
    return out


def _global_params(config: ModelConfig, weights: dict[str, np.ndarray], dtype) -> dict[str, pz.nx.NamedArray]:
    embed = jnp.asarray(weights["model.embed_tokens.weight"], dtype)
    head = embed if config.tie_embeddings else jnp.asarray(weights["lm_head.weight"], jnp.float32)
    return {
        "embedder.embeddings": pz.nx.wrap(embed).tag("vocabulary", "embedding"),
        "final_norm/scale.weights": pz.nx.wrap(jnp.asarray(weights["model.norm.weight"], dtype)).tag("embedding"),
        "lm_head.weights": pz.nx.wrap(head.astype(jnp.float32)).tag("vocabulary", "embedding"),
    }


def assemble(
    config: ModelConfig,
    global_params: dict[str, pz.nx.NamedArray],
    blocks: dict[str, pz.nx.NamedArray],
    form: Form,
    *,
    param_dtype=jnp.float32,
) -> model_parts.TransformerLM:
    """Bind global and stacked block params into the penzai skeleton of `form`."""
    form = Form(form)
    skeleton = llamalike.build_llamalike_transformer(
        penzai_config(config, form=form, param_dtype=param_dtype), init_base_rng=None, name=_PREFIX
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
    if form is Form.SCAN:
        model = (
            pz.select(model)
            .at_instances_of(pz.nn.LayerStack)
            .apply(lambda s: ScanLayerStack(s.stacked_sublayers, s.stack_axis, s.stack_axis_size))
        )
    return model


def build_model(checkpoint: Checkpoint, *, form: Form | str = Form.SCAN, param_dtype=jnp.float32):
    """A penzai TransformerLM for `checkpoint` in the given execution form."""
    c, w = checkpoint.config, checkpoint.weights
    return assemble(
        c, _global_params(c, w, param_dtype), stacked_block_params(c, w, param_dtype), Form(form),
        param_dtype=param_dtype,
    )


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
        stacked[label] = pz.nx.stack([by_index[i] for i in range(len(by_index))], LAYER_AXIS)
    return global_params, stacked


def convert(model: model_parts.TransformerLM, config: ModelConfig, form: Form | str):
    """The same weights in another execution form."""
    global_params, blocks = split_params(model)
    dtype = next(iter(blocks.values())).dtype
    return assemble(config, global_params, blocks, Form(form), param_dtype=dtype)
