"""Phi-3 (mini/medium, 4k and 128k): Llama's maths with fused qkv_proj / gate_up_proj, an attention window, and
longrope RoPE scaling on the 128k models (its short factors: contexts up to the original 4k).

HF: transformers' `models/phi3`; GGUF: llama.cpp's `phi3` (fused attn_qkv and ffn_up, Q/K rows not permuted).
"""

from __future__ import annotations

import math

from harness.errors import InputError
from harness.model.config import RopeScaling
from harness.model.families import Family
from harness.model.families import common as c
from harness.model.families import llama

_HF_LAYER_NAMES = llama._LAYER_NAMES | {"self_attn.qkv_proj.weight": "self_attn.qkv_proj.weight",
                                       "mlp.gate_up_proj.weight": "mlp.gate_up_proj.weight"}
_GGUF_LAYER_NAMES = {k: v for k, v in c.GGUF_LLAMA_LAYER.items() if k != "ffn_gate.weight"} | {
    "attn_qkv.weight": "self_attn.qkv_proj.weight", "ffn_up.weight": "mlp.gate_up_proj.weight"}


def _longrope_or_default(value) -> bool:
    return c.default_rope(value) or (isinstance(value, dict) and value.get("rope_type", value.get("type")) == "longrope")


SUPPORTED = c.LLAMA_SUPPORTED | {
    "rope_scaling": (_longrope_or_default, "expected null or rope_type 'longrope' (no linear/dynamic/yarn/llama3)"),
    "original_max_position_embeddings": (c.positive_int, "expected a positive int"),
}
ROPE_PARAMETERS = c.PLAIN_ROPE_PARAMETERS | {
    "rope_type": (lambda v: v in ("default", "longrope"), "expected 'default' or 'longrope'"),
    # transformers 5 keeps a legacy rope_scaling's "type" beside the rope_type it derives from it (rope_type wins)
    "type": (lambda v: v in ("default", "longrope"), "expected 'default' or 'longrope'"),
    "short_factor": (lambda v: isinstance(v, list), "expected a list"),
    "long_factor": (lambda v: isinstance(v, list), "expected a list"),
    "original_max_position_embeddings": (c.positive_int, "expected a positive int"),
    "attention_factor": (lambda v: v is None or type(v) in (int, float), "expected a number"),
    "factor": (lambda v: v is None or type(v) in (int, float), "expected a number"),
}


def _longrope(raw: dict, cfg, fields: dict, source: str) -> tuple[RopeScaling | None, int]:
    """(longrope scaling or None, the context the model runs: a longrope model runs its short factors only, so up to
    original_max_position_embeddings)."""
    params = c.rope_parameters(cfg, source).model_dump()
    scaling = raw.get("rope_scaling")
    if params.get("rope_type") != "longrope":
        if not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "longrope"):
            return None, fields["max_context"]
        params = scaling
    original = params.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings")
    short = params.get("short_factor")
    half = (fields["head_dim"]) // 2
    if type(original) is not int or original < 2:  # transformers divides by log(original)
        raise InputError(f"{source}: longrope needs original_max_position_embeddings (an int >= 2)")
    if not isinstance(short, list) or len(short) != half or not all(type(v) in (int, float) and v > 0 for v in short):
        raise InputError(f"{source}: longrope short_factor: expected {half} positive numbers (head_dim / 2)")
    factor, attention = params.get("factor"), params.get("attention_factor")
    for key, value in (("factor", factor), ("attention_factor", attention)):
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value <= 0):
            raise InputError(f"{source}: longrope {key} is {value!r:.60}; expected a positive number")
    # transformers' _compute_longrope_parameters: an explicit factor, else max_position / original_max_position
    factor = fields["max_context"] / original if factor is None else float(factor)
    if attention is None:  # transformers' _compute_longrope_parameters
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeScaling(kind="longrope", factor=factor, original_max=original, short_factor=tuple(map(float, short)),
                       attention_factor=float(attention)), min(original, fields["max_context"])


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(c.HFConfig, raw, c.LLAMA_USED_KEYS, source)
    fields = c.llama_fields(cfg, source, "phi3")
    scaling, max_context = _longrope(raw, cfg, fields, source)
    return c.make_config(source, **(fields | dict(max_context=max_context)), rope_scaling=scaling,
                         sliding_window=cfg.sliding_window)


def _split(tensors, config, source):
    q, kv, f = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim, config.d_ffn
    tensors = c.split_rows(tensors, "self_attn.qkv_proj.weight",
                           {"self_attn.q_proj.weight": q, "self_attn.k_proj.weight": kv, "self_attn.v_proj.weight": kv},
                           source)
    return c.split_rows(tensors, "mlp.gate_up_proj.weight", {"mlp.gate_proj.weight": f, "mlp.up_proj.weight": f}, source)


def weights_from_hf(tensors, config, source):
    return _split(c.renamed(tensors, llama._GLOBAL_NAMES, llama.HF_LAYER, _HF_LAYER_NAMES, source, "phi3"),
                  config, source)


def config_from_gguf(keys, values, tensors, path):
    return c.make_config(str(path), **c.gguf_llama_fields(keys, tensors, path, "phi3"),
                         sliding_window=keys.sliding_window)


def weights_from_gguf(tensors, config, path):
    return _split(c.renamed(tensors, c.GGUF_GLOBALS, c.GGUF_LAYER, _GGUF_LAYER_NAMES, str(path), "phi3"),
                  config, str(path))


FAMILY = Family(
    name="phi3",
    hf_model_types=("phi3",),
    gguf_architecture="phi3",
    hf_used_keys=c.LLAMA_USED_KEYS,
    hf_no_effect_keys=c.NO_EFFECT_KEYS,
    hf_supported_values=SUPPORTED,
    hf_rope_parameters=ROPE_PARAMETERS,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
    notes="longrope runs its short factors: contexts up to original_max_position_embeddings",
)
