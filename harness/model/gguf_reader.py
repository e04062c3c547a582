"""Read a llama.cpp GGUF file into the canonical checkpoint (config, HF-Llama weights, tokenizer).

The `gguf` package parses the file and dequantizes; this module maps llama.cpp's metadata keys and
tensor names onto `ModelConfig` and the canonical layout, undoing llama.cpp's Q/K row permutation
(llama) and splitting the fused tensors (phi3). Anything it cannot map raises a one-line InputError.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import gguf
import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from pydantic import Field

from harness.errors import InputError
from harness.model.config import Checkpoint, ModelConfig, StoredTensor, Weights, check_values, check_weights
from harness.model.tokenizer import ChatTokenizer
from harness.validation import MappedTensor, FiniteFloat, NonNegativeInt, PositiveFloat, PositiveInt, Schema, StrictBool, StrictStr, validate

Q = gguf.GGMLQuantizationType

# Tensor types whose dequantization the tests check against gguf.quants.quantize round trips.
SUPPORTED_TENSOR_TYPES: frozenset[Q] = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
)

# llama.cpp token types (gguf.TokenType): 3 CONTROL and 4 USER_DEFINED are matched whole in text.
_CONTROL, _USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
PHI3_KEEP_WHITESPACE = ("<unk>", "<s>", "<|endoftext|>")  # phi3 special tokens without llama.cpp's RSTRIP

# GGUF tensor suffix → canonical suffix, per layer; phi3's fused tensors are handled apart.
_LAYER_TENSORS = {
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
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")

# `tokenizer.ggml.pre` → how a byte-level vocabulary splits text before BPE (llama.cpp llama-vocab.cpp).
# ByteLevel's own regex is GPT-2's; "smollm" first isolates every digit (llama.cpp's "\p{N}" rule).
_BYTE_LEVEL_PRE = {
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
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
    rms_norm_eps: PositiveFloat = Field(alias="attention.layer_norm_rms_epsilon")
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
    layer_norm_eps: FiniteFloat | None = Field(None, alias="attention.layer_norm_epsilon")
    logit_scale: FiniteFloat | None = None
    expert_count: NonNegativeInt | None = None
    clamp_kqv: FiniteFloat | None = Field(None, alias="attention.clamp_kqv")


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
    refused = {
        "rope.scaling.type": keys.rope_scaling_type not in (None, "none"),
        "rope.scaling.factor": keys.rope_scaling_factor not in (None, 1.0, 0.0),
        "rope.scaling.attn_factor": keys.rope_scaling_attn_factor not in (None, 1.0),
        "attention.layer_norm_epsilon": keys.layer_norm_eps is not None,
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
    ignored = ignored_keys(values, config.architecture)
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
    """ModelConfig from the `{arch}.*` metadata keys; vocab size from token_embd.weight's rows."""
    values = metadata_values(reader, path) if values is None else values
    arch = metadata(reader, path, "general.architecture")
    if arch not in ("llama", "phi3"):
        raise InputError(f"{path}: general.architecture is {arch!r:.60}, expected 'llama' or 'phi3'")
    keys = arch_keys(values, path, arch)
    d_model, n_heads = keys.embedding_length, keys.head_count
    # GGUF spec: head_count_kv absent means no grouped-query attention (as many KV heads as heads).
    n_kv_heads = n_heads if keys.head_count_kv is None else keys.head_count_kv
    if d_model % n_heads:
        raise InputError(f"{path}: {arch}.embedding_length={d_model} is not a multiple of head_count={n_heads}")
    head_dim = d_model // n_heads
    rope_dims = head_dim if keys.rope_dims is None else keys.rope_dims
    if rope_dims != head_dim:
        raise InputError(
            f"{path}: {arch}.rope.dimension_count={rope_dims} but head_dim={head_dim}; "
            "partial rotary embeddings are not supported"
        )
    for name, length in (("key_length", keys.key_length), ("value_length", keys.value_length)):
        if length is not None and length != head_dim:
            raise InputError(f"{path}: {arch}.attention.{name}={length} but head_dim={head_dim}; expected equal")
    if "token_embd.weight" not in tensors:
        raise InputError(f"{path}: tensor token_embd.weight is missing")
    vocab_size = int(tensors["token_embd.weight"].shape[-1])  # GGUF order: [d_model, vocab]
    if keys.vocab_size is not None and keys.vocab_size != vocab_size:
        raise InputError(f"{path}: {arch}.vocab_size={keys.vocab_size} but token_embd.weight has {vocab_size} rows")
    if arch != "phi3" and keys.sliding_window is not None:
        raise InputError(f"{path}: {arch}.attention.sliding_window={keys.sliding_window} is not supported for {arch}")
    try:
        return ModelConfig(
            architecture=arch,
            d_model=d_model,
            n_layers=keys.block_count,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            d_ffn=keys.feed_forward_length,
            vocab_size=vocab_size,
            rope_base=keys.rope_base,
            rms_norm_eps=keys.rms_norm_eps,
            tie_embeddings="output.weight" not in tensors,
            max_context=keys.context_length,
            sliding_window=keys.sliding_window,
        )
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def read_weights(config: ModelConfig, tensors: dict, path: pathlib.Path, *, dtype=np.float32) -> Weights:
    """Every GGUF tensor renamed to the canonical layout, dequantized on each read (the file stays memory-mapped);
    unknown tensors raise."""
    weights: dict[str, StoredTensor] = {}
    for name, tensor in tensors.items():
        # mapped afresh at each read (tensor.data would keep the reader's map of the whole file for the session)
        mapped = MappedTensor(path=path, dtype=tensor.data.dtype, shape=tuple(tensor.data.shape),
                              offset=int(tensor.data_offset))
        gguf_shape = tuple(int(d) for d in tensor.shape)
        whole = StoredTensor(shape=gguf_shape[::-1], file=str(path),
                             read=lambda name=name, qtype=tensor.tensor_type, shape=gguf_shape, mapped=mapped:
                             dequantized(name, qtype, shape, mapped.read(), path))
        if name in _GLOBAL_TENSORS:
            weights[_GLOBAL_TENSORS[name]] = whole
            continue
        match = _LAYER_NAME.match(name)
        if match is None or int(match[1]) >= config.n_layers:
            raise InputError(f"{path}: tensor {name} is not part of a {config.n_layers}-layer {config.architecture} model")
        prefix, suffix = f"model.layers.{match[1]}.", match[2]
        if config.architecture == "phi3" and suffix in ("attn_qkv.weight", "ffn_up.weight"):
            pieces = {prefix + k: v for k, v in split_phi3_fused(config, suffix, whole, path, name).items()}
        elif suffix in _LAYER_TENSORS and not (config.architecture == "phi3" and suffix == "ffn_gate.weight"):
            pieces = {prefix + _LAYER_TENSORS[suffix]: whole}
        else:
            raise InputError(f"{path}: tensor {name} is not part of a {config.architecture} model")
        for key in pieces.keys() & weights.keys():
            raise InputError(f"{path}: tensor {name} gives {key} a second time (fused and separate tensors both present?)")
        weights |= pieces
    if config.architecture == "llama":
        present = sorted({int(m[1]) for m in (_LAYER_NAME.match(n) for n in tensors) if m})
        for i in present:  # the layers the file holds (a corrupt block_count must not loop millions of times)
            for proj, heads in (("q_proj", config.n_heads), ("k_proj", config.n_kv_heads)):
                key = f"model.layers.{i}.self_attn.{proj}.weight"
                if key in weights and weights[key].shape[0] == heads * config.head_dim:
                    permuted = weights[key]
                    weights[key] = dataclasses.replace(
                        permuted, read=lambda permuted=permuted, heads=heads: unpermute_rope_rows(permuted.read(), heads))
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
    try:
        array = gguf.quants.dequantize(np.asarray(data), qtype)
    except Exception as error:
        raise InputError(f"{path}: tensor {name} ({qtype.name}) failed to dequantize ({_one_line(error)})") from error
    return array.reshape(shape[::-1]).astype(np.float32, copy=False)


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's `LlamaModel.permute` (interleaved → HF rotate-half Q/K rows).

    llama.cpp stores each head's rows as (pair, 2) interleaved; HF keeps (2, pair) halves.
    """
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def split_phi3_fused(config: ModelConfig, suffix: str, fused: StoredTensor, path: pathlib.Path, name: str) -> dict[str, StoredTensor]:
    """Split phi3's fused attn_qkv ([q; k; v] rows) or ffn_up ([gate; up] rows) after checking its shape."""
    d, q, kv, f = config.d_model, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim, config.d_ffn
    expected = (q + 2 * kv, d) if suffix == "attn_qkv.weight" else (2 * f, d)
    if tuple(fused.shape) != expected:
        raise InputError(f"{path}: tensor {name} has shape {tuple(fused.shape)}, config expects {expected}")

    def rows(start: int, stop: int) -> StoredTensor:
        return StoredTensor(shape=(stop - start, d), file=fused.file, read=lambda: fused.read()[start:stop])

    if suffix == "attn_qkv.weight":
        return {"self_attn.q_proj.weight": rows(0, q), "self_attn.k_proj.weight": rows(q, q + kv),
                "self_attn.v_proj.weight": rows(q + kv, q + 2 * kv)}
    return {"mlp.gate_proj.weight": rows(0, f), "mlp.up_proj.weight": rows(f, 2 * f)}


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
    if kind == "gpt2":
        tokenizer = byte_level_bpe(reader, path, tokens, keys)
        add_bos_default = False
    elif kind == "llama":
        tokenizer = sentencepiece_bpe(reader, path, tokens, types, keys)
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
                          for t, k in zip(tokens, types) if k == _USER_DEFINED])
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
                      keys: TokenizerKeys) -> tokenizers.Tokenizer:
    """SentencePiece-style BPE with byte fallback; merges come from the file or from the token scores.

    Spaces become "▁" and one is prepended (unless tokenizer.ggml.add_space_prefix is false), as
    Llama and Phi-3 tokenizers do; unknown characters fall back to the <0xNN> byte tokens.
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    if keys.merges is not None:
        merges = [_merge_pair(m, path) for m in keys.merges]
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
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
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
