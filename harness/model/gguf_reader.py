"""Read a llama.cpp GGUF file into the canonical checkpoint (config, canonical weights, tokenizer).

The `gguf` package parses the file and dequantizes; this module types llama.cpp's metadata keys and builds the
tokenizer, and `general.architecture` picks the family (harness.model.families) that maps the keys onto `ModelConfig`
and the tensor names onto the canonical layout (undoing llama's Q/K row permutation, splitting fused tensors).
Anything it cannot map raises a one-line InputError.
"""

from __future__ import annotations

import os
import pathlib
import re

import gguf
import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from pydantic import Field

from harness.errors import InputError
from harness.model import families
from harness.model.config import Checkpoint, ModelConfig, StoredTensor, Weights, check_values, check_weights
from harness.model.tokenizer import ChatTokenizer
from harness.validation import MappedTensor, FiniteFloat, NonNegativeInt, PositiveFloat, PositiveInt, Schema, StrictBool, StrictStr, validate

Q = gguf.GGMLQuantizationType

# Tensor types dequantized by gguf.quants. The tests check the 32-wide ones against gguf.quants.quantize round trips
# and the 256-wide K-quants (Q4_K_M files mix Q4_K, Q6_K, Q5_0 and Q8_0), which gguf cannot quantize, against
# ggml's dequantize_row_q*_K written out element by element.
SUPPORTED_TENSOR_TYPES: frozenset[Q] = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
)

# llama.cpp token types (gguf.TokenType): 3 CONTROL and 4 USER_DEFINED are matched whole in text.
_CONTROL, _USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
PHI3_KEEP_WHITESPACE = ("<unk>", "<s>", "<|endoftext|>")  # phi3 special tokens without llama.cpp's RSTRIP
# Gemma's SentencePiece vocabularies, read as transformers' GGUF loader reads them (gguf_tokenizer_mapping.py,
# gemma_tokenizer): space-run tokens respelled "▁▁..", merges ranked by vocabulary position (see read_tokenizer).
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")

_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")

# `tokenizer.ggml.pre` → how a byte-level vocabulary splits text before BPE (llama.cpp llama-vocab.cpp).
# ByteLevel's own regex is GPT-2's; "smollm" first isolates every digit (llama.cpp's "\p{N}" rule).
_BYTE_LEVEL_PRE = {
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),  # convert_hf_to_gguf's name
    # Qwen2's split (its tokenizer.json, llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2, transformers' GGUF loader), then bytes.
    # No NFC normaliser: llama.cpp and transformers' GGUF loader have none (Qwen2's own tokenizer.json does).
    "qwen2": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]),
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
}

_MISSING = object()


class ArchKeys(Schema):
    """The `{arch}.*` keys, read with the prefix removed: typed, ranged; keys that change the maths are checked."""

    block_count: PositiveInt
    context_length: PositiveInt
    embedding_length: PositiveInt
    feed_forward_length: PositiveInt
    head_count: PositiveInt = Field(alias="attention.head_count")
    head_count_kv: PositiveInt | None = Field(None, alias="attention.head_count_kv")
    # RMSNorm architectures give layer_norm_rms_epsilon, LayerNorm ones (gpt2, gptneox) layer_norm_epsilon: each
    # family requires its own (families.common.gguf_llama_fields, families.gpt2.gguf_layer_norm_fields)
    rms_norm_eps: PositiveFloat | None = Field(None, alias="attention.layer_norm_rms_epsilon")
    layer_norm_eps: PositiveFloat | None = Field(None, alias="attention.layer_norm_epsilon")
    parallel_residual: StrictBool | None = Field(None, alias="use_parallel_residual")  # gptneox reads it
    rope_base: PositiveFloat = Field(10000.0, alias="rope.freq_base")
    rope_dims: PositiveInt | None = Field(None, alias="rope.dimension_count")
    vocab_size: PositiveInt | None = None
    sliding_window: PositiveInt | None = Field(None, alias="attention.sliding_window")
    key_length: PositiveInt | None = Field(None, alias="attention.key_length")
    value_length: PositiveInt | None = Field(None, alias="attention.value_length")
    original_context_length: PositiveInt | None = Field(None, alias="rope.scaling.original_context_length")
    # Present in some files; any value other than "no effect" changes the maths and is refused below.
    rope_scaling_type: StrictStr | None = Field(None, alias="rope.scaling.type")
    rope_scaling_factor: FiniteFloat | None = Field(None, alias="rope.scaling.factor")
    rope_scaling_attn_factor: FiniteFloat | None = Field(None, alias="rope.scaling.attn_factor")
    logit_scale: FiniteFloat | None = None
    expert_count: NonNegativeInt | None = None
    clamp_kqv: FiniteFloat | None = Field(None, alias="attention.clamp_kqv")
    # Read by the Gemma families only (refused below for the others): soft caps, the sliding layers' RoPE base.
    attn_softcap: PositiveFloat | None = Field(None, alias="attn_logit_softcapping")
    final_softcap: PositiveFloat | None = Field(None, alias="final_logit_softcapping")
    rope_base_swa: PositiveFloat | None = Field(None, alias="rope.freq_base_swa")


class TokenizerKeys(Schema):
    """The `tokenizer.*` keys: token strings, ids inside the vocabulary (checked after), booleans that are booleans."""

    model: StrictStr = Field(alias="ggml.model")
    pre: StrictStr | None = Field(None, alias="ggml.pre")
    tokens: list[StrictStr] = Field(alias="ggml.tokens", min_length=1)
    token_type: list[int] | None = Field(None, alias="ggml.token_type")
    scores: list[FiniteFloat] | None = Field(None, alias="ggml.scores")
    merges: list[StrictStr] | None = Field(None, alias="ggml.merges")
    bos_token_id: NonNegativeInt | None = Field(None, alias="ggml.bos_token_id")
    eos_token_id: NonNegativeInt | None = Field(None, alias="ggml.eos_token_id")
    unknown_token_id: NonNegativeInt | None = Field(None, alias="ggml.unknown_token_id")
    padding_token_id: NonNegativeInt | None = Field(None, alias="ggml.padding_token_id")
    separator_token_id: NonNegativeInt | None = Field(None, alias="ggml.seperator_token_id")
    add_bos_token: StrictBool | None = Field(None, alias="ggml.add_bos_token")
    add_eos_token: StrictBool | None = Field(None, alias="ggml.add_eos_token")
    add_space_prefix: StrictBool | None = Field(None, alias="ggml.add_space_prefix")
    chat_template: StrictStr | None = None

    def read_keys(self) -> set[str]:
        return {f.alias or name for name, f in type(self).model_fields.items()}


_ID_KEYS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "separator_token_id")


def metadata_values(reader: gguf.GGUFReader, path: pathlib.Path) -> dict:
    """Every metadata key's value (str, number, bool or list), read once; an unreadable value names its key."""
    values = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            values[key] = field.contents()
        except Exception as error:  # gguf raises assorted types on corrupt values; name the key
            raise InputError(f"{path}: metadata key {key} is unreadable ({_one_line(error)})") from error
    return values


def _section(values: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


def arch_keys(values: dict, path: pathlib.Path, arch: str) -> ArchKeys:
    """The validated `{arch}.*` keys; an unsupported variant (RoPE scaling, LayerNorm, experts, ...) is an InputError."""
    keys = validate(ArchKeys, _section(values, f"{arch}."), str(path), prefix=f"{arch}.")
    gemma = arch in GEMMA_ARCHITECTURES  # families.gemma2 / gemma3 read soft caps, rope.freq_base_swa, linear scaling
    linear = gemma and keys.rope_scaling_type == "linear"
    refused = {
        "rope.scaling.type": keys.rope_scaling_type not in (None, "none") and not linear,
        "rope.scaling.factor": keys.rope_scaling_factor not in (None, 1.0, 0.0) and not linear,
        "attn_logit_softcapping": keys.attn_softcap is not None and not gemma,
        "final_logit_softcapping": keys.final_softcap is not None and not gemma,
        "rope.freq_base_swa": keys.rope_base_swa not in (None, keys.rope_base) and not gemma,
        "rope.scaling.attn_factor": keys.rope_scaling_attn_factor not in (None, 1.0),
        "attention.layer_norm_epsilon": keys.layer_norm_eps is not None and keys.rms_norm_eps is not None,
        "logit_scale": keys.logit_scale not in (None, 1.0),
        "expert_count": keys.expert_count not in (None, 0),
        "attention.clamp_kqv": keys.clamp_kqv is not None,
    }
    for name, bad in refused.items():
        if bad:
            value = values[f"{arch}.{name}"]
            raise InputError(f"{path}: {arch}.{name}={value!r} changes the model's maths and is not supported")
    return keys


def ignored_keys(values: dict, arch: str) -> tuple[str, ...]:
    """Keys neither schema reads (general.* excepted: file bookkeeping), for the report."""
    arch_read = {f"{arch}.{f.alias or name}" for name, f in ArchKeys.model_fields.items()}
    tok_read = {f"tokenizer.{f.alias or name}" for name, f in TokenizerKeys.model_fields.items()}
    return tuple(sorted(k for k in values if not k.startswith("general.") and k not in arch_read | tok_read))


def read_gguf(path: str | os.PathLike, *, dtype=np.float32) -> Checkpoint:
    """Config, canonical weights (as `dtype`) and tokenizer of the GGUF file at `path`.

    Contract: a bad file or value is one InputError line naming the file and key; keys that change the maths but
    are not supported are errors; harmless unknown keys come back in `Checkpoint.ignored_fields`.
    """
    path = pathlib.Path(path)
    reader = open_gguf(path)
    tensors = {t.name: t for t in reader.tensors}
    values = metadata_values(reader, path)
    config = read_config(reader, path, tensors, values=values)
    weights = read_weights(config, tensors, path, dtype=dtype)
    check_weights(config, weights)
    check_values(weights)
    tokenizer = read_tokenizer(reader, path, values=values)
    if tokenizer.vocab_size > config.vocab_size:
        raise InputError(
            f"{path}: tokenizer.ggml.tokens has {tokenizer.vocab_size} tokens, "
            f"more than the {config.vocab_size} rows of token_embd.weight"
        )
    ignored = ignored_keys(values, values["general.architecture"])  # the file's name: a family may differ (gptneox)
    return Checkpoint(config=config, weights=weights, tokenizer=tokenizer, source=str(path), ignored_fields=ignored)


def open_gguf(path: pathlib.Path) -> gguf.GGUFReader:
    """A GGUFReader on `path`; a missing, truncated or corrupt file raises a one-line InputError."""
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a broken symlink or symlink loop" if path.is_symlink() else "no such GGUF file"
        raise InputError(f"{path}: {kind}" + ("" if kind == "no such GGUF file" else ", expected a GGUF file"))
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as error:  # the reader raises ValueError, KeyError, IndexError, ... on bad bytes
        raise InputError(f"{path}: not a readable GGUF file, truncated or corrupt ({_one_line(error)})") from error


def read_config(reader: gguf.GGUFReader, path: pathlib.Path, tensors: dict, *, values: dict | None = None) -> ModelConfig:
    """ModelConfig from the `{arch}.*` metadata keys, as the architecture's family reads them; vocab size from
    token_embd.weight's rows."""
    values = metadata_values(reader, path) if values is None else values
    arch = metadata(reader, path, "general.architecture")
    family = families.for_gguf(arch, str(path))
    return family.config_from_gguf(arch_keys(values, path, arch), values, tensors, path)


def read_weights(config: ModelConfig, tensors: dict, path: pathlib.Path, *, dtype=np.float32) -> Weights:
    """Every GGUF tensor renamed to the canonical layout by its family, dequantized on each read (the file stays
    memory-mapped); unknown tensors raise."""
    stored: dict[str, StoredTensor] = {}
    for name, tensor in tensors.items():
        # mapped afresh at each read (tensor.data would keep the reader's map of the whole file for the session)
        mapped = MappedTensor(path=path, dtype=tensor.data.dtype, shape=tuple(tensor.data.shape),
                              offset=int(tensor.data_offset))
        gguf_shape = tuple(int(d) for d in tensor.shape)
        match = _LAYER_NAME.match(name)
        if match is not None and int(match[1]) >= config.n_layers:
            raise InputError(f"{path}: tensor {name} is not part of a {config.n_layers}-layer {config.architecture} model")
        stored[name] = StoredTensor(shape=gguf_shape[::-1], file=str(path),
                                    read=lambda name=name, qtype=tensor.tensor_type, shape=gguf_shape, mapped=mapped:
                                    dequantized(name, qtype, shape, mapped.read(), path))
    weights = families.families()[config.architecture].weights_from_gguf(stored, config, path)
    return Weights(weights, dtype=dtype, source=str(path))


def dequantized(name: str, qtype: Q, shape: tuple[int, ...], data: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """One tensor (GGUF `shape`, raw `data`) as float32 in numpy order ([out, in]); unsupported types and short data
    raise."""
    if qtype not in SUPPORTED_TENSOR_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TENSOR_TYPES))
        raise InputError(f"{path}: tensor {name} has type {qtype.name}, expected one of {supported}")
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_elements = int(np.prod(shape, dtype=np.int64))
    expected_bytes = n_elements // block_size * type_size
    if n_elements % block_size or data.nbytes != expected_bytes:
        raise InputError(
            f"{path}: tensor {name} ({qtype.name}, shape {shape}) "
            f"holds {data.nbytes} bytes, expected {expected_bytes} (truncated or corrupt file)"
        )
    if shape and shape[0] % block_size:  # ggml quantizes each row on its own: a block never spans two rows
        raise InputError(f"{path}: tensor {name} ({qtype.name}) has rows of {shape[0]}, not a multiple of its "
                         f"{block_size}-wide blocks")
    try:
        array = gguf.quants.dequantize(np.asarray(data), qtype)
    except Exception as error:
        raise InputError(f"{path}: tensor {name} ({qtype.name}) failed to dequantize ({_one_line(error)})") from error
    return array.reshape(shape[::-1]).astype(np.float32, copy=False)


def read_tokenizer(reader: gguf.GGUFReader, path: pathlib.Path, *, values: dict | None = None) -> ChatTokenizer:
    """The tokenizer the `tokenizer.ggml.*` keys describe: byte-level BPE ("gpt2") or SentencePiece BPE ("llama")."""
    values = metadata_values(reader, path) if values is None else values
    keys = validate(TokenizerKeys, _section(values, "tokenizer."), str(path), prefix="tokenizer.")
    kind, tokens = keys.model, keys.tokens
    types = [1] * len(tokens) if keys.token_type is None else keys.token_type
    if len(types) != len(tokens):
        raise InputError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, expected {len(tokens)} (one per token)")
    for name in _ID_KEYS:
        token_id = getattr(keys, name)
        if token_id is not None and token_id >= len(tokens):
            raise InputError(f"{path}: tokenizer.ggml.{name}={token_id} is outside the {len(tokens)}-token vocabulary")
    if keys.add_eos_token:
        raise InputError(f"{path}: tokenizer.ggml.add_eos_token=True is not supported (only a leading BOS); expected false")
    # Gemma files store the tokens for runs of 2-31 spaces with real spaces and mark them user-defined; transformers
    # respells them "▁▁.." as ordinary vocabulary (so they come out of BPE, ranked by their low ids) instead of
    # matching them whole in the text as llama.cpp does. Both agree on ordinary text; on runs longer than 31 spaces
    # or text holding "▁" itself they can differ, and here transformers is followed.
    gemma = kind == "llama" and values.get("general.architecture") in GEMMA_ARCHITECTURES
    respelled: set[int] = set()
    if gemma:
        respelled = {i for i, t in enumerate(tokens) if " " in t and not t.strip()}
        tokens = ["\u2581" * len(t) if i in respelled else t for i, t in enumerate(tokens)]
    if kind == "gpt2":
        tokenizer = byte_level_bpe(reader, path, tokens, keys)
        add_bos_default = False
    elif kind == "llama":
        tokenizer = sentencepiece_bpe(reader, path, tokens, types, keys, merges_by_position=gemma)
        add_bos_default = True
    else:
        raise InputError(f"{path}: tokenizer.ggml.model is {kind!r:.60}, expected 'gpt2' or 'llama'")
    # llama.cpp (llama-vocab.cpp) gives phi3's special tokens the RSTRIP attribute, as Phi-3's tokenizer.json does:
    # the whitespace after <|user|>, <|end|>, </s>, ... is dropped; not after <unk>, <s>, <|endoftext|>
    phi3 = values.get("general.architecture") == "phi3"

    def rstrip(t: str) -> bool:
        return phi3 and t not in PHI3_KEEP_WHITESPACE

    tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False, rstrip=rstrip(t))
                                  for t, k in zip(tokens, types) if k == _CONTROL])
    tokenizer.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False, rstrip=rstrip(t))
                          for i, (t, k) in enumerate(zip(tokens, types)) if k == _USER_DEFINED and i not in respelled])
    if tokenizer.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise InputError(
            f"{path}: tokenizer.ggml.tokens lists {len(tokens)} tokens but the built tokenizer has "
            f"{tokenizer.get_vocab_size(with_added_tokens=True)} (duplicate token strings?)"
        )
    return ChatTokenizer(
        tokenizer=tokenizer,
        chat_template=keys.chat_template,
        bos_token=None if keys.bos_token_id is None else tokens[keys.bos_token_id],
        eos_token=None if keys.eos_token_id is None else tokens[keys.eos_token_id],
        add_bos=add_bos_default if keys.add_bos_token is None else keys.add_bos_token,
        source=str(path),
    )


def byte_level_bpe(reader: gguf.GGUFReader, path: pathlib.Path, tokens: list[str], keys: TokenizerKeys) -> tokenizers.Tokenizer:
    """GPT-2-style byte-level BPE from the file's vocabulary and merges, split as `tokenizer.ggml.pre` says."""
    pre = keys.pre or "default"
    if pre not in _BYTE_LEVEL_PRE:
        raise InputError(f"{path}: tokenizer.ggml.pre is {pre!r:.60}, expected one of {sorted(_BYTE_LEVEL_PRE)}")
    if keys.merges is None:
        raise InputError(f"{path}: metadata key tokenizer.ggml.merges is missing")
    merges = [_merge_pair(m, path) for m in keys.merges]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = tokenizers.Tokenizer(_bpe(path, vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _BYTE_LEVEL_PRE[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def sentencepiece_bpe(reader: gguf.GGUFReader, path: pathlib.Path, tokens: list[str], types: list[int],
                      keys: TokenizerKeys, *, merges_by_position: bool = False) -> tokenizers.Tokenizer:
    """SentencePiece-style BPE with byte fallback; merges come from the file, else from the token scores (from the
    vocabulary order with `merges_by_position`: Gemma, whose scores do not follow its merge order).

    Spaces become "▁" and one is prepended (unless tokenizer.ggml.add_space_prefix is false), as
    Llama and Phi-3 tokenizers do; unknown characters fall back to the <0xNN> byte tokens.
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    if keys.merges is not None:
        merges = [_merge_pair(m, path) for m in keys.merges]
    elif merges_by_position:
        merges = merges_from_scores(tokens, [-float(i) for i in range(len(tokens))])
    else:
        if keys.scores is None:
            raise InputError(f"{path}: metadata key tokenizer.ggml.scores is missing (and there are no merges)")
        if len(keys.scores) != len(tokens):
            raise InputError(f"{path}: tokenizer.ggml.scores has {len(keys.scores)} entries, expected {len(tokens)}")
        merges = merges_from_scores(tokens, keys.scores)
    unk = None if keys.unknown_token_id is None else tokens[keys.unknown_token_id]
    tokenizer = tokenizers.Tokenizer(_bpe(path, vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if keys.add_space_prefix is not False:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    # the decoder strips the one space the normalizer prepended, and none where it prepends none
    strip = [decoders.Strip(" ", 1, 0)] if keys.add_space_prefix is not False else []
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    return tokenizer


def _bpe(path: pathlib.Path, **kwargs) -> models.BPE:
    """models.BPE from the file's vocabulary and merges; a merge naming a token not in the vocabulary is an InputError."""
    try:
        return models.BPE(**kwargs)
    except Exception as error:  # tokenizers raises a bare Exception
        raise InputError(f"{path}: tokenizer.ggml.tokens / merges do not form a BPE tokenizer ({_one_line(error)})") from None


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a scored vocabulary: every split of a token into two tokens, best score first.

    Ties go to the longer left, then longer right piece, then vocabulary order (transformers' order).
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    candidates = []
    for index, (token, score) in enumerate(zip(tokens, scores)):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                candidates.append((-score, -len(left), -len(right), index, vocab[left], vocab[right], left, right))
    candidates.sort()
    return [(left, right) for *_, left, right in candidates]


def metadata(reader: gguf.GGUFReader, path: pathlib.Path, key: str, default=_MISSING):
    """The value of metadata `key` (str, number, bool or list); a missing key without default raises."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise InputError(f"{path}: metadata key {key} is missing")
        return default
    try:
        return field.contents()
    except Exception as error:
        raise InputError(f"{path}: metadata key {key} is unreadable ({_one_line(error)})") from error


def _merge_pair(merge: str, path: pathlib.Path) -> tuple[str, str]:
    parts = merge.split(" ")
    if len(parts) != 2:
        raise InputError(f"{path}: tokenizer.ggml.merges entry {merge!r} is not two tokens separated by one space")
    return parts[0], parts[1]


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
