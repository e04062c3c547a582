"""Model families as data: how each family's Hugging Face and GGUF files map onto ModelConfig and the canonical weights.

A family module (as penzai's `variants/` and transformers' per-model folders) says which config.json keys it reads,
which provably change nothing and which must hold one value; how its tensors are named (HF and llama.cpp) and which
are fused; and the ModelConfig switches its maths needs (harness.model.blocks builds every family from them). The
readers dispatch on `model_type` / `general.architecture`; adding a family is one module listed in `_MODULES`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Callable
from typing import Any

from harness.errors import InputError
from harness.model.config import ModelConfig, StoredTensor

# (check, what is supported) for a config key that must hold one value.
Supported = tuple[Callable[[Any], bool], str]
HFTensors = dict[str, StoredTensor]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """One model family: its names in both file formats and how their values become a ModelConfig."""

    name: str
    hf_model_types: tuple[str, ...]
    gguf_architecture: str | None  # llama.cpp's general.architecture; None: no GGUF support here
    hf_used_keys: frozenset[str]  # config.json keys the config is built from
    hf_no_effect_keys: dict[str, str]  # key -> why it cannot change the forward maths
    hf_supported_values: dict[str, Supported]  # key -> (check, what is supported)
    config_from_hf: Callable[[dict, str], ModelConfig]  # (config.json, its path) -> config; keys already checked
    weights_from_hf: Callable[[HFTensors, ModelConfig, str], HFTensors]  # HF names -> canonical names
    config_from_gguf: Callable[[Any, dict, dict, pathlib.Path], ModelConfig] | None = None  # (ArchKeys, values, tensors, path)
    weights_from_gguf: Callable[[HFTensors, ModelConfig, pathlib.Path], HFTensors] | None = None  # GGUF names -> canonical
    hf_rope_parameters: dict[str, Supported] = dataclasses.field(default_factory=dict)  # keys of rope_parameters
    notes: str = ""  # what this family cannot run, in one line (README's family table)
    # Regexes (fullmatch) of stored HF buffers that change nothing (causal-mask tables, RoPE frequencies of old files):
    # the reader lets them be of any dtype (bool/uint8 masks), weights_from_hf drops them.
    hf_buffers: tuple[str, ...] = ()

    @property
    def hf_known_keys(self) -> frozenset[str]:
        return self.hf_used_keys | self.hf_no_effect_keys.keys() | self.hf_supported_values.keys()


_MODULES = ("llama", "phi3", "qwen2", "mistral", "gpt2", "gpt_neox", "gemma2", "gemma3")


def families() -> dict[str, Family]:
    """Every family by name, in `_MODULES` order."""
    out = {}
    for module in _MODULES:
        family = importlib.import_module(f"{__name__}.{module}").FAMILY
        out[family.name] = family
    return out


def for_hf(model_type: Any, source: str) -> Family:
    """The family whose config.json says `model_type`; any other value is a one-line InputError."""
    for family in families().values():
        if model_type in family.hf_model_types:
            return family
    known = sorted(t for f in families().values() for t in f.hf_model_types)
    raise InputError(f"{source}: model_type {str(model_type)[:60]!r} is not supported; expected one of {known}")


def for_gguf(architecture: Any, source: str) -> Family:
    """The family of a GGUF file's general.architecture; any other value is a one-line InputError."""
    for family in families().values():
        if family.gguf_architecture is not None and architecture == family.gguf_architecture:
            return family
    known = sorted(f.gguf_architecture for f in families().values() if f.gguf_architecture)
    raise InputError(f"{source}: general.architecture is {str(architecture)[:60]!r}, expected one of {known}")
