"""Tiny random checkpoints shared by the model tests: a GGUF (llama or phi3) and a Hugging Face directory.

The GGUF writer lives in test_gguf_reader (it also returns the weights it wrote); the HF writer saves a
transformers model with save_pretrained beside a word-level tokenizer that covers its vocabulary.
"""

from __future__ import annotations

import json
import pathlib

import tokenizers
from tokenizers import models, pre_tokenizers

from test_gguf_reader import write_tiny_gguf

# transformers defaults a GGUF's pad token to id 32000, outside a tiny vocabulary: name a real one.
GGUF_PAD_KEY = {"tokenizer.ggml.padding_token_id": 0}


def tiny_gguf(path: pathlib.Path, *, arch: str = "llama", n_layers: int = 2, seed: int = 0, **kwargs) -> dict:
    """A tiny random F32 `arch` GGUF at `path` that transformers can load too; returns what was written."""
    extra = GGUF_PAD_KEY | kwargs.pop("extra_keys", {})
    return write_tiny_gguf(path, arch=arch, n_layers=n_layers, seed=seed, extra_keys=extra, **kwargs)


def word_level_tokenizer(vocab_size: int) -> tokenizers.Tokenizer:
    """A whitespace word-level tokenizer with ids 0..vocab_size-1: <unk>, <s>, </s>, then w3, w4, …"""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def write_hf_checkpoint(directory: pathlib.Path, model) -> pathlib.Path:
    """Save a transformers causal LM as safetensors plus tokenizer.json / tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    word_level_tokenizer(model.config.vocab_size).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"})
    )
    return directory


def tiny_checkpoint(tmp_path_factory, *, arch: str = "llama", n_layers: int = 3, seed: int = 0):
    """A tiny random GGUF written to a fresh temporary folder and read back: the model tests' shared fixture body."""
    from harness.model.gguf_reader import read_gguf

    path = tmp_path_factory.mktemp(f"tiny-{arch}-{n_layers}-{seed}") / "tiny.gguf"
    tiny_gguf(path, arch=arch, n_layers=n_layers, seed=seed)
    return read_gguf(path)


def random_llama(*, seed: int, d: int, n_layers: int, vocab: int, ctx: int):
    """A float32 transformers LlamaForCausalLM with random weights (4 heads, 2 kv heads, wide init so steering shows)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=d, intermediate_size=96, num_hidden_layers=n_layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                      max_position_embeddings=ctx, initializer_range=0.2, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).float().eval()
