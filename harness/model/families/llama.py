"""Llama (and SmolLM2, Llama-3.x): RMSNorm, SwiGLU, grouped-query attention, rotate-half RoPE (plain or llama3-scaled).

HF: transformers' `models/llama`; GGUF: llama.cpp's `llama` architecture, whose converter permutes Q/K rows to the
interleaved RoPE layout (undone here).
"""

from __future__ import annotations

from harness.errors import InputError
from harness.model.config import RopeScaling
from harness.model.families import Family
from harness.model.families import common as c

_LAYER_NAMES = {name: name for name in (
    "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight")}
_GLOBAL_NAMES = {name: name for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")}
HF_LAYER = r"^model\.layers\.(\d+)\.(.+)$"

# rope_scaling / rope_parameters of Llama-3.1/3.2: rope_type "llama3" and its four numbers.
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
ROPE_PARAMETERS = c.PLAIN_ROPE_PARAMETERS | {
    "rope_type": (lambda v: v in ("default", "llama3"), "expected 'default' or 'llama3'"),
    # transformers 5 keeps a legacy rope_scaling's "type" beside the rope_type it derives from it (rope_type wins)
    "type": (lambda v: v in ("default", "llama3"), "expected 'default' or 'llama3'"),
    **{key: (lambda v: type(v) in (int, float) and v > 0, "expected a positive number") for key in _LLAMA3_KEYS},
}


def _llama3_or_default(value) -> bool:
    return c.default_rope(value) or (isinstance(value, dict) and value.get("rope_type", value.get("type")) == "llama3")


SUPPORTED = c.LLAMA_SUPPORTED | {
    "rope_scaling": (_llama3_or_default, "expected null or rope_type 'llama3' (no linear/dynamic/yarn/longrope)"),
    "original_max_position_embeddings": (c.positive_int, "expected a positive int"),
}


def rope_scaling(raw: dict, cfg, source: str) -> RopeScaling | None:
    """The llama3 RoPE scaling of either config style (rope_parameters, or rope_scaling), or None for plain RoPE."""
    params = c.rope_parameters(cfg, source)
    scaling = raw.get("rope_scaling")
    if params.rope_type != "llama3":
        for key in _LLAMA3_KEYS:
            if key in (cfg.rope_parameters or {}):
                raise c.unsupported(source, f"rope_parameters.{key}", cfg.rope_parameters[key],
                                    "expected only with rope_type 'llama3'")
    if params.rope_type == "llama3":
        values = params.model_dump()
    elif isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "llama3":
        values = scaling
    else:
        return None
    missing = [key for key in _LLAMA3_KEYS if values.get(key) is None]
    if missing:
        raise InputError(f"{source}: llama3 RoPE scaling lacks {missing[0]!r}; expected {list(_LLAMA3_KEYS)}")
    return RopeScaling(kind="llama3", factor=float(values["factor"]), low_freq_factor=float(values["low_freq_factor"]),
                       high_freq_factor=float(values["high_freq_factor"]),
                       original_max=int(values["original_max_position_embeddings"]))


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(c.HFConfig, raw, c.LLAMA_USED_KEYS, source)
    if cfg.sliding_window is not None:
        raise c.unsupported(source, "sliding_window", cfg.sliding_window, "expected null for llama: full causal attention")
    return c.make_config(source, **c.llama_fields(cfg, source, "llama"), rope_scaling=rope_scaling(raw, cfg, source))


def weights_from_hf(tensors, config, source):
    return c.renamed(tensors, _GLOBAL_NAMES, HF_LAYER, _LAYER_NAMES, source, "llama")


def config_from_gguf(keys, values, tensors, path):
    if keys.sliding_window is not None:
        raise InputError(f"{path}: llama.attention.sliding_window={keys.sliding_window} is not supported for llama")
    return c.make_config(str(path), **c.gguf_llama_fields(keys, tensors, path, "llama"))


def weights_from_gguf(tensors, config, path):
    """llama.cpp names -> canonical, undoing the converter's Q/K row permutation."""
    out = c.renamed(tensors, c.GGUF_GLOBALS, c.GGUF_LAYER, c.GGUF_LLAMA_LAYER, str(path), "llama")
    for name in list(out):
        for proj, heads in (("q_proj", config.n_heads), ("k_proj", config.n_kv_heads)):
            if name.endswith(f"self_attn.{proj}.weight") and out[name].shape[0] == heads * config.head_dim:
                out[name] = c.mapped(out[name], lambda w, heads=heads: c.unpermute_rope_rows(w, heads))
    return out


FAMILY = Family(
    name="llama",
    hf_model_types=("llama",),
    gguf_architecture="llama",
    hf_used_keys=c.LLAMA_USED_KEYS,
    hf_no_effect_keys=c.NO_EFFECT_KEYS,
    hf_supported_values=SUPPORTED,
    hf_rope_parameters=ROPE_PARAMETERS,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
)
