"""Mistral (7B v0.1-v0.3, Nemo): Llama's maths with a sliding attention window on every layer (null: full attention).

HF: transformers' `models/mistral` (one window for all layers; a config.json with layer_types is Ministral's and is
refused here). GGUF: llama.cpp's converter writes Mistral as general.architecture "llama" with no sliding-window key,
so such a file is read by the llama family as full attention (as llama.cpp runs it); this family reads HF only.
"""

from __future__ import annotations

from harness.model.families import Family
from harness.model.families import common as c
from harness.model.families import llama


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(c.HFConfig, raw, c.LLAMA_USED_KEYS, source)
    return c.make_config(source, **c.llama_fields(cfg, source, "mistral"), sliding_window=cfg.sliding_window)


def weights_from_hf(tensors, config, source):
    return c.renamed(tensors, llama._GLOBAL_NAMES, llama.HF_LAYER, llama._LAYER_NAMES, source, "mistral")


FAMILY = Family(
    name="mistral",
    hf_model_types=("mistral",),
    gguf_architecture=None,  # llama.cpp writes Mistral as "llama" (the llama family reads it, without the window)
    hf_used_keys=c.LLAMA_USED_KEYS,
    hf_no_effect_keys=c.NO_EFFECT_KEYS,
    hf_supported_values=c.LLAMA_SUPPORTED,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    notes="HF only: llama.cpp writes Mistral GGUFs as 'llama' without their window (read as llama: full attention)",
)
