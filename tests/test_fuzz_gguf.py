"""Fuzz the GGUF reader: truncations, flipped bytes, wrong-typed or out-of-range keys, odd paths (see fuzz_inputs)."""

from __future__ import annotations

import hashlib
import pathlib
import tempfile

import gguf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_inputs import BENIGN, MALIGN, Mutation, byte_mutations, fuzz_settings, path_mutations, report_counts, run_case
from harness.model.gguf_reader import read_gguf
from test_gguf_reader import write_tiny_gguf

pytestmark = pytest.mark.fuzz
SAMPLE = "hello world <|im_start|>héllo"
BAD_KEYS = [  # (key, value written instead): each must be refused
    ("llama.attention.layer_norm_rms_epsilon", "1e-5"), ("llama.attention.layer_norm_rms_epsilon", float("nan")),
    ("llama.attention.layer_norm_rms_epsilon", -1.0), ("llama.attention.layer_norm_rms_epsilon", 0.0),
    ("llama.attention.layer_norm_rms_epsilon", float("inf")), ("llama.block_count", 0), ("llama.block_count", "1"),
    ("llama.block_count", True), ("llama.attention.head_count", 3), ("llama.attention.head_count", "4"),
    ("llama.feed_forward_length", 95), ("llama.rope.freq_base", float("nan")), ("llama.context_length", 0),
    ("llama.rope.scaling.type", "yarn"), ("llama.rope.dimension_count", 8), ("llama.expert_count", 4),
    ("tokenizer.ggml.eos_token_id", [1, 2]), ("tokenizer.ggml.eos_token_id", 10**6), ("tokenizer.ggml.bos_token_id", "1"),
    ("tokenizer.chat_template", 5), ("tokenizer.chat_template", ["a", "b"]), ("tokenizer.ggml.add_bos_token", "false"),
    ("tokenizer.ggml.add_bos_token", 1), ("tokenizer.ggml.model", "bert"), ("tokenizer.ggml.pre", 3),
    ("tokenizer.ggml.merges", [1, 2]), ("tokenizer.ggml.add_eos_token", True), ("general.architecture", "gpt2"),
]
REQUIRED = ["llama.attention.layer_norm_rms_epsilon", "llama.block_count", "llama.embedding_length",
            "llama.context_length", "tokenizer.ggml.tokens", "tokenizer.ggml.model", "tokenizer.ggml.merges"]


def summary(checkpoint) -> tuple:
    """Everything a run depends on: config, weights (hashed), tokenizer behaviour and template."""
    tok = checkpoint.tokenizer
    weights = tuple(sorted((k, hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()) for k, v in checkpoint.weights.items()))
    return (checkpoint.config, weights, tuple(tok.encode(SAMPLE)), tok.chat_template, tok.bos_token, tok.eos_token, tok.add_bos)


def _rewrite(extra=None, drop=()):
    def apply(path):
        write_tiny_gguf(path, n_layers=1, extra_keys=extra, drop_keys=drop)
    return apply


def key_mutations() -> st.SearchStrategy[Mutation]:
    bad = st.sampled_from(BAD_KEYS).map(lambda kv: Mutation(MALIGN, f"{kv[0]} = {kv[1]!r}", _rewrite({kv[0]: kv[1]}), True))
    missing = st.sampled_from(REQUIRED).map(lambda k: Mutation(MALIGN, f"{k} removed", _rewrite(drop=(k,)), True))
    harmless = st.sampled_from(["llama.some_future_key", "general.name", "tokenizer.ggml.some_flag"]).map(
        lambda k: Mutation(BENIGN, f"harmless key {k}", _rewrite({k: 7}), True))
    return st.one_of(bad, missing, harmless)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, n_layers=1)
    data = path.read_bytes()
    header = gguf.GGUFReader(path, "r").data_offset
    return data, header, summary(read_gguf(path))


def test_gguf_reader_contract(request, baseline):
    data, header, expected = baseline

    @fuzz_settings(request, 200)
    @given(st.one_of(byte_mutations(data, header=header), key_mutations(), path_mutations()))
    def case(mutation):
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "in" / "tiny.gguf"
            path.parent.mkdir()
            path.write_bytes(data)
            mutation.to(path)
            run_case("GGUF", mutation, lambda: read_gguf(path), summary, expected, (str(path),))

    case()
    print(f"\nfuzz cases: {report_counts('GGUF')}")
