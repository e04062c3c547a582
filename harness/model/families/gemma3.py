"""Gemma 3 (text: Gemma3ForCausalLM, model_type "gemma3_text" — the 270M and 1B models): Gemma 2's block (GeGLU,
(1 + w) pre- and post-norms, sqrt(d_model) embedding scale, query_pre_attn_scalar) plus a (1 + w) RMSNorm on each
query and key head before RoPE; final_logit_softcapping is read (null on the released models), attn_logit_softcapping
must be null (transformers 5's Gemma-3 never applies it);
sliding layers (five of every six by default) use their own RoPE base (rope_local_base_freq, 10000) unscaled, global
layers rope_theta (1e6), linearly scaled on the 4B-and-up models.

HF: transformers' `models/gemma3` (Gemma3TextConfig). RoPE comes either as hub-style keys (rope_theta,
rope_local_base_freq, rope_scaling: the global layers' scaling) or as transformers 5's per-layer-type
`rope_parameters` {"full_attention": {...}, "sliding_attention": {...}}; this module resolves them as
Gemma3TextConfig.convert_rope_params_to_dict does (nested values first, then the hub keys, then 1e6 / 1e4), and refuses
the combinations transformers 5 resolves surprisingly (rope_scaling beside rope_parameters; {"type": "linear"} without
"rope_type", which transformers 5 silently drops). Without layer_types, layer i is sliding iff (i + 1) %
sliding_window_pattern (default 6); `_sliding_window_pattern` is never read by transformers. The multimodal
Gemma3ForConditionalGeneration (model_type "gemma3", nested text_config, vision tower) is not a family here: its
model_type is refused by harness.model.families.for_hf.

GGUF: llama.cpp's `gemma3` (convert_hf_to_gguf.py's Gemma3Model; llama-model.cpp's gemma3 hparams):
- every `*norm.weight` (q/k norms included) is stored as w + 1 (`norm_shift`), so norm_offset is 0 here;
- Q/K rows are not permuted (NEOX rotate-half RoPE, as transformers);
- attn_q_norm / attn_k_norm are the q/k norms; post_attention_norm / post_ffw_norm the sub-block output norms;
  ffn_norm the norm before the MLP; output.weight only when untied;
- sliding layers: llama.cpp's fixed `set_swa_pattern(6)` (layer i sliding iff i % 6 < 5: transformers' default
  layer_types) when gemma3.attention.sliding_window is present (else every layer global);
- RoPE: gemma3.rope.freq_base is the global layers' base; llama.cpp fixes the sliding layers' base at 10000
  (`rope_freq_base_train_swa`) and leaves them unscaled; a file whose rope.freq_base_swa says otherwise is refused;
  gemma3.rope.scaling.type "linear" with rope.scaling.factor scales the global layers (the 4B-and-up models);
- key_length / value_length give head_dim (256, not d_model / heads); token_embd is cut to the tokenizer's size;
- query_pre_attn_scalar is not stored: llama.cpp scales queries by head_dim ** -0.5, except on the 62-layer (27B)
  model, by (d_model / n_heads) ** -0.5 (its query_pre_attn_scalar 168) — copied here.
"""

from __future__ import annotations

import math

from harness.errors import InputError
from harness.model.config import RopeScaling
from harness.model.families import Family
from harness.model.families import common as c
from harness.model.families import gemma2, llama
from harness.validation import PositiveFloat, PositiveInt

SLIDING, FULL = gemma2.SLIDING, gemma2.FULL
GLOBAL_THETA, LOCAL_THETA = 1_000_000.0, 10_000.0  # Gemma3TextConfig.default_theta
_QK_NORMS = {"self_attn.q_norm.weight": "self_attn.q_norm.weight", "self_attn.k_norm.weight": "self_attn.k_norm.weight"}
HF_LAYER_NAMES = gemma2.HF_LAYER_NAMES | _QK_NORMS
GGUF_LAYER_NAMES = gemma2.GGUF_LAYER_NAMES | {"attn_q_norm.weight": "self_attn.q_norm.weight",
                                              "attn_k_norm.weight": "self_attn.k_norm.weight"}


class Gemma3HFConfig(gemma2.GemmaHFConfig):
    rope_local_base_freq: PositiveFloat | None = None
    sliding_window_pattern: PositiveInt | None = None


# Gemma3TextConfig's class defaults of the keys read here (the shape keys stay required).
HF_DEFAULTS = dict(num_key_value_heads=4, head_dim=256, max_position_embeddings=131072, rms_norm_eps=1e-6,
                   tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096,
                   final_logit_softcapping=None)
# attn_logit_softcapping is pinned to null below (SUPPORTED), not read
USED_KEYS = (gemma2.USED_KEYS - {"attn_logit_softcapping"}) | {"rope_local_base_freq", "sliding_window_pattern"}
NO_EFFECT = gemma2.NO_EFFECT | {
    "_sliding_window_pattern": "transformers 5 writes it but derives layer_types from layer_types or "
                               "sliding_window_pattern only",
}


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _rope_entry(kinds: tuple[str, ...]):
    """Check of one rope_parameters / rope_scaling dict: rope_type in `kinds` (linear with a positive factor),
    a positive rope_theta, nothing else."""
    def check(value) -> bool:
        if value is None:
            return True  # transformers: the layer type's default
        if not isinstance(value, dict) or set(value) - {"rope_type", "rope_theta", "factor"}:
            return False
        kind = value.get("rope_type", "default")
        if kind not in kinds or ("rope_theta" in value and not _number(value["rope_theta"])):
            return False
        return _number(value.get("factor")) if kind == "linear" else "factor" not in value
    return check


_FULL_WHY = "expected rope_type 'default', or 'linear' with a positive factor, and a positive rope_theta"
ROPE_PARAMETERS = {
    FULL: (_rope_entry(("default", "linear")), _FULL_WHY),
    SLIDING: (_rope_entry(("default",)), "expected rope_type 'default' and a positive rope_theta: unscaled local RoPE"),
}
SUPPORTED = gemma2.SUPPORTED | {
    "rope_scaling": (lambda v: v is None or (isinstance(v, dict) and "rope_theta" not in v
                                             and _rope_entry(("default", "linear"))(v)),
                     "expected null or {'rope_type': 'linear', 'factor': ...} (the global layers' scaling; "
                     "transformers 5 drops a 'type' key)"),
    "attn_logit_softcapping": (lambda v: v is None, "expected null: transformers' Gemma-3 applies no attention soft cap"),
}


def rope(raw: dict, cfg: Gemma3HFConfig, source: str) -> tuple[float, float, RopeScaling | None]:
    """(global base, local base, the global layers' scaling), as Gemma3TextConfig.convert_rope_params_to_dict
    resolves rope_parameters, rope_scaling, rope_theta and rope_local_base_freq."""
    params, scaling = raw.get("rope_parameters"), raw.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise c.unsupported(source, "rope_parameters", params, "expected {'full_attention': ..., 'sliding_attention': ...}")
    if params and scaling is not None:
        raise c.unsupported(source, "rope_scaling", scaling, "expected null beside rope_parameters (give the scaling "
                            "in rope_parameters.full_attention)")
    full = dict((params or {}).get(FULL) or {}) | dict(scaling or {})
    sliding = dict((params or {}).get(SLIDING) or {})
    global_base = full.get("rope_theta", GLOBAL_THETA if cfg.rope_theta is None else cfg.rope_theta)
    local_base = sliding.get("rope_theta", LOCAL_THETA if cfg.rope_local_base_freq is None else cfg.rope_local_base_freq)
    kind = full.get("rope_type", "default")
    if kind not in ("default", "linear") or sliding.get("rope_type", "default") != "default":
        raise c.unsupported(source, "rope_parameters", params, _FULL_WHY)  # checked before; kept for direct callers
    linear = RopeScaling(kind="linear", factor=float(full["factor"])) if kind == "linear" else None
    return float(global_base), float(local_base), linear


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(Gemma3HFConfig, HF_DEFAULTS | raw, USED_KEYS, source)
    pattern = cfg.sliding_window_pattern or 6
    layer_types = cfg.layer_types or [SLIDING if (i + 1) % pattern else FULL for i in range(cfg.num_hidden_layers)]
    global_base, local_base, scaling = rope(raw, cfg, source)
    fields = gemma2.gemma_fields(cfg, layer_types, source, "gemma3")
    return c.make_config(source, **(fields | dict(rope_base=global_base)), local_rope_base=local_base,
                         rope_scaling=scaling, qk_norm=True)


def weights_from_hf(tensors, config, source):
    return c.renamed(tensors, llama._GLOBAL_NAMES, llama.HF_LAYER, HF_LAYER_NAMES, source, "gemma3")


def config_from_gguf(keys, values, tensors, path):
    fields = c.gguf_llama_fields(keys, tensors, path, "gemma3")
    if "gemma3.rope.freq_base" not in values:  # llama.cpp would run 10000, transformers' GGUF loader 1e6
        raise InputError(f"{path}: gemma3.rope.freq_base is missing; expected the global layers' RoPE base")
    if keys.rope_base_swa not in (None, LOCAL_THETA):
        raise InputError(f"{path}: gemma3.rope.freq_base_swa={keys.rope_base_swa!r} is not supported (llama.cpp runs "
                         f"the sliding layers at {LOCAL_THETA:g} whatever the file says)")
    if keys.attn_softcap is not None:
        raise InputError(f"{path}: gemma3.attn_logit_softcapping={keys.attn_softcap!r} is not supported "
                         "(Gemma-3 has no attention soft cap; llama.cpp ignores the key)")
    scaling = None
    if keys.rope_scaling_type == "linear" and keys.rope_scaling_factor not in (None, 0.0, 1.0):
        if keys.rope_scaling_factor < 0:
            raise InputError(f"{path}: gemma3.rope.scaling.factor={keys.rope_scaling_factor!r} is not positive")
        scaling = RopeScaling(kind="linear", factor=float(keys.rope_scaling_factor))
    window = keys.sliding_window  # llama.cpp: no sliding layers without a window
    return c.make_config(
        str(path), **fields, sliding_window=window,
        layer_types=tuple(SLIDING if window and i % 6 < 5 else FULL for i in range(fields["n_layers"])),
        local_rope_base=LOCAL_THETA, rope_scaling=scaling, norm_offset=0.0, mlp="geglu_tanh", post_norms=True,
        qk_norm=True, query_scale=gemma2.llama_cpp_query_scale(fields, 62), final_softcap=keys.final_softcap,
        embed_scale=math.sqrt(fields["d_model"]))


def weights_from_gguf(tensors, config, path):
    """llama.cpp names -> canonical; norms keep the +1 the converter added (the config's norm_offset is 0)."""
    return c.renamed(tensors, c.GGUF_GLOBALS, c.GGUF_LAYER, GGUF_LAYER_NAMES, str(path), "gemma3")


FAMILY = Family(
    name="gemma3",
    hf_model_types=("gemma3_text",),
    gguf_architecture="gemma3",
    hf_used_keys=USED_KEYS,
    hf_no_effect_keys=NO_EFFECT,
    hf_supported_values=SUPPORTED,
    hf_rope_parameters=ROPE_PARAMETERS,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
    notes="text models only (Gemma3ForCausalLM); the multimodal 'gemma3' checkpoints are refused; GGUF query scale "
          "follows llama.cpp",
)
