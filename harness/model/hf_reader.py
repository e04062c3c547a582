"""Read a Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json) into a Checkpoint.

The directory's `model_type` picks its family (harness.model.families), which names its config keys and tensors; the
files become the canonical layout of harness.model.config, and anything the builder cannot run faithfully is rejected.
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings
from typing import Any

import numpy as np
import tokenizers

from harness.errors import InputError
from harness.model.config import Checkpoint, ModelConfig, StoredTensor, Weights, check_values, check_weights
from harness.model.tokenizer import ChatTokenizer
from harness.model import families
from harness.model.families import Family, common
from harness.validation import MappedTensor, map_safetensors, read_json_object, read_text, short_repr

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def read_hf_dir(path: str | os.PathLike, *, dtype=np.float32) -> Checkpoint:
    """Config, canonical weights (cast to `dtype`) and tokenizer of a Hugging Face directory of a supported family.

    Every tensor the files hold ends up in the canonical layout or raises; nothing is skipped.
    Contract: a bad file or value is one InputError line naming the file and field (config values typed and
    ranged, weights float only). Every config.json key is one the family reads, one that provably does not change
    the maths (those come back in `Checkpoint.ignored_fields`) or one whose value must be the supported one; any
    other key is refused (the family's hf_used_keys, hf_no_effect_keys, hf_supported_values).
    """
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory; expected a Hugging Face checkpoint directory")
    dtype = _float_dtype(dtype)
    raw = _read_json(directory / CONFIG_FILE)
    config = model_config_from_hf(raw, source=str(directory / CONFIG_FILE))
    buffers = families.families()[config.architecture].hf_buffers
    stored, weights_source = read_safetensors_dir(directory, buffers=buffers)
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
    """The keys of a config.json that provably do not change the maths (the family's no-effect keys), sorted: the
    report lists them."""
    family = families.for_hf(raw.get("model_type"), CONFIG_FILE)
    return tuple(sorted(key for key in raw if key in family.hf_no_effect_keys))


def check_config_keys(raw: dict[str, Any], source: str, family: Family) -> None:
    """Refuse any key the family neither reads, knows to change nothing, nor supports in one form; and any such
    supported-value key (or rope_parameters key) whose value differs."""
    unknown = [key for key in raw if key not in family.hf_known_keys]
    if unknown:
        more = f"; {len(unknown)} unknown keys in all" if len(unknown) > 1 else ""
        why = f"this harness runs {family.name} maths as harness.model.families.{family.name} says; {common.UNKNOWN}"
        raise common.unsupported(source, unknown[0], raw[unknown[0]], why + more)
    for key, (supported, why) in family.hf_supported_values.items():
        if key in raw and not supported(raw[key]):
            raise common.unsupported(source, key, raw[key], why)
    parameters = raw.get("rope_parameters")
    rope_keys = family.hf_rope_parameters or common.PLAIN_ROPE_PARAMETERS
    for key, value in (parameters.items() if isinstance(parameters, dict) else ()):
        supported, why = rope_keys.get(key, (None, common.UNKNOWN))
        if supported is None or not supported(value):
            raise common.unsupported(source, f"rope_parameters.{key}", value, why)


def model_config_from_hf(raw: dict[str, Any], *, source: str) -> ModelConfig:
    """ModelConfig from a parsed config.json; InputError for any key or value the builder does not run faithfully."""
    family = families.for_hf(raw.get("model_type") if isinstance(raw, dict) else None, source)
    check_config_keys(raw, source, family)
    return family.config_from_hf(raw, source)


def read_safetensors_dir(directory: pathlib.Path, *, buffers: tuple[str, ...] = ()) -> tuple[dict[str, MappedTensor], str]:
    """Where all tensors lie in a directory's model.safetensors, or of every shard its index lists, and that source.
    Tensors whose names fullmatch a regex of `buffers` (the family's no-effect buffers) may be of any dtype."""
    index_path = directory / INDEX_FILE
    if index_path.exists():
        return _read_sharded(index_path, buffers), str(index_path)
    single = directory / SINGLE_WEIGHTS_FILE
    if single.exists():
        return _read_safetensors_file(single, buffers), str(single)
    found = sorted(p.name for p in directory.glob("*.safetensors"))
    raise InputError(
        f"{directory}: no {SINGLE_WEIGHTS_FILE} or {INDEX_FILE}"
        + (f" (found {len(found)} other .safetensors files, e.g. {found[0]}, but no index)" if found else "")
    )


def _read_sharded(index_path: pathlib.Path, buffers: tuple[str, ...] = ()) -> dict[str, MappedTensor]:
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
        shard_tensors = _read_safetensors_file(shard_path, buffers)
        missing = sorted(by_shard[shard] - set(shard_tensors))
        if missing:
            raise InputError(f"{shard_path}: tensor {missing[0]} listed in {INDEX_FILE} is missing ({len(missing)} in all)")
        unlisted = sorted(set(shard_tensors) - by_shard[shard])
        if unlisted:
            raise InputError(f"{shard_path}: tensor {unlisted[0]} is not listed for this shard in {INDEX_FILE}")
        tensors |= shard_tensors
    return tensors


def _read_safetensors_file(path: pathlib.Path, buffers: tuple[str, ...] = ()) -> dict[str, MappedTensor]:
    """Where every tensor of one weights file lies, dtypes as stored (bf16 kept); a non-float tensor is refused
    unless it is one of the family's `buffers` (a bool causal mask, dropped by the family)."""
    tensors = map_safetensors(path, expected="a safetensors weights file")
    for name, array in tensors.items():
        buffer = any(re.fullmatch(pattern, name) for pattern in buffers)
        if array.dtype.name not in FLOAT_DTYPES and not buffer:  # e.g. F32 bits relabelled I32: not weights
            raise InputError(f"{path}: tensor {name} has dtype {array.dtype.name}, expected a float dtype {FLOAT_DTYPES}")
    return tensors


def canonical_weights(
    stored: dict[str, MappedTensor], config: ModelConfig, *, source: str, dtype=np.float32
) -> Weights:
    """Stored HF tensors (memory maps) → canonical names read as `dtype`, as the config's family names and fuses them;
    a tied lm_head (equal to the embedding) dropped."""
    dtype = _float_dtype(dtype)
    tensors = {name: StoredTensor(shape=a.shape, file=str(a.path), read=a.read) for name, a in stored.items()}
    tensors = families.families()[config.architecture].weights_from_hf(tensors, config, source)
    if config.tie_embeddings and "lm_head.weight" in tensors:
        embed = tensors.get("model.embed_tokens.weight")
        if embed is None or not np.array_equal(tensors["lm_head.weight"].read(), embed.read()):
            raise InputError(
                f"{source}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
            )
        del tensors["lm_head.weight"]
    return Weights(tensors, dtype=dtype, source=source)


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
