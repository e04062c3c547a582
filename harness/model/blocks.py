"""The decoder as penzai layers: one builder for every family, ModelConfig's switches choosing the parts.

Built from penzai's own parts (Linear, AddBias, RMSLayerNorm/LayerNorm, NamedEinsum, Softmax, TanhSoftCap, Residual)
plus three layers penzai lacks: RoPE with per-layer, scaled frequencies on part of a head (`Rotary`), a causal mask
with a per-layer window that also reads packed batches (`CausalMask`), and learned positions (`LearnedPositions`).
Per-layer constants (RoPE frequencies, windows) are parameters stacked along the layer axis like the weights, so one
block body serves layers that differ (Gemma's local and global layers) in every execution form.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz
from penzai.models.transformer import model_parts

from harness.model.config import ModelConfig, RopeScaling

PREFIX = "transformer"
SEQ, KV_SEQ = "seq", "kv_seq"
FREQUENCIES = "rope_frequencies"  # axis of a layer's RoPE inverse frequencies
SEGMENTS = "token_segments"  # side input of a packed batch: the token's trie segment (depth-first order), -1 padding
SEGMENT_ENDS = "token_segment_ends"  # side input: the last segment id in that segment's subtree (its descendants)
NO_WINDOW = np.iinfo(np.int32).max  # the window constant of a full-attention layer
MASKED_OUT = -2.3819763e38  # as penzai's llamalike models (from google-deepmind/gemma)
# Constants of a block (label -> how they are computed); never read from a checkpoint, never cast to bf16.
ROPE_LABEL, WINDOW_LABEL = "attention/rope.inv_freq", "attention/mask.window"
_ACTIVATIONS = {
    "swiglu": jax.nn.silu,
    "geglu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's gelu_new
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # GPT-NeoX's exact erf GELU
}


def rope_inv_freq(base: float, rotary_dim: int, scaling: RopeScaling | None) -> np.ndarray:
    """A layer's RoPE inverse frequencies [rotary_dim / 2] (float32) as transformers' rope init functions compute them.

    llama3 and longrope follow `transformers.modeling_rope_utils`; longrope uses its short factors (contexts up to
    original_max; the readers cap max_context there).
    """
    inv = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim))
    inv = inv.astype(np.float32)
    if scaling is None or scaling.kind == "default":
        return inv
    if scaling.kind == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    if scaling.kind == "longrope":
        ext = np.asarray(scaling.short_factor, np.float32)
        return (1.0 / (ext * (base ** (np.arange(0, rotary_dim, 2).astype(np.float32) / rotary_dim)))).astype(np.float32)
    # llama3: long wavelengths divided by factor, short ones kept, a smooth blend between.
    low_wavelen = scaling.original_max / scaling.low_freq_factor
    high_wavelen = scaling.original_max / scaling.high_freq_factor
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (scaling.original_max / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def block_constants(config: ModelConfig) -> dict[str, np.ndarray]:
    """Per-layer constants, stacked along a leading layer axis: RoPE inverse frequencies and attention windows."""
    out = {WINDOW_LABEL: np.array([config.window(i) or NO_WINDOW for i in range(config.n_layers)], np.int32)}
    if config.positions == "rope":
        rotary = config.rotary_dim or config.head_dim
        out[ROPE_LABEL] = np.stack([rope_inv_freq(base, rotary, scaling)
                                    for base, scaling in map(config.rope, range(config.n_layers))])
    return out


def constant_axes(label: str) -> tuple[str, ...]:
    return (FREQUENCIES,) if label == ROPE_LABEL else ()


@pz.pytree_dataclass
class Rotary(pz.nn.Layer):
    """RoPE in transformers' rotate-half layout with the layer's own inverse frequencies, on the first 2 x len(inv_freq)
    dims of each head (the rest pass through, as GPT-NeoX's partial rotary); cos and sin scaled by `attention_factor`."""

    inv_freq: pz.ParameterValue  # [FREQUENCIES] float32, a per-layer constant
    attention_factor: float = dataclasses.field(default=1.0, metadata={"pytree_node": False})

    def __call__(self, x: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        angles = side_inputs["token_positions"].astype(jnp.float32) * self.inv_freq.value.astype(jnp.float32)
        cos = pz.nx.nmap(jnp.cos)(angles) * self.attention_factor
        sin = pz.nx.nmap(jnp.sin)(angles) * self.attention_factor

        def rotate(v, c, s):
            n = c.shape[0]
            a, b, rest = v[:n], v[n : 2 * n], v[2 * n :]
            return jnp.concatenate([a * c - b * s, b * c + a * s, rest]).astype(v.dtype)

        return pz.nx.nmap(rotate)(x.untag("projection"), cos.untag(FREQUENCIES), sin.untag(FREQUENCIES)).tag("projection")


@pz.pytree_dataclass
class CausalMask(pz.nn.Layer):
    """Causal attention mask with the layer's window (a query sees keys fewer than `window` positions back).

    In a packed batch (side inputs SEGMENTS / SEGMENT_ENDS, laid out by `harness.runs.packing.pack_trie`) a token also
    sees only its own segment and its ancestors': segments are numbered depth-first, so s is an ancestor of q exactly
    when s <= q <= end(s); padding (segment -1) is never seen. Packed tokens of different branches share positions.
    """

    window: pz.ParameterValue  # [] int32, NO_WINDOW for full attention

    def __call__(self, x: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        positions = side_inputs["token_positions"]
        n = x.named_shape[SEQ]
        mask = pz.nx.arange(KV_SEQ, n) <= pz.nx.arange(SEQ, n)
        if SEGMENTS in side_inputs:
            segments, ends = side_inputs[SEGMENTS], side_inputs[SEGMENT_ENDS]
            k_segments, k_ends = segments.untag(SEQ).tag(KV_SEQ), ends.untag(SEQ).tag(KV_SEQ)
            q_segments = pz.nx.nmap(jnp.maximum)(segments, 0)  # a padding query reads the root (its output is unused)
            mask = mask & (k_segments >= 0) & (k_segments <= q_segments) & (q_segments <= k_ends)
        mask = mask & (positions - positions.untag(SEQ).tag(KV_SEQ) < self.window.value)
        return pz.nx.nmap(jnp.where)(mask, x, jnp.asarray(MASKED_OUT, x.dtype))


@pz.pytree_dataclass
class LearnedPositions(pz.nn.Layer):
    """Adds the learned position embedding of each token's position (GPT-2)."""

    table: pz.ParameterValue  # ["positions", "embedding"]

    def __call__(self, x: pz.nx.NamedArray, **side_inputs) -> pz.nx.NamedArray:
        rows = self.table.value[{"positions": side_inputs["token_positions"]}]
        return x + rows.astype(x.dtype)


def head_axes(config: ModelConfig, which: str) -> dict[str, int]:
    """penzai's named head axes of the q/k/v/o projection: heads, query_heads, or head_groups x query_heads."""
    g, m = config.n_kv_heads, config.n_heads // config.n_kv_heads
    if m == 1:
        heads, kv_heads = {"heads": g}, {"heads": g}
    elif g == 1:
        heads, kv_heads = {"query_heads": m}, {}
    else:
        heads, kv_heads = {"head_groups": g, "query_heads": m}, {"head_groups": g}
    return kv_heads if which in ("k", "v") else heads


def _einsum_names(config: ModelConfig) -> tuple[dict, dict]:
    kv = {name: name[:2] for name in head_axes(config, "k")}
    q_only = {name: name[:2] for name in head_axes(config, "q") if name not in kv}
    return kv, q_only


def _norm(config: ModelConfig, name: str, dtype, axes: dict[str, int] | None = None) -> pz.nn.Layer:
    axes = axes or {"embedding": config.d_model}
    if config.norm == "layer":
        return pz.nn.LayerNorm.from_config(name=name, init_base_rng=None, across_axes=axes, epsilon=config.norm_eps,
                                           dtype=dtype)
    return pz.nn.RMSLayerNorm.from_config(name=name, init_base_rng=None, across_axes=axes, epsilon=config.norm_eps,
                                          dtype=dtype)


def _linear(name: str, inputs: dict, outputs: dict, dtype, bias: bool) -> list[pz.nn.Layer]:
    layers = [pz.nn.Linear.from_config(name=name, init_base_rng=None, input_axes=inputs, output_axes=outputs,
                                       dtype=dtype)]
    if bias:
        layers.append(pz.nn.AddBias.from_config(name=name, init_base_rng=None, biased_axes=outputs, dtype=dtype))
    return layers


def _attention(config: ModelConfig, name: str, dtype) -> pz.nn.Attention:
    d, p = {"embedding": config.d_model}, {"projection": config.head_dim}
    q_axes, kv_axes = {**head_axes(config, "q"), **p}, {**head_axes(config, "k"), **p}
    kv_names, q_names = _einsum_names(config)
    rope = []
    if config.positions == "rope":
        factor = config.rope_scaling.attention_factor if config.rope_scaling is not None else 1.0
        rope = [Rotary(pz.ParameterSlot(f"{name}/rope.inv_freq"), factor)]
    q_norm = [_norm(config, f"{name}/query_norm", dtype, p)] if config.qk_norm else []
    k_norm = [_norm(config, f"{name}/key_norm", dtype, p)] if config.qk_norm else []
    scale = config.query_scale if config.query_scale is not None else config.head_dim ** -0.5
    scores = [pz.nn.NamedEinsum(({"seq": "tq", **kv_names, **q_names, "projection": "p"},
                                 {"seq": "tkv", **kv_names, "projection": "p"}),
                                {"seq": "tq", **kv_names, **q_names, "kv_seq": "tkv"})]
    if config.attn_softcap is not None:
        scores.append(pz.nn.TanhSoftCap(soft_cap=jnp.asarray(config.attn_softcap, jnp.float32)))
    scores += [CausalMask(pz.ParameterSlot(f"{name}/mask.window")), pz.nn.Softmax("kv_seq")]
    return pz.nn.Attention(
        input_to_query=pz.nn.Sequential([
            *_linear(f"{name}/query", d, q_axes, dtype, config.attention_bias), *q_norm, *rope,
            pz.nn.ConstantRescale(by=jnp.asarray(scale, jnp.float32)),
        ]),
        input_to_key=pz.nn.Sequential([*_linear(f"{name}/key", d, kv_axes, dtype, config.attention_bias), *k_norm, *rope]),
        input_to_value=pz.nn.Sequential(_linear(f"{name}/value", d, kv_axes, dtype, config.attention_bias)),
        query_key_to_attn=pz.nn.Sequential(scores),
        attn_value_to_output=pz.nn.Sequential([
            pz.nn.NamedEinsum(({"seq": "tq", **kv_names, **q_names, "kv_seq": "tkv"},
                               {"seq": "tkv", **kv_names, "projection": "p"}),
                              {"seq": "tq", **kv_names, **q_names, "projection": "p"}),
            *_linear(f"{name}/output", q_axes, d, dtype, config.output_bias),
        ]),
    )


def _mlp(config: ModelConfig, name: str, dtype) -> pz.nn.Layer:
    d, f = {"embedding": config.d_model}, {"neurons": config.d_ffn}
    act = pz.nn.Elementwise(_ACTIVATIONS[config.mlp])
    up = _linear(f"{name}/value_linear", d, f, dtype, config.mlp_bias)
    down = _linear(f"{name}/out_linear", f, d, dtype, config.mlp_bias)
    if not config.gated_mlp:
        return model_parts.TransformerFeedForward([*up, act, *down])
    gate = pz.nn.NamedGroup("gate", [*_linear(f"{name}/gating_linear", d, f, dtype, config.mlp_bias), act])
    return model_parts.TransformerFeedForward([
        pz.nn.BranchAndMultiplyTogether(branches=[gate, pz.nn.Sequential(up)]), *down])


def build_block(config: ModelConfig, name: str, dtype, init_base_rng=None) -> model_parts.TransformerBlock:
    """One decoder block (pre-norm; post-norms, parallel residual as the config says), parameters as slots."""
    del init_base_rng  # slots only: the weights are bound by label (forms.assemble)
    attn = [_norm(config, f"{name}/pre_attention_norm", dtype), _attention(config, f"{name}/attention", dtype)]
    mlp = [_norm(config, f"{name}/pre_ffw_norm", dtype), _mlp(config, f"{name}/mlp", dtype)]
    if config.post_norms:
        attn.append(_norm(config, f"{name}/post_attention_norm", dtype))
        mlp.append(_norm(config, f"{name}/post_ffw_norm", dtype))
    if config.parallel_residual:
        return model_parts.TransformerBlock(sublayers=[
            pz.nn.Residual(pz.nn.BranchAndAddTogether([pz.nn.Sequential(attn), pz.nn.Sequential(mlp)]))])
    return model_parts.TransformerBlock(
        sublayers=[pz.nn.Residual(pz.nn.Sequential(attn)), pz.nn.Residual(pz.nn.Sequential(mlp))])


def build_skeleton(config: ModelConfig, *, stacked: bool, dtype) -> model_parts.TransformerLM:
    """The whole decoder with parameter slots: embeddings, blocks (unrolled, or one LayerStack), final norm, logits."""
    d = {"embedding": config.d_model}
    table = pz.nn.EmbeddingTable.from_config(name=f"{PREFIX}/embedder", init_base_rng=None,
                                             vocab_size=config.vocab_size, embedding_axes=d, dtype=dtype)
    layers: list[pz.nn.Layer] = [pz.nn.EmbeddingLookup(table), pz.nn.CastToDType(jnp.float32)]
    if config.positions == "learned":
        layers.append(LearnedPositions(pz.ParameterSlot(f"{PREFIX}/embed_positions.table")))
    if config.embed_scale is not None:
        layers.append(pz.nn.ConstantRescale(by=jnp.asarray(config.embed_scale, jnp.float32)))
    if stacked:
        layers.append(pz.nn.LayerStack.from_sublayer_builder(
            builder=build_block, stack_axis="blocks", stack_axis_size=config.n_layers, init_base_rng=None,
            builder_kwargs=dict(config=config, name=f"{PREFIX}/blocks", dtype=dtype)))
    else:
        layers += [build_block(config, f"{PREFIX}/block_{i}", dtype) for i in range(config.n_layers)]
    layers.append(_norm(config, f"{PREFIX}/final_norm", dtype))
    layers.append(pz.nn.Linear.from_config(name=f"{PREFIX}/lm_head", init_base_rng=None, input_axes=d,
                                           output_axes={"vocabulary": config.vocab_size}, dtype=dtype))
    if config.final_softcap is not None:
        layers.append(pz.nn.TanhSoftCap(soft_cap=jnp.asarray(config.final_softcap, jnp.float32)))
    kv = head_axes(config, "k")
    return model_parts.TransformerLM(
        metadata=model_parts.TransformerMetadata(
            common_head_axes=kv, query_only_head_axes={k: v for k, v in head_axes(config, "q").items() if k not in kv},
            embedding_dim=config.d_model, projection_dim=config.head_dim, mlp_hidden_dim=config.d_ffn,
            vocab_size=config.vocab_size, activation_dtype=jnp.float32),
        body=pz.nn.Sequential(layers),
    )
