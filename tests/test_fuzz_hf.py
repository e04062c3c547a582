"""Fuzz the Hugging Face folder reader: config.json and tokenizer_config.json values, safetensors bytes and dtypes, paths."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

from checkpoints import word_level_tokenizer
from fuzz_inputs import (BENIGN, MALIGN, Mutation, byte_mutations, fuzz_settings, json_edit, non_utf8, path_mutations,
                         report_counts, run_case, safetensors_relabel, with_bom)
from harness.model.hf_reader import read_hf_dir

pytestmark = pytest.mark.fuzz
VOCAB, D, F, LAYERS = 64, 16, 24, 1
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": D, "num_hidden_layers": LAYERS,
          "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": F, "vocab_size": VOCAB,
          "rms_norm_eps": 1e-6, "max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
TOKENIZER_CONFIG = {"bos_token": "<s>", "eos_token": "</s>",
                    "chat_template": "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"}
BAD_CONFIG = [("hidden_size", "16"), ("hidden_size", True), ("hidden_size", 0), ("hidden_size", 16.0),
              ("rms_norm_eps", "1e-6"), ("rms_norm_eps", -1e-6), ("rms_norm_eps", 0), ("rms_norm_eps", float("nan")),
              ("rms_norm_eps", float("inf")), ("tie_word_embeddings", "false"), ("tie_word_embeddings", 0),
              ("num_key_value_heads", 3), ("rope_theta", "big"), ("rope_scaling", {"type": "linear", "factor": 2.0}),
              ("rope_scaling", "linear"), ("attention_bias", True), ("attention_bias", "false"), ("hidden_act", "gelu"),
              ("model_type", "mixtral"), ("vocab_size", 63), ("eos_token_id", 10**6), ("eos_token_id", "2"),
              ("num_hidden_layers", 2), ("num_hidden_layers", 10**9), ("head_dim", "8"), ("intermediate_size", None),
              ("partial_rotary_factor", 0.5), ("rope_parameters", {"rope_type": "yarn"}), ("sliding_window", 16)]
BAD_TOKENIZER_CONFIG = [("add_bos_token", "false"), ("add_eos_token", "true"), ("add_eos_token", True), ("bos_token", 5),
                        ("eos_token", "<nope>"), ("chat_template", 5), ("chat_template", [{"name": "x"}])]
SAMPLE = "w3 w4 w5 unknownword w60"


def summary(checkpoint) -> tuple:
    tok = checkpoint.tokenizer
    weights = tuple(sorted((k, hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()) for k, v in checkpoint.weights.items()))
    return (checkpoint.config, weights, tuple(tok.encode(SAMPLE)), tok.chat_template, tok.bos_token, tok.eos_token, tok.add_bos)


def write_folder(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True)
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "model.norm.weight": (D,), "lm_head.weight": (VOCAB, D)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                   p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (D // 2, D),
                   p + "self_attn.v_proj.weight": (D // 2, D), p + "self_attn.o_proj.weight": (D, D),
                   p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D), p + "mlp.down_proj.weight": (D, F)}
    rng = np.random.default_rng(0)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    word_level_tokenizer(VOCAB).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))


def mutations(files: dict[str, bytes]) -> st.SearchStrategy[tuple[str, Mutation]]:
    """(file name, mutation) pairs over the folder's four files."""
    weights = files["model.safetensors"]
    header = 8 + int.from_bytes(weights[:8], "little")
    names = sorted(set(json.loads(weights[8:header])) - {"__metadata__"})
    relabel = st.tuples(st.sampled_from(names), st.sampled_from(["I32", "U32"])).map(
        lambda nd: Mutation(MALIGN, f"tensor {nd[0]} relabelled {nd[1]}", lambda b, nd=nd: safetensors_relabel(b, *nd)))
    config_text = json.dumps(CONFIG).encode()
    on = lambda name, strategy: strategy.map(lambda m, name=name: (name, m))  # noqa: E731
    return st.one_of(
        on("config.json", st.sampled_from(BAD_CONFIG).map(lambda kv: json_edit((kv[0],), kv[1]))),
        on("config.json", st.sampled_from([json_edit(("some_future_flag",), 1), json_edit(("torch_dtype",), ..., BENIGN),
                                           json_edit(("initializer_range",), 0.5, BENIGN),
                                           json_edit(("attention_dropout",), 0.3, BENIGN), with_bom()])),
        on("config.json", st.one_of(byte_mutations(config_text), non_utf8(config_text))),
        on("tokenizer_config.json", st.sampled_from(BAD_TOKENIZER_CONFIG).map(lambda kv: json_edit((kv[0],), kv[1]))),
        on("tokenizer_config.json", st.just(with_bom())),
        on("model.safetensors", st.one_of(byte_mutations(weights, header=header), relabel)),
        on("tokenizer.json", byte_mutations(files["tokenizer.json"], header=400)),
        st.tuples(st.sampled_from(["config.json", "model.safetensors", "tokenizer.json"]), path_mutations()),
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "model"
    write_folder(folder)
    return folder, summary(read_hf_dir(folder))


def test_hf_reader_contract(request, baseline):
    source, expected = baseline
    files = {name: (source / name).read_bytes() for name in ("model.safetensors", "tokenizer.json")}

    @fuzz_settings(request, 200)
    @given(mutations(files))
    def case(target):
        name, mutation = target
        with tempfile.TemporaryDirectory() as tmp:
            folder = pathlib.Path(tmp) / "in" / "model"
            shutil.copytree(source, folder)
            mutation.to(folder / name)
            run_case("HF folder", mutation, lambda: read_hf_dir(folder), summary, expected, (str(folder),))

    case()
    print(f"\nfuzz cases: {report_counts('HF')}")
