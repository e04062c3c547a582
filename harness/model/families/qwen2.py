"""Qwen2 / Qwen2.5 (and the DeepSeek-R1 Qwen distills): Llama's maths with q/k/v biases (o_proj none).

HF: transformers' `models/qwen2`. With use_sliding_window false (every released Qwen2/2.5) transformers 5's
Qwen2Config sets sliding_window to None, so sliding_window and max_window_layers change nothing; with it true, layers
from max_window_layers on slide, or those layer_types (which transformers 5 writes into config.json) names.
GGUF: llama.cpp's `qwen2` (attn_q.bias etc.; its converter's Qwen2Model does not permute Q/K rows: llama.cpp runs
qwen2 with NEOX, i.e. rotate-half, RoPE); tokenizer.ggml.pre 'qwen2' (the distills' 'deepseek-r1-qwen' is not read).
"""

from __future__ import annotations

from harness.errors import InputError
from harness.model.families import Family
from harness.model.families import common as c
from harness.model.families import llama
from harness.validation import NonNegativeInt, StrictBool, StrictStr

_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
_HF_LAYER_NAMES = llama._LAYER_NAMES | {name: name for name in _BIASES}
_GGUF_LAYER_NAMES = c.GGUF_LLAMA_LAYER | {f"attn_{x}.bias": f"self_attn.{x}_proj.bias" for x in "qkv"}

USED_KEYS = c.LLAMA_USED_KEYS | {"use_sliding_window", "max_window_layers", "layer_types"}
# Qwen2Config has no attention_bias / mlp_bias / pretraining_tp (its biases are fixed): those keys are unknown here.
SUPPORTED = {key: c.LLAMA_SUPPORTED[key] for key in ("hidden_act", "rope_scaling", "partial_rotary_factor")} | {
    "use_mrope": (c.exactly(False), "expected false: multimodal RoPE is Qwen2-VL's, not Qwen2's"),
}


class HFConfig(c.HFConfig):
    use_sliding_window: StrictBool = False  # transformers' default
    max_window_layers: NonNegativeInt = 28  # transformers' default
    layer_types: list[StrictStr] | None = None


def layer_types(cfg: HFConfig, source: str) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding window, per-layer types) as transformers 5's Qwen2Config derives them; (None, None): all full."""
    window = cfg.sliding_window if cfg.use_sliding_window else None
    if cfg.layer_types is not None:
        types = tuple(cfg.layer_types)
        if "sliding_attention" in types and window is None:  # transformers itself fails on this combination
            raise InputError(f"{source}: key 'layer_types' lists sliding_attention layers but the sliding window is "
                             "off (use_sliding_window false or sliding_window null)")
    else:
        types = tuple("sliding_attention" if window is not None and i >= cfg.max_window_layers else "full_attention"
                      for i in range(cfg.num_hidden_layers))
        if "sliding_attention" not in types:
            return None, None
    return (window if "sliding_attention" in types else None), types  # ModelConfig checks the entries and their count


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(HFConfig, raw, USED_KEYS, source)
    window, types = layer_types(cfg, source)
    return c.make_config(source, **c.llama_fields(cfg, source, "qwen2"), attention_bias=True, sliding_window=window,
                         layer_types=types)


def weights_from_hf(tensors, config, source):
    return c.renamed(tensors, llama._GLOBAL_NAMES, llama.HF_LAYER, _HF_LAYER_NAMES, source, "qwen2")


def config_from_gguf(keys, values, tensors, path):
    if keys.sliding_window is not None:  # llama.cpp's qwen2 graph has no window; its converter writes none
        raise InputError(f"{path}: qwen2.attention.sliding_window={keys.sliding_window} is not supported for qwen2")
    return c.make_config(str(path), **c.gguf_llama_fields(keys, tensors, path, "qwen2"), attention_bias=True)


def weights_from_gguf(tensors, config, path):
    """llama.cpp names -> canonical; Q/K rows are stored in HF's order (no permutation to undo)."""
    return c.renamed(tensors, c.GGUF_GLOBALS, c.GGUF_LAYER, _GGUF_LAYER_NAMES, str(path), "qwen2")


FAMILY = Family(
    name="qwen2",
    hf_model_types=("qwen2",),
    gguf_architecture="qwen2",
    hf_used_keys=USED_KEYS,
    hf_no_effect_keys=c.NO_EFFECT_KEYS,
    hf_supported_values=SUPPORTED,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
    notes="plain RoPE only (yarn refused); GGUF tokenizers have no NFC step (as llama.cpp; Qwen2's tokenizer.json has)",
)
