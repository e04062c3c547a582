"""What the family modules share: config.json keys that change nothing in any family, the typed llama-like config
schema, value checks, and renaming / splitting stored tensors into the canonical layout (harness.model.config)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import numpy as np

from harness.errors import InputError
from harness.model.config import ModelConfig, StoredTensor
from harness.validation import (FiniteFloat, NonNegativeInt, PositiveFloat, PositiveInt, Schema, StrictBool, StrictStr,
                                short_repr, validate)

ROPE_THETA_DEFAULT = 10000.0  # transformers' class default when config.json omits rope_theta

# Provably no effect on the forward maths in any family: names, bookkeeping, training-only and generation-only settings.
# Any value is accepted (token ids are still checked to lie inside vocab_size); those present are listed in
# Checkpoint.ignored_fields.
NO_EFFECT_KEYS: dict[str, str] = {
    "architectures": "the transformers class name; model_type chooses the maths",
    "_name_or_path": "where the checkpoint was saved from",
    "_attn_implementation_autoset": "transformers bookkeeping of which attention kernel it picked",
    "transformers_version": "the library version that wrote the file",
    "auto_map": "remote-code class names; no remote code is run here",
    "torch_dtype": "the dtype the weights were saved in; the safetensors header gives it and the reader casts",
    "dtype": "transformers 5 name of torch_dtype",
    "use_cache": "the generation KV-cache switch",
    "initializer_range": "random initialisation only",
    "attention_dropout": "dropout acts only in training (any value)",
    "resid_pdrop": "dropout acts only in training (any value)",
    "embd_pdrop": "dropout acts only in training (any value)",
    "bos_token_id": "generation ids; the tokenizer files give BOS/EOS",
    "eos_token_id": "generation ids; the tokenizer files give BOS/EOS",
    "pad_token_id": "padding id; nothing is padded inside a forward pass here",
    "is_llama_config": "nanotron's marker (SmolLM2 files)",
    "transformers.js_config": "transformers.js runtime hints (ONNX kv-cache dtypes)",
}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
UNKNOWN = "unknown keys may change the maths"


def exactly(expected):
    """Equal to `expected` and of its very type (so true does not pass for 1, nor 0 for false)."""
    return lambda value: type(value) is type(expected) and value == expected


def unit_factor(value) -> bool:
    return value is None or (type(value) in (int, float) and value == 1.0)


def default_rope(value) -> bool:
    return value is None or (isinstance(value, dict) and value.get("rope_type", value.get("type")) == "default")


def positive_int(value) -> bool:
    return type(value) is int and value > 0


# The llama-like SUPPORTED_VALUES every llama-like family starts from (key -> (check, what is supported)).
LLAMA_SUPPORTED: dict[str, tuple] = {
    "hidden_act": (exactly("silu"), "expected 'silu': the SwiGLU MLP"),
    "attention_bias": (exactly(False), "expected false: no attention biases"),
    "mlp_bias": (exactly(False), "expected false: no MLP biases"),
    "pretraining_tp": (exactly(1), "expected 1: unsplit projections"),
    "rope_scaling": (default_rope, "expected null: plain RoPE (no linear/dynamic/yarn/longrope/llama3 scaling)"),
    "rope_interleaved": (exactly(False), "expected false: rotate-half RoPE, as transformers runs it"),
    "partial_rotary_factor": (unit_factor, "expected 1.0: RoPE on the whole head"),
    "original_max_position_embeddings": (
        positive_int, "expected a positive int: only long-context RoPE scaling reads it, and that must be off"),
}
# Keys of rope_parameters (transformers 5) of plain RoPE: rope_theta is read, the others must be the plain values.
PLAIN_ROPE_PARAMETERS: dict[str, tuple] = {
    "rope_type": (exactly("default"), "expected 'default': plain RoPE"),
    "rope_theta": (lambda v: True, ""),  # typed by RopeParameters
    "partial_rotary_factor": (unit_factor, "expected 1.0: RoPE on the whole head"),
}
LLAMA_USED_KEYS = frozenset({
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "rms_norm_eps", "max_position_embeddings", "rope_theta", "rope_parameters",
    "tie_word_embeddings", "sliding_window",
})


class HFConfig(Schema):
    """The llama-like config.json keys a config is built from, and the token ids, typed and ranged."""

    model_type: StrictStr
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    rms_norm_eps: PositiveFloat
    max_position_embeddings: PositiveInt
    rope_theta: PositiveFloat | None = None
    rope_parameters: dict | None = None
    tie_word_embeddings: StrictBool = False
    sliding_window: PositiveInt | None = None
    bos_token_id: NonNegativeInt | None = None
    eos_token_id: NonNegativeInt | list[NonNegativeInt] | None = None
    pad_token_id: NonNegativeInt | None = None


class RopeParameters(Schema):
    rope_type: StrictStr = "default"
    rope_theta: PositiveFloat | None = None
    partial_rotary_factor: FiniteFloat | None = None
    factor: FiniteFloat | None = None
    low_freq_factor: FiniteFloat | None = None
    high_freq_factor: FiniteFloat | None = None
    original_max_position_embeddings: PositiveInt | None = None
    short_factor: list[FiniteFloat] | None = None
    long_factor: list[FiniteFloat] | None = None
    attention_factor: FiniteFloat | None = None


def unsupported(source: str, key: str, value: Any, why: str) -> InputError:
    if isinstance(value, dict):  # a RoPE-scaling dict shows its kind first, before the cut at 60 characters
        value = dict(sorted(value.items(), key=lambda item: item[0] not in ("rope_type", "type")))
    return InputError(f"{source}: key {key!r} = {short_repr(value)} is not supported ({why})")


def typed(schema: type[Schema], raw: dict, keys, source: str):
    """`raw`'s `keys` and token ids validated by `schema`; token ids must lie inside vocab_size."""
    cfg = validate(schema, {k: v for k, v in raw.items() if k in keys or k in TOKEN_ID_KEYS}, source)
    vocab = cfg.vocab_size
    for field in ("bos_token_id", "pad_token_id"):
        if getattr(cfg, field, None) is not None and getattr(cfg, field) >= vocab:
            raise InputError(f"{source}: {field} {getattr(cfg, field)} is outside vocab_size {vocab}")
    eos = getattr(cfg, "eos_token_id", None)
    if any(e is not None and e >= vocab for e in (eos if isinstance(eos, list) else [eos])):
        raise InputError(f"{source}: eos_token_id {eos!r:.60} is outside vocab_size {vocab}")
    return cfg


def rope_parameters(cfg, source: str) -> RopeParameters:
    return validate(RopeParameters, cfg.rope_parameters or {}, source, prefix="rope_parameters.")


def rope_theta(cfg, source: str) -> float:
    """RoPE base from either config style (transformers 5 rope_parameters, or top-level rope_theta)."""
    params = rope_parameters(cfg, source)
    if params.rope_theta is not None:
        return params.rope_theta
    if cfg.rope_theta is not None:
        return cfg.rope_theta
    return ROPE_THETA_DEFAULT


def llama_fields(cfg: HFConfig, source: str, architecture: str) -> dict:
    """ModelConfig fields of a llama-like config.json (typed by HFConfig)."""
    n_heads, d_model = cfg.num_attention_heads, cfg.hidden_size
    if cfg.head_dim is None and d_model % n_heads:
        raise InputError(f"{source}: hidden_size {d_model} is not a multiple of num_attention_heads {n_heads}")
    return dict(
        architecture=architecture,
        d_model=d_model,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads if cfg.num_key_value_heads is None else cfg.num_key_value_heads,
        head_dim=d_model // n_heads if cfg.head_dim is None else cfg.head_dim,
        d_ffn=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        rope_base=rope_theta(cfg, source),
        norm_eps=cfg.rms_norm_eps,
        tie_embeddings=cfg.tie_word_embeddings,
        max_context=cfg.max_position_embeddings,
    )


def make_config(source: str, **fields) -> ModelConfig:
    """ModelConfig(**fields), its own checks' errors with the file named."""
    try:
        return ModelConfig(**fields)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error


def renamed(tensors: dict[str, StoredTensor], global_names: dict[str, str], layer_pattern: str,
            layer_names: dict[str, str], source: str, family: str) -> dict[str, StoredTensor]:
    """Tensors renamed to canonical names: globals by `global_names`, per-layer ones matching `layer_pattern` (a regex
    with the layer index as group 1 and the suffix as group 2) by `layer_names` (suffix -> canonical suffix). A name
    in neither is refused (one line) rather than skipped."""
    pattern = re.compile(layer_pattern)
    out = {}
    for name, tensor in tensors.items():
        if name in global_names:
            out[global_names[name]] = tensor
            continue
        match = pattern.match(name)
        if match is None or match[2] not in layer_names:
            raise InputError(f"{source}: unexpected weight {name}: it is not part of a {family} model")
        out[f"model.layers.{int(match[1])}.{layer_names[match[2]]}"] = dataclasses.replace(tensor, name=name)
    return out


def rows(fused: StoredTensor, start: int, stop: int) -> StoredTensor:
    """Rows [start, stop) of a fused tensor, read from the memory map without touching the other rows."""
    return dataclasses.replace(fused, shape=(stop - start, *fused.shape[1:]), read=lambda: fused.read()[start:stop])


def split_rows(tensors: dict[str, StoredTensor], fused_suffix: str, parts: dict[str, int], source: str) -> dict:
    """Every `*.{fused_suffix}` tensor split by rows into `parts` (canonical suffix -> rows, in order); a wrong shape,
    or a part also given as a tensor of its own, is refused naming the tensor as its file names it."""
    out = dict(tensors)
    for name in sorted(tensors):
        if not name.endswith(f".{fused_suffix}"):
            continue
        prefix, fused = name[: -len(fused_suffix) - 1], out.pop(name)
        n_rows = sum(parts.values())
        if len(fused.shape) != 2 or fused.shape[0] != n_rows:
            raise InputError(f"{source}: tensor {fused.name or name} has shape {tuple(fused.shape)}, config expects "
                             f"({n_rows}, {fused.shape[-1] if fused.shape else '...'})")
        start = 0
        for suffix, n in parts.items():
            if f"{prefix}.{suffix}" in out:
                separate = out[f"{prefix}.{suffix}"].name or f"{prefix}.{suffix}"
                raise InputError(f"{source}: tensor {fused.name or name} gives {separate} a second time "
                                 "(fused and separate tensors both present?)")
            out[f"{prefix}.{suffix}"] = rows(fused, start, start + n)
            start += n
    return out


def mapped(tensor: StoredTensor, function) -> StoredTensor:
    """`tensor` read through `function` (same shape), e.g. undoing a row permutation."""
    return dataclasses.replace(tensor, read=lambda: function(tensor.read()))


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's `LlamaModel.permute` (interleaved → HF rotate-half Q/K rows).

    llama.cpp stores each head's rows as (pair, 2) interleaved; HF keeps (2, pair) halves.
    """
    n = weight.shape[0]
    return weight.reshape(n_heads, n // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# llama.cpp's tensor names (gguf.constants.TENSOR_NAMES) -> canonical, shared by the llama-like architectures.
GGUF_GLOBALS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_LAYER = r"^blk\.(\d+)\.(.+)$"
GGUF_LLAMA_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def gguf_llama_fields(keys, tensors: dict, path: pathlib.Path, arch: str) -> dict:
    """ModelConfig fields from the `{arch}.*` keys (gguf_reader.ArchKeys) shared by llama-like architectures."""
    d_model, n_heads = keys.embedding_length, keys.head_count
    if keys.rms_norm_eps is None:  # a LayerNorm epsilon instead (gguf_reader.ArchKeys lets either through)
        raise InputError(f"{path}: field {arch}.attention.layer_norm_rms_epsilon is missing"
                         + (" (layer_norm_epsilon is given: LayerNorm, but this architecture uses RMSNorm)"
                            if keys.layer_norm_eps is not None else ""))
    if keys.parallel_residual:
        raise InputError(f"{path}: {arch}.use_parallel_residual=True is not supported (sequential residual only)")
    # GGUF spec: head_count_kv absent means no grouped-query attention (as many KV heads as heads).
    n_kv_heads = n_heads if keys.head_count_kv is None else keys.head_count_kv
    head_dim = keys.key_length if keys.key_length is not None else None
    if head_dim is None:
        if d_model % n_heads:
            raise InputError(f"{path}: {arch}.embedding_length={d_model} is not a multiple of head_count={n_heads}")
        head_dim = d_model // n_heads
    if keys.value_length is not None and keys.value_length != head_dim:
        raise InputError(f"{path}: {arch}.attention.value_length={keys.value_length} but head_dim={head_dim}; expected equal")
    rope_dims = head_dim if keys.rope_dims is None else keys.rope_dims
    if rope_dims != head_dim:
        raise InputError(f"{path}: {arch}.rope.dimension_count={rope_dims} but head_dim={head_dim}; "
                         "partial rotary embeddings are not supported")
    if "token_embd.weight" not in tensors:
        raise InputError(f"{path}: tensor token_embd.weight is missing")
    vocab_size = int(tensors["token_embd.weight"].shape[-1])  # GGUF order: [d_model, vocab]
    if keys.vocab_size is not None and keys.vocab_size != vocab_size:
        raise InputError(f"{path}: {arch}.vocab_size={keys.vocab_size} but token_embd.weight has {vocab_size} rows")
    return dict(
        architecture=arch, d_model=d_model, n_layers=keys.block_count, n_heads=n_heads, n_kv_heads=n_kv_heads,
        head_dim=head_dim, d_ffn=keys.feed_forward_length, vocab_size=vocab_size, rope_base=keys.rope_base,
        norm_eps=keys.rms_norm_eps, tie_embeddings="output.weight" not in tensors, max_context=keys.context_length,
    )
