"""Gemma 2: Llama's attention with GeGLU (tanh GELU), (1 + w) RMSNorms before *and after* each sub-block, embeddings
scaled by sqrt(d_model), queries scaled by query_pre_attn_scalar ** -0.5, tanh soft caps on the attention scores and
the final logits, and sliding-window layers alternating with global ones.

HF: transformers' `models/gemma2` (Gemma2Config's class defaults fill keys a config.json omits, as transformers does).
Its per-layer norms map onto the canonical names as: input_layernorm -> input_layernorm, post_attention_layernorm ->
attn_out_norm, pre_feedforward_layernorm -> post_attention_layernorm (the norm before the MLP),
post_feedforward_layernorm -> mlp_out_norm. The stored norm weights are w of (1 + w): norm_offset 1.

GGUF: llama.cpp's `gemma2` (convert_hf_to_gguf.py's Gemma2Model, llama-model.cpp's gemma2 hparams):
- every `*norm.weight` is stored as w + 1 (`data_torch + 1` in the converter), so norm_offset is 0 here;
- Q/K rows are *not* permuted (llama.cpp's gemma graphs use NEOX rotate-half RoPE, as transformers);
- no output.weight (tied); no rope.freq_base written (llama.cpp's default 10000, = Gemma-2's);
- sliding layers are every other one from layer 0 (llama.cpp's `set_swa_pattern(2)`, transformers' default
  layer_types), window `gemma2.attention.sliding_window` (default 4096);
- soft caps `gemma2.attn_logit_softcapping` / `gemma2.final_logit_softcapping` (llama.cpp defaults 50 / 30);
- query_pre_attn_scalar is not stored: llama.cpp scales queries by head_dim ** -0.5, except on the 46-layer (27B)
  model, by (d_model / n_heads) ** -0.5 — the rule is copied here, so a GGUF means what llama.cpp runs.
"""

from __future__ import annotations

import math

from harness.errors import InputError
from harness.model.families import Family
from harness.model.families import common as c
from harness.model.families import llama
from harness.validation import PositiveFloat, StrictStr

SLIDING, FULL = "sliding_attention", "full_attention"
GELU_TANH = "gelu_pytorch_tanh"

_NORMS_HF = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "attn_out_norm.weight",
    "pre_feedforward_layernorm.weight": "post_attention_layernorm.weight",
    "post_feedforward_layernorm.weight": "mlp_out_norm.weight",
}
HF_LAYER_NAMES = {k: v for k, v in llama._LAYER_NAMES.items() if "layernorm" not in k} | _NORMS_HF
GGUF_LAYER_NAMES = {k: v for k, v in c.GGUF_LLAMA_LAYER.items() if "norm" not in k} | {
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "attn_out_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "mlp_out_norm.weight",
}


class GemmaHFConfig(c.HFConfig):
    """The Gemma-2/3 config.json keys on top of the llama-like ones."""

    query_pre_attn_scalar: PositiveFloat
    attn_logit_softcapping: PositiveFloat | None = None
    final_logit_softcapping: PositiveFloat | None = None
    layer_types: list[StrictStr] | None = None


# transformers' Gemma2Config class defaults of the keys read here (a config.json may omit them); the shape keys
# (hidden_size, layers, heads, intermediate_size, vocab_size) stay required.
HF_DEFAULTS = dict(num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6,
                   tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0)

USED_KEYS = c.LLAMA_USED_KEYS | {"query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                                 "layer_types"}
NO_EFFECT = c.NO_EFFECT_KEYS | {
    "hidden_act": "transformers' Gemma-2/3 read hidden_activation only (old configs carry both)",
    "cache_implementation": "the generation KV-cache kind ('hybrid')",
}
SUPPORTED = {
    "hidden_activation": (c.exactly(GELU_TANH), f"expected {GELU_TANH!r}: the tanh-GELU gated MLP"),
    "attention_bias": (c.exactly(False), "expected false: no attention biases"),
    "use_bidirectional_attention": (lambda v: v is None or v is False,
                                    "expected null or false: causal attention (bidirectional is the embedding model's)"),
    "rope_scaling": (c.default_rope, "expected null: plain RoPE"),
}


def gemma_fields(cfg: GemmaHFConfig, layer_types: list, source: str, architecture: str) -> dict:
    """ModelConfig fields every Gemma-2/3 config.json shares: the llama-like ones plus the Gemma switches."""
    if SLIDING in layer_types and cfg.sliding_window is None:
        raise InputError(f"{source}: layer_types has sliding_attention layers but sliding_window is null")
    fields = c.llama_fields(cfg, source, architecture)
    return fields | dict(
        sliding_window=cfg.sliding_window, layer_types=tuple(layer_types), norm_offset=1.0, mlp="geglu_tanh",
        post_norms=True, query_scale=float(cfg.query_pre_attn_scalar) ** -0.5,
        attn_softcap=cfg.attn_logit_softcapping, final_softcap=cfg.final_logit_softcapping,
        embed_scale=math.sqrt(cfg.hidden_size))


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(GemmaHFConfig, HF_DEFAULTS | raw, USED_KEYS, source)
    # Gemma2Config.__post_init__: layer i is sliding iff (i + 1) % 2, i.e. even layers, unless layer_types is given
    layer_types = cfg.layer_types or [SLIDING if (i + 1) % 2 else FULL for i in range(cfg.num_hidden_layers)]
    return c.make_config(source, **gemma_fields(cfg, layer_types, source, "gemma2"))


def weights_from_hf(tensors, config, source):
    return c.renamed(tensors, llama._GLOBAL_NAMES, llama.HF_LAYER, HF_LAYER_NAMES, source, "gemma2")


def llama_cpp_query_scale(fields: dict, n_layers_27b: int) -> float:
    """llama.cpp's Gemma query scale: head_dim ** -0.5, but (d_model / n_heads) ** -0.5 on the 27B model."""
    if fields["n_layers"] == n_layers_27b:
        return float(fields["d_model"] // fields["n_heads"]) ** -0.5
    return float(fields["head_dim"]) ** -0.5


def config_from_gguf(keys, values, tensors, path):
    fields = c.gguf_llama_fields(keys, tensors, path, "gemma2")
    pattern = values.get("gemma2.attention.sliding_window_pattern", 2)
    if pattern != 2:
        raise InputError(f"{path}: gemma2.attention.sliding_window_pattern={pattern!r:.60} is not supported "
                         "(expected 2: every other layer sliding, from layer 0)")
    if keys.rope_base_swa not in (None, keys.rope_base):
        raise InputError(f"{path}: gemma2.rope.freq_base_swa={keys.rope_base_swa!r} differs from "
                         f"gemma2.rope.freq_base={keys.rope_base!r}; expected one RoPE base")
    if keys.rope_scaling_type not in (None, "none"):
        raise InputError(f"{path}: gemma2.rope.scaling.type={keys.rope_scaling_type!r:.60} is not supported; "
                         "expected plain RoPE")
    window = 4096 if keys.sliding_window is None else keys.sliding_window  # llama.cpp's gemma2 default
    return c.make_config(
        str(path), **fields, sliding_window=window,
        layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(fields["n_layers"])),
        norm_offset=0.0, mlp="geglu_tanh", post_norms=True, query_scale=llama_cpp_query_scale(fields, 46),
        attn_softcap=50.0 if keys.attn_softcap is None else keys.attn_softcap,  # llama.cpp's defaults
        final_softcap=30.0 if keys.final_softcap is None else keys.final_softcap,
        embed_scale=math.sqrt(fields["d_model"]))


def weights_from_gguf(tensors, config, path):
    """llama.cpp names -> canonical; norms keep the +1 the converter added (the config's norm_offset is 0)."""
    return c.renamed(tensors, c.GGUF_GLOBALS, c.GGUF_LAYER, GGUF_LAYER_NAMES, str(path), "gemma2")


FAMILY = Family(
    name="gemma2",
    hf_model_types=("gemma2",),
    gguf_architecture="gemma2",
    hf_used_keys=USED_KEYS,
    hf_no_effect_keys=NO_EFFECT,
    hf_supported_values=SUPPORTED,
    hf_rope_parameters=c.PLAIN_ROPE_PARAMETERS,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
    notes="plain RoPE only (no rope scaling); GGUF query scale follows llama.cpp (head_dim, or d_model/heads at 46 "
          "layers)",
)
