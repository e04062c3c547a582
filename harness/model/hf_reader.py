"""Read a Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json) into a Checkpoint.

Llama and Phi-3 directories become the canonical layout of harness.model.config (Phi-3's fused
qkv_proj / gate_up_proj are split); anything the builder cannot run faithfully is rejected.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import numpy as np
import tokenizers

from harness.errors import InputError
from harness.model.config import Checkpoint, ModelConfig, StoredTensor, Weights, check_values, check_weights
from harness.model.tokenizer import ChatTokenizer
from harness.validation import (FiniteFloat, NonNegativeInt, PositiveFloat, PositiveInt, Schema, StrictBool, StrictStr,
                                MappedTensor, read_json_object, map_safetensors, read_text, short_repr, validate)

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Hugging Face's own class defaults (LlamaConfig / Phi3Config) for fields a config.json may omit.
_ROPE_THETA_DEFAULT = 10000.0
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------------------------- config.json keys
# As penzai's converters do (llama_from_huggingface_model refuses every config attribute that differs from the
# defaults it supports), each key of config.json is in one of three lists and any other key is refused: a key that a
# new transformers release or a new variant adds may change the maths, so it is never skipped silently.

# (a) Read by the builder: each becomes (part of) a ModelConfig field, typed and ranged by HFConfig.
USED_KEYS = frozenset({
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "rms_norm_eps", "max_position_embeddings", "rope_theta", "rope_parameters",
    "tie_word_embeddings", "sliding_window",  # sliding_window: Phi-3's attention window; null for llama
})

# (b) Provably no effect on the forward maths: names, bookkeeping, training-only and generation-only settings.
# Any value is accepted (the token ids alone are still checked to be ids inside vocab_size); the ones present are
# listed in Checkpoint.ignored_fields.
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
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _exactly(expected):
    """Equal to `expected` and of its very type (so true does not pass for 1, nor 0 for false)."""
    return lambda value: type(value) is type(expected) and value == expected


def _unit_factor(value) -> bool:
    return value is None or (type(value) in (int, float) and value == 1.0)


def _default_rope(value) -> bool:
    return value is None or (isinstance(value, dict) and value.get("rope_type", value.get("type")) == "default")


# (c) Settings the model code supports in one form only: the value must be that form (key → (check, what is supported)).
SUPPORTED_VALUES: dict[str, tuple] = {
    "hidden_act": (_exactly("silu"), "expected 'silu': the SwiGLU MLP"),
    "attention_bias": (_exactly(False), "expected false: no attention biases"),
    "mlp_bias": (_exactly(False), "expected false: no MLP biases"),
    "pretraining_tp": (_exactly(1), "expected 1: unsplit projections"),
    "rope_scaling": (_default_rope, "expected null: plain RoPE (no linear/dynamic/yarn/longrope/llama3 scaling)"),
    "rope_interleaved": (_exactly(False), "expected false: rotate-half RoPE, as transformers runs it"),
    "partial_rotary_factor": (_unit_factor, "expected 1.0: RoPE on the whole head"),
    "original_max_position_embeddings": (
        lambda v: type(v) is int and v > 0,
        "expected a positive int: only long-context RoPE scaling reads it, and that must be off"),
}
# Keys of rope_parameters (transformers 5): rope_theta is read, the others must be the plain-RoPE values.
_ROPE_PARAMETER_VALUES: dict[str, tuple] = {
    "rope_type": (_exactly("default"), "expected 'default': plain RoPE"),
    "rope_theta": (lambda v: True, ""),  # typed by RopeParameters
    "partial_rotary_factor": (_unit_factor, "expected 1.0: RoPE on the whole head"),
}
_UNKNOWN = "this harness runs Llama/Phi-3 maths; unknown keys may change it"


class HFConfig(Schema):
    """The config.json keys the builder reads (USED_KEYS) and the token ids, typed and ranged."""

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


def read_hf_dir(path: str | os.PathLike, *, dtype=np.float32) -> Checkpoint:
    """Config, canonical weights (cast to `dtype`) and tokenizer of a Llama or Phi-3 HF directory.

    Every tensor the files hold ends up in the canonical layout or raises; nothing is skipped.
    Contract: a bad file or value is one InputError line naming the file and field (config values typed and
    ranged, weights float only). Every config.json key is one the builder reads, one that provably does not change
    the maths (those come back in `Checkpoint.ignored_fields`) or one whose value must be the supported one; any
    other key is refused (see USED_KEYS, NO_EFFECT_KEYS, SUPPORTED_VALUES).
    """
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory; expected a Hugging Face checkpoint directory")
    dtype = _float_dtype(dtype)
    raw = _read_json(directory / CONFIG_FILE)
    config = model_config_from_hf(raw, source=str(directory / CONFIG_FILE))
    stored, weights_source = read_safetensors_dir(directory)
    weights = canonical_weights(stored, config, source=weights_source, dtype=dtype)
    check_weights(config, weights)
    check_values(weights)
    tokenizer = read_hf_tokenizer(directory, vocab_size=config.vocab_size)
    ignored = ignored_config_keys(raw)
    return Checkpoint(config=config, weights=weights, tokenizer=tokenizer, source=str(directory), ignored_fields=ignored)


def resolve_hf_cache(model_id: str) -> pathlib.Path:
    """The local snapshot directory of `model_id` in the Hugging Face cache; never downloads.

    The cache directory is read from HF_HUB_CACHE / HF_HOME / XDG_CACHE_HOME at call time.
    """
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache_dir = hf_cache_dir()
    try:
        snapshot = huggingface_hub.snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as error:
        raise InputError(
            f"model id {model_id!r} is not in the local Hugging Face cache ({cache_dir}); "
            f"pass a directory or .gguf path ({type(error).__name__})"
        ) from error
    return pathlib.Path(snapshot)


def hf_cache_dir() -> pathlib.Path:
    """The hub cache directory as huggingface_hub computes it, but from the environment *now*."""
    if os.environ.get("HF_HUB_CACHE"):
        return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return pathlib.Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(xdg).expanduser() / "huggingface" / "hub"


def ignored_config_keys(raw: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a config.json that provably do not change the maths (NO_EFFECT_KEYS), sorted: the report lists them."""
    return tuple(sorted(key for key in raw if key in NO_EFFECT_KEYS))


def _unsupported(source: str, key: str, value: Any, why: str) -> InputError:
    if isinstance(value, dict):  # a RoPE-scaling dict shows its kind first, before the cut at 60 characters
        value = dict(sorted(value.items(), key=lambda item: item[0] not in ("rope_type", "type")))
    return InputError(f"{source}: key {key!r} = {short_repr(value)} is not supported ({why})")


def check_config_keys(raw: dict[str, Any], source: str) -> None:
    """Refuse any key outside USED_KEYS / NO_EFFECT_KEYS / SUPPORTED_VALUES, and any SUPPORTED_VALUES key that differs."""
    known = USED_KEYS | NO_EFFECT_KEYS.keys() | SUPPORTED_VALUES.keys()
    unknown = [key for key in raw if key not in known]
    if unknown:
        more = f"; {len(unknown)} unknown keys in all" if len(unknown) > 1 else ""
        raise _unsupported(source, unknown[0], raw[unknown[0]], _UNKNOWN + more)
    for key, (supported, why) in SUPPORTED_VALUES.items():
        if key in raw and not supported(raw[key]):
            raise _unsupported(source, key, raw[key], why)
    parameters = raw.get("rope_parameters")
    for key, value in (parameters.items() if isinstance(parameters, dict) else ()):
        supported, why = _ROPE_PARAMETER_VALUES.get(key, (None, _UNKNOWN))
        if supported is None or not supported(value):
            raise _unsupported(source, f"rope_parameters.{key}", value, why)


def model_config_from_hf(raw: dict[str, Any], *, source: str) -> ModelConfig:
    """ModelConfig from a parsed config.json; InputError for any key or value the builder does not run faithfully."""
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in ("llama", "phi3"):
        raise InputError(f"{source}: model_type {short_repr(model_type)} is not supported; expected 'llama' or 'phi3'")
    check_config_keys(raw, source)
    cfg = validate(HFConfig, {k: v for k, v in raw.items() if k in USED_KEYS or k in _TOKEN_ID_KEYS}, source)
    n_heads, d_model = cfg.num_attention_heads, cfg.hidden_size
    if cfg.head_dim is None and d_model % n_heads:
        raise InputError(f"{source}: hidden_size {d_model} is not a multiple of num_attention_heads {n_heads}")
    if model_type == "llama" and cfg.sliding_window is not None:
        raise _unsupported(source, "sliding_window", cfg.sliding_window, "expected null for llama: full causal attention")
    for field in ("bos_token_id", "pad_token_id"):
        if getattr(cfg, field) is not None and getattr(cfg, field) >= cfg.vocab_size:
            raise InputError(f"{source}: {field} {getattr(cfg, field)} is outside vocab_size {cfg.vocab_size}")
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    if any(e is not None and e >= cfg.vocab_size for e in eos):
        raise InputError(f"{source}: eos_token_id {cfg.eos_token_id!r:.60} is outside vocab_size {cfg.vocab_size}")
    fields = dict(
        architecture=model_type,
        d_model=d_model,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads if cfg.num_key_value_heads is None else cfg.num_key_value_heads,
        head_dim=d_model // n_heads if cfg.head_dim is None else cfg.head_dim,
        d_ffn=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        rope_base=_rope_theta(cfg, source),
        rms_norm_eps=cfg.rms_norm_eps,
        tie_embeddings=cfg.tie_word_embeddings,
        max_context=cfg.max_position_embeddings,
        sliding_window=cfg.sliding_window,
    )
    try:
        return ModelConfig(**fields)
    except InputError as error:  # ModelConfig's own checks, with the file named
        raise InputError(f"{source}: {error}") from error


def _rope_theta(cfg: HFConfig, source: str) -> float:
    """RoPE base from either config style (transformers 5 rope_parameters, or top-level rope_theta).

    check_config_keys has already refused RoPE scaling and partial rotary factors; this types rope_parameters.
    """
    params = validate(RopeParameters, cfg.rope_parameters or {}, source, prefix="rope_parameters.")
    if params.rope_theta is not None:
        return params.rope_theta
    if cfg.rope_theta is not None:
        return cfg.rope_theta
    return _ROPE_THETA_DEFAULT


def read_safetensors_dir(directory: pathlib.Path) -> tuple[dict[str, MappedTensor], str]:
    """Where all tensors lie in a directory's model.safetensors, or of every shard its index lists, and that source."""
    index_path = directory / INDEX_FILE
    if index_path.exists():
        return _read_sharded(index_path), str(index_path)
    single = directory / SINGLE_WEIGHTS_FILE
    if single.exists():
        return _read_safetensors_file(single), str(single)
    found = sorted(p.name for p in directory.glob("*.safetensors"))
    raise InputError(
        f"{directory}: no {SINGLE_WEIGHTS_FILE} or {INDEX_FILE}"
        + (f" (found {len(found)} other .safetensors files, e.g. {found[0]}, but no index)" if found else "")
    )


def _read_sharded(index_path: pathlib.Path) -> dict[str, MappedTensor]:
    """Tensors of every shard an index lists; each shard must hold exactly the tensors mapped to it."""
    index = _read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index_path}: field 'weight_map' is missing or empty; expected tensor → shard file")
    bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v), None)
    if bad is not None:
        raise InputError(f"{index_path}: weight_map[{bad[0]!r:.60}] = {short_repr(bad[1])}; expected a shard file name")
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    for shard in sorted(by_shard):
        if not (index_path.parent / shard).is_file():
            raise InputError(f"{index_path}: shard {shard!r} (holding {len(by_shard[shard])} tensors) does not exist")
    tensors: dict[str, MappedTensor] = {}
    for shard in sorted(by_shard):
        shard_path = index_path.parent / shard
        shard_tensors = _read_safetensors_file(shard_path)
        missing = sorted(by_shard[shard] - set(shard_tensors))
        if missing:
            raise InputError(f"{shard_path}: tensor {missing[0]} listed in {INDEX_FILE} is missing ({len(missing)} in all)")
        unlisted = sorted(set(shard_tensors) - by_shard[shard])
        if unlisted:
            raise InputError(f"{shard_path}: tensor {unlisted[0]} is not listed for this shard in {INDEX_FILE}")
        tensors |= shard_tensors
    return tensors


def _read_safetensors_file(path: pathlib.Path) -> dict[str, MappedTensor]:
    """Where every tensor of one weights file lies, dtypes as stored (bf16 kept); a non-float tensor is refused."""
    tensors = map_safetensors(path, expected="a safetensors weights file")
    for name, array in tensors.items():
        if array.dtype.name not in FLOAT_DTYPES:  # e.g. F32 bits relabelled I32: not weights
            raise InputError(f"{path}: tensor {name} has dtype {array.dtype.name}, expected a float dtype {FLOAT_DTYPES}")
    return tensors


def canonical_weights(
    stored: dict[str, MappedTensor], config: ModelConfig, *, source: str, dtype=np.float32
) -> Weights:
    """Stored HF tensors (memory maps) → canonical names read as `dtype`: Phi-3 fused tensors split, tied lm_head dropped."""
    dtype = _float_dtype(dtype)
    tensors = {name: _on_disk(array, source) for name, array in stored.items()}
    if config.architecture == "phi3":
        tensors = _split_phi3(tensors, config, source)
    if config.tie_embeddings and "lm_head.weight" in tensors:
        embed = tensors.get("model.embed_tokens.weight")
        if embed is None or not np.array_equal(tensors["lm_head.weight"].read(), embed.read()):
            raise InputError(
                f"{source}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
            )
        del tensors["lm_head.weight"]
    return Weights(tensors, dtype=dtype, source=source)


def _on_disk(mapped: MappedTensor, source: str) -> StoredTensor:
    return StoredTensor(shape=mapped.shape, file=str(mapped.path), read=mapped.read)


def _rows(fused: StoredTensor, start: int, stop: int) -> StoredTensor:
    """Rows [start, stop) of a fused tensor, read from the memory map without touching the other rows."""
    return StoredTensor(shape=(stop - start, *fused.shape[1:]), file=fused.file, read=lambda: fused.read()[start:stop])


def _split_phi3(tensors: dict[str, StoredTensor], config: ModelConfig, source: str) -> dict[str, StoredTensor]:
    """Split qkv_proj rows into [q; k; v] and gate_up_proj rows into [gate; up] for every layer."""
    q_rows, kv_rows, f = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim, config.d_ffn
    out = dict(tensors)
    for name in sorted(tensors):
        prefix, _, leaf = name.rpartition(".self_attn.qkv_proj.")
        if leaf == "weight":
            fused = out.pop(name)
            _check_rows(fused.shape, q_rows + 2 * kv_rows, name, source)
            bounds = (0, q_rows, q_rows + kv_rows, q_rows + 2 * kv_rows)
            out |= {f"{prefix}.self_attn.{p}_proj.weight": _rows(fused, *bounds[i:i + 2]) for i, p in enumerate("qkv")}
        prefix, _, leaf = name.rpartition(".mlp.gate_up_proj.")
        if leaf == "weight":
            fused = out.pop(name)
            _check_rows(fused.shape, 2 * f, name, source)
            out |= {f"{prefix}.mlp.gate_proj.weight": _rows(fused, 0, f), f"{prefix}.mlp.up_proj.weight": _rows(fused, f, 2 * f)}
    return out


def _check_rows(shape: tuple[int, ...], rows: int, name: str, source: str) -> None:
    if len(shape) != 2 or shape[0] != rows:
        raise InputError(f"{source}: weight {name} has shape {tuple(shape)}, config expects ({rows}, d_model)")


def read_hf_tokenizer(directory: pathlib.Path, *, vocab_size: int | None = None) -> ChatTokenizer:
    """tokenizer.json wrapped with the chat template and BOS/EOS of tokenizer_config.json (+ chat_template.jinja).

    add_bos: tokenizer_config's add_bos_token if present, else whether tokenizer.json's post-processor adds BOS.
    """
    tokenizer_path = directory / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise InputError(f"{tokenizer_path}: file is missing; expected the tokenizers-library tokenizer.json")
    text = read_text(tokenizer_path, expected="a UTF-8 tokenizer.json")
    try:
        tokenizer = tokenizers.Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a bare Exception for unparsable files
        raise InputError(f"{tokenizer_path}: not a readable tokenizer.json ({' '.join(str(error).split())})") from error
    config_path = directory / TOKENIZER_CONFIG_FILE
    config = _read_json(config_path) if config_path.is_file() else {}
    added_bos, appended = _post_processor_additions(tokenizer, tokenizer_path)
    if appended:
        raise InputError(
            f"{tokenizer_path}: post_processor appends {appended!r} after the text; only a leading BOS is supported"
        )
    for flag in ("add_bos_token", "add_eos_token"):
        if config.get(flag) is not None and not isinstance(config.get(flag), bool):
            raise InputError(f"{config_path}: {flag} is {short_repr(config.get(flag))}; expected true or false")
    if config.get("add_eos_token"):
        raise InputError(f"{config_path}: add_eos_token is true; only a leading BOS is supported (expected false)")
    bos_token = _token_content(config.get("bos_token"), config_path, "bos_token") or added_bos
    eos_token = _token_content(config.get("eos_token"), config_path, "eos_token")
    if added_bos is not None and bos_token != added_bos:
        raise InputError(f"{tokenizer_path}: post_processor prepends {added_bos!r} but bos_token is {bos_token!r}")
    add_bos = _add_bos(config.get("add_bos_token"), added_bos is not None, config_path)
    for field, token in (("bos_token", bos_token), ("eos_token", eos_token)):
        if token is not None and tokenizer.token_to_id(token) is None:
            raise InputError(f"{config_path}: {field} {token!r} is not in the vocabulary of {TOKENIZER_FILE}")
    if add_bos and bos_token is None:
        raise InputError(f"{config_path}: add_bos_token is true but no bos_token is given")
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if vocab_size is not None and largest >= vocab_size:
        raise InputError(f"{tokenizer_path}: token id {largest} is outside the model's vocab_size {vocab_size} ({CONFIG_FILE})")
    return ChatTokenizer(
        tokenizer=tokenizer,
        chat_template=_chat_template(directory, config, config_path),
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos=add_bos,
        source=str(tokenizer_path),
    )


def _post_processor_additions(tokenizer: tokenizers.Tokenizer, path: pathlib.Path) -> tuple[str | None, list[str]]:
    """(token the post-processor prepends or None, tokens it appends), found by encoding a probe both ways."""
    probe = "a"
    try:  # a broken model section (e.g. a WordLevel vocabulary without its unk token) fails here, not mid-run
        tokenizer.encode("Hello, world 123 é 東 🙂\n", add_special_tokens=True)
        plain = tokenizer.encode(probe, add_special_tokens=False).tokens
        full = tokenizer.encode(probe, add_special_tokens=True).tokens
    except Exception as error:  # tokenizers raises a bare Exception
        raise InputError(f"{path}: the tokenizer cannot encode a probe text ({' '.join(str(error).split())[:150]})") from None
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None:
        raise InputError(f"{path}: post_processor changes the text's own tokens; expected it to only add specials")
    prefix, suffix = full[:start], full[start + len(plain):]
    if len(prefix) > 1:
        raise InputError(f"{path}: post_processor prepends {len(prefix)} tokens {prefix!r}; expected at most a BOS")
    return (prefix[0] if prefix else None), suffix


def _add_bos(configured: Any, post_processor_adds: bool, config_path: pathlib.Path) -> bool:
    """The explicit add_bos_token wins (the authors' stated intent); say so when tokenizer.json disagrees."""
    if configured is None:
        return post_processor_adds
    if not isinstance(configured, bool):
        raise InputError(f"{config_path}: add_bos_token is {configured!r}; expected true or false")
    if configured != post_processor_adds:
        warnings.warn(
            f"{config_path}: add_bos_token={configured} overrides tokenizer.json's post_processor "
            f"(which {'adds' if post_processor_adds else 'does not add'} BOS); transformers 5 follows the post_processor",
            stacklevel=3,
        )
    return configured


def _token_content(value: Any, path: pathlib.Path, field: str) -> str | None:
    """A special token given as a string or as a serialized AddedToken ({"content": ...})."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise InputError(f"{path}: {field} is {value!r}; expected a string or an object with 'content'")


def _chat_template(directory: pathlib.Path, config: dict[str, Any], config_path: pathlib.Path) -> str | None:
    """chat_template.jinja if present (it takes priority, as in transformers), else tokenizer_config's."""
    jinja_path = directory / CHAT_TEMPLATE_FILE
    if jinja_path.exists() or jinja_path.is_symlink():
        return read_text(jinja_path, expected="a UTF-8 chat template")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise InputError(f"{config_path}: chat_template lists {sorted(map(str, named))} but no 'default'")
    raise InputError(f"{config_path}: chat_template is {type(template).__name__}; expected a string")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: file is missing")
    return read_json_object(path)


def _float_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise InputError(f"dtype {dtype!r} is not a numpy dtype; expected a float dtype") from error
    if resolved.kind != "f" and resolved.name != "bfloat16":
        raise InputError(f"dtype {resolved.name!r} is not a float dtype; expected e.g. float32")
    return resolved
