"""Tiny random checkpoints of each model family, written by transformers itself, for parity tests against the harness.

For each family name in TINY_CONFIGS:
  write_hf(name, folder)        builds `<Family>ForCausalLM` from `<Family>Config(**TINY_CONFIGS[name])` with random,
                                non-trivial weights (norm weights and biases randomised too) and saves it with
                                transformers' own `save_pretrained(safe_serialization=True)`, plus a tokenizer.json /
                                tokenizer_config.json whose ids fit the vocabulary; returns the folder.
  reference(folder, tokens)     transformers' float32 eager forward: logits [batch, seq, vocab] and every
                                output_hidden_states entry (embeddings as layer 0 sees them, each layer's output, the
                                last one replaced by the final-normed state: transformers' own convention).
  real_width(name)              the config.json of the real model of that family (for memory benchmarks; never built).
  write_gguf(name, folder, out) runs llama.cpp's own convert_hf_to_gguf.py (tests/vendor/llama_cpp) with --outtype f32.

Nothing here uses the harness's readers or writers. The tokenizers reuse tests/standins.py's miniature sentencepiece
vocabulary (Llama/Mistral/Gemma: its 32000 pieces; Phi-3: standins.phi3_tokenizer with Phi-3's added tokens) and, for
the byte-level BPE families (GPT-2, GPT-NeoX, Qwen2), either a small byte-level BPE trained here or, with
`vocab="llama.cpp"` (gpt2, qwen2), the real vocabulary taken from llama.cpp's own vocab fixtures (which llama.cpp's
converter recognises by its pre-tokenizer hash). Sentencepiece folders also get a tokenizer.model (serialised here
from the same pieces; it encodes exactly as the tokenizer.json) because llama.cpp's converter reads that file.

Usage:
    folder = write_hf("gemma2", tmp / "g2")                  # float32, seed 0
    logits, hidden = reference(folder, np.array([[5, 6, 7]]))
    write_gguf("gemma2", folder, tmp / "g2.gguf")            # needs `sentencepiece` for the sentencepiece families
    write_gguf("gpt2", write_hf("gpt2", tmp / "g", vocab="llama.cpp"), tmp / "g.gguf")
"""

from __future__ import annotations

import copy
import functools
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile

import numpy as np
import standins
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

VENDOR = pathlib.Path(__file__).parent / "vendor" / "llama_cpp"
CONVERTER = VENDOR / "convert_hf_to_gguf.py"
LLAMA_CPP_VOCABS = VENDOR / "models"

# ---------------------------------------------------------------------------------------------- tokenizers

SPM_VOCAB = standins.SPM_SIZE            # 32000: Llama-2 / Mistral-7B sentencepiece size
PHI3_VOCAB = standins.PHI3_VOCAB_SIZE    # 32064
BYTE_BPE_VOCAB = 512                     # the small byte-level BPE trained here (GPT-2 layout)
ENDOFTEXT = "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def _llama_tokenizer_json() -> str:
    """standins' sentencepiece tokenizer without Phi-3's added tokens (ids 0..31999: <unk> <s> </s>, bytes, pieces),
    with Llama-2's post-processor (TemplateProcessing "<s> $A", as LlamaConverter writes it)."""
    data = json.loads(standins.phi3_tokenizer().to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < SPM_VOCAB]
    for t in data["added_tokens"]:
        t["rstrip"] = False  # Llama's <unk>/<s>/</s> do not strip (the rstrip is Phi-3's)
    tok = tokenizers.Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    assert tok.get_vocab_size(with_added_tokens=True) == SPM_VOCAB
    return tok.to_str()


def llama_tokenizer_files(directory: pathlib.Path) -> None:
    """tokenizer.json + tokenizer_config.json of a Llama-2-style sentencepiece BPE (add_bos true)."""
    tokenizers.Tokenizer.from_str(_llama_tokenizer_json()).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer"}, indent=2))


def phi3_tokenizer_files(directory: pathlib.Path) -> None:
    """standins' Phi-3 tokenizer.json + tokenizer_config.json, and Phi-3's added_tokens.json (llama.cpp reads it)."""
    standins.phi3_tokenizer_files(directory)
    (directory / "added_tokens.json").write_text(json.dumps(standins.PHI3_ADDED_TOKENS, indent=2))


@functools.lru_cache(maxsize=1)
def _byte_bpe_tokenizer_json() -> str:
    """A GPT-2-layout byte-level BPE (ByteLevel pre-tokenizer without prefix space, ByteLevel decoder) trained on
    standins.CORPUS to BYTE_BPE_VOCAB ids; <|endoftext|> is id 0 (as in Pythia's GPT-NeoX tokenizer)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=BYTE_BPE_VOCAB, special_tokens=[ENDOFTEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([standins.CORPUS] * 4, trainer)
    assert tok.get_vocab_size(with_added_tokens=True) == BYTE_BPE_VOCAB, tok.get_vocab_size()
    return tok.to_str()


def byte_bpe_tokenizer_files(directory: pathlib.Path) -> None:
    tokenizers.Tokenizer.from_str(_byte_bpe_tokenizer_json()).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_eos_token": False, "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT, "clean_up_tokenization_spaces": False, "tokenizer_class": "GPT2Tokenizer"}, indent=2))


# The real vocabularies, from llama.cpp's vocab fixtures (tests/vendor/llama_cpp/models/ggml-vocab-*.gguf), loaded by
# transformers' own GGUF tokenizer conversion; `vocab_size` is the real model's embedding rows.
LLAMA_CPP_VOCAB = {
    "gpt2": dict(file="ggml-vocab-gpt-2.gguf",   # openai-community/gpt2
                 config=dict(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)),
    "qwen2": dict(file="ggml-vocab-qwen2.gguf",  # Qwen/Qwen1.5-7B (the same vocabulary as Qwen2.5's)
                  config=dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151643)),
}


@functools.lru_cache(maxsize=4)
def _llama_cpp_tokenizer_files(family: str) -> dict[str, bytes]:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(LLAMA_CPP_VOCABS), gguf_file=LLAMA_CPP_VOCAB[family]["file"])
        tok.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in pathlib.Path(tmp).iterdir()
                if p.name in ("tokenizer.json", "tokenizer_config.json")}


# ---------------------------------------------------------------------------------------------- sentencepiece proto


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _int_field(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


def sentencepiece_model_proto(pieces=None, *, add_dummy_prefix: bool = True) -> bytes:
    """tokenizer.model (sentencepiece_model.proto ModelProto, serialised) of standins' miniature Llama vocabulary:
    pieces (1: piece, 2: score, 3: type), trainer_spec (model_type BPE, vocab_size, byte_fallback, special ids),
    normalizer_spec (name "identity", add_dummy_prefix, remove_extra_whitespaces false) as Llama-2's file has them."""
    pieces = standins.sentencepiece_pieces() if pieces is None else pieces
    out = bytearray()
    for piece, score, kind in pieces:
        body = _bytes_field(1, piece.encode()) + _field(2, 5, struct.pack("<f", score)) + _int_field(3, kind)
        out += _bytes_field(1, body)
    trainer = (_int_field(3, 2) + _int_field(4, len(pieces)) + _int_field(35, 1)    # BPE, vocab_size, byte_fallback
               + _int_field(40, 0) + _int_field(41, 1) + _int_field(42, 2) + _int_field(43, -1))  # unk bos eos pad
    out += _bytes_field(2, trainer)
    normalizer = (_bytes_field(1, b"identity") + _int_field(3, int(add_dummy_prefix)) + _int_field(4, 0)
                  + _int_field(5, 1))
    out += _bytes_field(3, normalizer)
    return bytes(out)


# ---------------------------------------------------------------------------------------------- families

_LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2)

# Each entry: the kwargs given to the family's config class (hub-style keys, as real config.json files spell them;
# transformers 5 turns rope_theta / rope_scaling into rope_parameters when it writes config.json).
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(_LLAMA_SHAPE, vocab_size=SPM_VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
                  rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
    # Llama-3.1's rope: theta 500000, llama3 scaling (its real numbers). With head_dim 16 the 8 frequencies have
    # wavelengths 6.3, 33, 168, 873 (kept: < 8192/4), 4534 (smoothed), 23550, 1.2e5, 6.4e5 (divided by 8).
    "llama31": dict(_LLAMA_SHAPE, vocab_size=SPM_VOCAB, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    rope_theta=500000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # Phi-3-mini-4k: fused qkv_proj / gate_up_proj, sliding_window 2047 (never reached by the tests), untied.
    "phi3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=PHI3_VOCAB, max_position_embeddings=4096,
                 original_max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=2047,
                 bos_token_id=1, eos_token_id=32000, pad_token_id=32000, tie_word_embeddings=False),
    # Phi-3-128k style longrope, shrunk: original 8 positions, 64 max (factor 8 -> attention_factor sqrt(2)); a
    # sequence of <= 8 tokens uses short_factor, a longer one (e.g. 16) long_factor.
    "phi3_longrope": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=PHI3_VOCAB, max_position_embeddings=64,
                          original_max_position_embeddings=8, rms_norm_eps=1e-5, rope_theta=10000.0,
                          sliding_window=262144, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                          tie_word_embeddings=False,
                          rope_scaling={"type": "longrope",
                                        "short_factor": [1.0, 1.05, 1.1, 1.2, 1.4, 1.7, 2.1, 2.6],
                                        "long_factor": [1.0, 1.3, 2.0, 3.5, 6.0, 9.5, 14.0, 20.0]}),
    # Qwen2.5-0.5B style: q/k/v biases (o_proj none), tied embeddings, theta 1e6, no sliding window.
    "qwen2": dict(_LLAMA_SHAPE, vocab_size=BYTE_BPE_VOCAB, max_position_embeddings=256, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
                  max_window_layers=3, bos_token_id=0, eos_token_id=0),
    # Mistral-7B v0.1 style with sliding_window 8 (< a 16-token test sequence), every layer sliding.
    "mistral": dict(_LLAMA_SHAPE, vocab_size=SPM_VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
                    rope_theta=10000.0, sliding_window=8, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
    # Gemma-2: head_dim 32 != hidden/heads (16), query_pre_attn_scalar 24 (!= head_dim), soft caps small enough to
    # bite, sliding_window 4, layer_types alternating sliding/full from layer 0 (the config's default).
    "gemma2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, vocab_size=SPM_VOCAB, max_position_embeddings=256,
                   rms_norm_eps=1e-6, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
                   hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=4,
                   attn_logit_softcapping=5.0, final_logit_softcapping=3.0, pad_token_id=0, bos_token_id=1,
                   eos_token_id=2, tie_word_embeddings=True),
    # Gemma-3 text (Gemma-3-270M style): q/k norms, local theta 1e4 on sliding layers, global 1e6 on full ones, the
    # real 5-sliding-then-1-full pattern over 6 layers (llama.cpp assumes that pattern), sliding_window 4.
    "gemma3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, vocab_size=SPM_VOCAB, max_position_embeddings=256,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                   hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=4,
                   layer_types=["sliding_attention"] * 5 + ["full_attention"], attn_logit_softcapping=None,
                   final_logit_softcapping=None, use_bidirectional_attention=False, pad_token_id=0, bos_token_id=1,
                   eos_token_id=2, tie_word_embeddings=True),
    # GPT-2: learned positions, LayerNorm with bias, Conv1D [in, out] weights, fused c_attn, gelu_new, tied head.
    # n_ctx: GPT-2's hub config.json carries it (= n_positions); GPT2Config keeps it as an extra attribute and writes
    # it back, and llama.cpp's converter reads it (KeyError without it).
    "gpt2": dict(n_embd=64, n_head=4, n_layer=3, n_positions=64, n_ctx=64, vocab_size=BYTE_BPE_VOCAB,
                 activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    # GPT-NeoX (Pythia): rotary on the first 25% of each head (4 of 16 dims), parallel residual, exact gelu, untied.
    "gpt_neox": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                     vocab_size=BYTE_BPE_VOCAB, max_position_embeddings=256, rotary_pct=0.25, rotary_emb_base=10000,
                     layer_norm_eps=1e-5, hidden_act="gelu", use_parallel_residual=True, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0),
}
TINY_CONFIGS["gpt_neox_sequential"] = dict(TINY_CONFIGS["gpt_neox"], use_parallel_residual=False)
# Gemma-3 4B-and-up style: linear rope scaling (factor 8) on the full-attention layers only.
TINY_CONFIGS["gemma3_scaled"] = dict(TINY_CONFIGS["gemma3"], rope_scaling={"rope_type": "linear", "factor": 8.0})

# family -> (config class, model class, tokenizer files writer)
_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "llama"),
    "llama31": ("LlamaConfig", "LlamaForCausalLM", "llama"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "phi3"),
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM", "phi3"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "byte_bpe"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "llama"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "llama"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "llama"),
    "gemma3_scaled": ("Gemma3TextConfig", "Gemma3ForCausalLM", "llama"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "byte_bpe"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", "byte_bpe"),
    "gpt_neox_sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", "byte_bpe"),
}
FAMILIES = tuple(TINY_CONFIGS)

# llama.cpp's general.architecture for each family its converter writes (None: it writes no such file here).
GGUF_ARCH = {"llama": "llama", "llama31": "llama", "mistral": "llama", "phi3": "phi3", "phi3_longrope": "phi3",
             "qwen2": "qwen2", "gemma2": "gemma2", "gemma3": "gemma3", "gemma3_scaled": "gemma3", "gpt2": "gpt2",
             "gpt_neox": "gptneox", "gpt_neox_sequential": "gptneox"}
# The families whose conversion imports the `sentencepiece` package (llama.cpp reads their tokenizer.model with it;
# its Llama path imports it even before looking for the file).
NEEDS_SENTENCEPIECE = {name for name, (_, _, tok) in _CLASSES.items() if tok in ("llama", "phi3")}


# config.json keys transformers 5.24 writes for each tiny family (write_hf; "dtype" is the saved dtype, "rope_parameters"
# replaces rope_theta / rope_scaling / rotary_pct / rotary_emb_base / rope_local_base_freq; test_family_standins checks it).
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "llama": (
        "architectures", "attention_bias", "attention_dropout", "bos_token_id", "dtype", "eos_token_id", "head_dim",
        "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings", "mlp_bias",
        "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id",
        "pretraining_tp", "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "transformers_version", "use_cache",
        "vocab_size"),
    "llama31": (
        "architectures", "attention_bias", "attention_dropout", "bos_token_id", "dtype", "eos_token_id", "head_dim",
        "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings", "mlp_bias",
        "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id",
        "pretraining_tp", "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "transformers_version", "use_cache",
        "vocab_size"),
    "phi3": (
        "architectures", "attention_dropout", "bos_token_id", "dtype", "embd_pdrop", "eos_token_id", "hidden_act",
        "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "original_max_position_embeddings",
        "pad_token_id", "resid_pdrop", "rms_norm_eps", "rope_parameters", "sliding_window", "tie_word_embeddings",
        "transformers_version", "use_cache", "vocab_size"),
    "phi3_longrope": (
        "architectures", "attention_dropout", "bos_token_id", "dtype", "embd_pdrop", "eos_token_id", "hidden_act",
        "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "original_max_position_embeddings",
        "pad_token_id", "resid_pdrop", "rms_norm_eps", "rope_parameters", "sliding_window", "tie_word_embeddings",
        "transformers_version", "use_cache", "vocab_size"),
    "qwen2": (
        "architectures", "attention_dropout", "bos_token_id", "dtype", "eos_token_id", "hidden_act", "hidden_size",
        "initializer_range", "intermediate_size", "layer_types", "max_position_embeddings", "max_window_layers",
        "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id", "rms_norm_eps",
        "rope_parameters", "sliding_window", "tie_word_embeddings", "transformers_version", "use_cache",
        "use_sliding_window", "vocab_size"),
    "mistral": (
        "architectures", "attention_dropout", "bos_token_id", "dtype", "eos_token_id", "head_dim", "hidden_act",
        "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id", "rms_norm_eps",
        "rope_parameters", "sliding_window", "tie_word_embeddings", "transformers_version", "use_cache", "vocab_size"),
    "gemma2": (
        "architectures", "attention_bias", "attention_dropout", "attn_logit_softcapping", "bos_token_id", "dtype",
        "eos_token_id", "final_logit_softcapping", "head_dim", "hidden_act", "hidden_activation", "hidden_size",
        "initializer_range", "intermediate_size", "layer_types", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id", "query_pre_attn_scalar",
        "rms_norm_eps", "rope_parameters", "sliding_window", "tie_word_embeddings", "transformers_version",
        "use_bidirectional_attention", "use_cache", "vocab_size"),
    "gemma3": (
        "_sliding_window_pattern", "architectures", "attention_bias", "attention_dropout", "attn_logit_softcapping",
        "bos_token_id", "dtype", "eos_token_id", "final_logit_softcapping", "head_dim", "hidden_activation",
        "hidden_size", "initializer_range", "intermediate_size", "layer_types", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id", "query_pre_attn_scalar",
        "rms_norm_eps", "rope_parameters", "sliding_window", "tie_word_embeddings", "transformers_version",
        "use_bidirectional_attention", "use_cache", "vocab_size"),
    "gpt2": (
        "activation_function", "add_cross_attention", "architectures", "attn_pdrop", "bos_token_id", "dtype",
        "embd_pdrop", "eos_token_id", "initializer_range", "layer_norm_epsilon", "model_type", "n_ctx", "n_embd",
        "n_head", "n_inner", "n_layer", "n_positions", "pad_token_id", "reorder_and_upcast_attn", "resid_pdrop",
        "scale_attn_by_inverse_layer_idx", "scale_attn_weights", "summary_activation", "summary_first_dropout",
        "summary_proj_to_labels", "summary_type", "summary_use_proj", "tie_word_embeddings", "transformers_version",
        "use_cache", "vocab_size"),
    "gpt_neox": (
        "architectures", "attention_bias", "attention_dropout", "bos_token_id", "classifier_dropout", "dtype",
        "eos_token_id", "hidden_act", "hidden_dropout", "hidden_size", "initializer_range", "intermediate_size",
        "is_decoder", "layer_norm_eps", "max_position_embeddings", "model_type", "num_attention_heads",
        "num_hidden_layers", "pad_token_id", "rope_parameters", "tie_word_embeddings", "transformers_version",
        "use_cache", "use_parallel_residual", "vocab_size"),
}
# Variants of a family write the same keys as the family.
CONFIG_KEYS |= {"gpt_neox_sequential": CONFIG_KEYS["gpt_neox"], "gemma3_scaled": CONFIG_KEYS["gemma3"]}


def tiny_config(name: str, **overrides):
    """The transformers config object of family `name` (TINY_CONFIGS[name] updated by `overrides`)."""
    import transformers

    config_cls = getattr(transformers, _CLASSES[name][0])
    return config_cls(**copy.deepcopy(TINY_CONFIGS[name] | overrides))


def _randomise(model, seed: int) -> None:
    """Weights that show any mix-up: every norm weight random around its identity (Gemma's (1 + w) norms around 0),
    every bias random, Linear / Conv1D weights N(0, 1/fan_in) so attention scores are O(1), embeddings N(0, 1)."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    gen = torch.Generator().manual_seed(seed + 1)

    def randn(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    with torch.no_grad():
        for module in model.modules():
            name = type(module).__name__
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1.0 + randn(module.weight.shape, 0.2))
                if module.bias is not None:
                    module.bias.copy_(randn(module.bias.shape, 0.1))
            elif "RMSNorm" in name:
                offset = 0.0 if name.startswith("Gemma") else 1.0  # Gemma scales by (1 + weight)
                module.weight.copy_(offset + randn(module.weight.shape, 0.2))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(randn(module.weight.shape, 1.0))
            elif isinstance(module, (nn.Linear, Conv1D)):
                fan_in = module.weight.shape[1] if isinstance(module, nn.Linear) else module.weight.shape[0]
                module.weight.copy_(randn(module.weight.shape, fan_in ** -0.5))
                if module.bias is not None:
                    module.bias.copy_(randn(module.bias.shape, 0.1))
        if model.config.tie_word_embeddings:
            assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        else:  # an untied head: own weights N(0, 1/d)
            head = model.get_output_embeddings()
            head.weight.copy_(randn(head.weight.shape, head.weight.shape[1] ** -0.5))


def write_hf(name: str, directory, *, seed: int = 0, dtype=None, vocab: str = "tiny", **config_overrides) -> pathlib.Path:
    """Write family `name` as transformers saves it (config.json, model.safetensors, generation_config.json) plus
    tokenizer files into `directory`; returns it. `dtype` (a torch dtype, default float32) is the saved dtype.

    vocab="llama.cpp" (gpt2, qwen2 only) attaches the real tokenizer from llama.cpp's vocab fixtures and sets
    vocab_size to the real model's, so that llama.cpp's converter recognises the pre-tokenizer.
    """
    import torch
    import transformers

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_kind = _CLASSES[name][2]
    if vocab == "llama.cpp":
        if name not in LLAMA_CPP_VOCAB:
            raise ValueError(f"{name}: no llama.cpp vocabulary fixture is vendored for it (have {sorted(LLAMA_CPP_VOCAB)})")
        config_overrides = LLAMA_CPP_VOCAB[name]["config"] | config_overrides
    elif vocab != "tiny":
        raise ValueError(f"vocab must be 'tiny' or 'llama.cpp', not {vocab!r}")
    config = tiny_config(name, **config_overrides)
    torch.manual_seed(seed)
    model_cls = getattr(transformers, _CLASSES[name][1])
    model = model_cls(config).to(torch.float32).eval()
    _randomise(model, seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(directory, safe_serialization=True)

    if vocab == "llama.cpp":
        for file, data in _llama_cpp_tokenizer_files(name).items():
            (directory / file).write_bytes(data)
    elif tokenizer_kind == "llama":
        llama_tokenizer_files(directory)
        (directory / "tokenizer.model").write_bytes(sentencepiece_model_proto())
    elif tokenizer_kind == "phi3":
        phi3_tokenizer_files(directory)
        (directory / "tokenizer.model").write_bytes(sentencepiece_model_proto())
    else:
        byte_bpe_tokenizer_files(directory)
    largest = max(tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab(True).values())
    assert largest < config.vocab_size, (name, largest, config.vocab_size)
    return directory


def reference(directory, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """transformers' float32 eager forward of the folder on int token ids [batch, seq] (no padding, no mask):
    (logits [batch, seq, vocab], [hidden_states[0], ..., hidden_states[n_layers]]) as float32 numpy arrays."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if ids.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tuple(ids.shape)}")
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


# ---------------------------------------------------------------------------------------------- real widths

# config.json of each family's real model as published on the hub (transformers 5 reads these unchanged).
_REAL = {
    # meta-llama/Llama-2-7b-hf
    "llama": {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
              "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
              "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
              "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
              "vocab_size": 32000},
    # meta-llama/Llama-3.1-8B
    "llama31": {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
                "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
                "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
                "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
                "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
                "vocab_size": 128256},
    # microsoft/Phi-3-mini-4k-instruct (standins.phi3_config at the real widths)
    "phi3": standins.phi3_config(hidden_size=3072, num_attention_heads=32, num_key_value_heads=32,
                                 intermediate_size=8192, num_hidden_layers=32),
    # Qwen/Qwen2.5-0.5B
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
              "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
              "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
              "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
              "vocab_size": 151936},
    # mistralai/Mistral-7B-v0.1
    "mistral": {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
                "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
                "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
                "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
                "vocab_size": 32000},
    # google/gemma-2-2b
    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
               "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
               "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
               "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
               "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
               "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
               "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
               "torch_dtype": "float32", "use_cache": True, "vocab_size": 256000},
    # google/gemma-3-270m
    "gemma3": {"_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
               "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
               "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
               "hidden_size": 640, "initializer_range": 0.02, "intermediate_size": 2048,
               "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
               "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
               "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
               "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
               "sliding_window": 512, "torch_dtype": "bfloat16", "use_bidirectional_attention": False,
               "use_cache": True, "vocab_size": 262144},
    # openai-community/gpt2
    "gpt2": {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
             "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
             "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
             "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
             "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
             "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
             "vocab_size": 50257},
    # EleutherAI/pythia-70m
    "gpt_neox": {"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "classifier_dropout": 0.1,
                 "eos_token_id": 0, "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
                 "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
                 "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6, "rotary_emb_base": 10000,
                 "rotary_pct": 0.25, "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
                 "use_parallel_residual": True, "vocab_size": 50304},
}
# Parameter counts of those configs (transformers' model built on the meta device), a check of the numbers above.
REAL_PARAMETERS = {"llama": 6_738_415_616, "llama31": 8_030_261_248, "phi3": 3_821_079_552, "qwen2": 494_032_768,
                   "mistral": 7_241_732_096, "gemma2": 2_614_341_888, "gemma3": 268_098_176, "gpt2": 124_439_808,
                   "gpt_neox": 70_426_624}


def real_width(name: str) -> dict:
    """The config.json of family `name`'s real model (llama: Llama-2-7B, llama31: Llama-3.1-8B, phi3: Phi-3-mini-4k,
    qwen2: Qwen2.5-0.5B, mistral: Mistral-7B-v0.1, gemma2: Gemma-2-2B, gemma3: Gemma-3-270M, gpt2: GPT-2 small,
    gpt_neox: Pythia-70m). A fresh copy each call."""
    if name not in _REAL:
        raise KeyError(f"{name}: no real-width config recorded (have {sorted(_REAL)})")
    return copy.deepcopy(_REAL[name])


# ---------------------------------------------------------------------------------------------- GGUF


# What llama.cpp's converter (this vendored version) cannot carry into the GGUF, per family: a GGUF-vs-HF parity test
# must avoid these (GGUF_PARITY_OVERRIDES gives write_hf overrides that do).
GGUF_DROPS = {
    "mistral": "sliding_window: written as arch 'llama' with no sliding-window key (llama.cpp attends fully)",
    "gemma2": "query_pre_attn_scalar: no key; llama.cpp scales by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for 27B)",
    "gemma3": "query_pre_attn_scalar (as gemma2) and layer_types: no key; llama.cpp assumes 5 sliding + 1 full",
    "gemma3_scaled": "as gemma3; the linear rope factor is written as rope.scaling.type/factor",
}
GGUF_PARITY_OVERRIDES = {
    "mistral": {"sliding_window": 4096},
    "gemma2": {"query_pre_attn_scalar": 32},
    "gemma3": {"query_pre_attn_scalar": 32},
    "gemma3_scaled": {"query_pre_attn_scalar": 32},
}
# Families llama.cpp's converter fails on, with transformers 5.24 writing the folder, and why.
GGUF_UNCONVERTIBLE = {
    "gpt_neox": "llama.cpp's GPTNeoXModel reads hparams['rotary_pct'] from AutoConfig.to_dict(); transformers 5 moves it "
                "into rope_parameters['partial_rotary_factor'] (KeyError 'rotary_pct'), for a hub-style config.json too",
    "gpt_neox_sequential": "as gpt_neox",
}
# The vocabulary write_gguf needs: the byte-level BPE families only convert with vocab="llama.cpp" (llama.cpp hashes
# the pre-tokenizer's output and refuses one it does not know: "BPE pre-tokenizer was not recognized").
GGUF_VOCAB = {name: "llama.cpp" if name in LLAMA_CPP_VOCAB else "tiny" for name in GGUF_ARCH}


def write_gguf(name: str, hf_directory, out_path, *, timeout: float = 600) -> pathlib.Path:
    """Convert a write_hf folder with llama.cpp's own convert_hf_to_gguf.py (vendored; run with this interpreter,
    its vendored gguf-py first on the path) at --outtype f32; returns out_path. Raises RuntimeError with the
    converter's last lines if it fails (e.g. a byte-level BPE folder written with vocab="tiny": llama.cpp does not
    recognise its pre-tokenizer)."""
    if GGUF_ARCH.get(name) is None:
        raise ValueError(f"{name}: llama.cpp's converter writes no GGUF for this family")
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # the converter puts its vendored gguf-py first on sys.path unless NO_LOCAL_GGUF is set
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, str(CONVERTER), str(hf_directory), "--outfile", str(out_path), "--outtype", "f32"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(VENDOR), check=False)
    if result.returncode != 0 or not out_path.is_file():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed for {name} (exit {result.returncode}):\n{tail}")
    return out_path
