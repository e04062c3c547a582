"""Tests of the Hugging Face directory reader: weights, config, tokenizer and chat template against
transformers on tiny random checkpoints, and one-line errors for every kind of bad directory."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import load_file, save_file
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import harness.model.hf_reader as hf_reader
from harness.errors import InputError
from harness.model import families
from harness.model.families import common
from harness.model.hf_reader import model_config_from_hf, read_hf_dir, resolve_hf_cache
from harness.validation import short_repr

SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|end|>", "<|assistant|>"]
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
VARIED_TEXTS = [
    "",
    " ",
    "Hello world",
    "  leading and trailing spaces  ",
    "The capital of France is Paris.\nAnswer: (B",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\nAnswer: (A",
    "<s>already has a BOS</s>",
    "naïve café — 東京 🙂 \t tabs\r\nCRLF",
    "def f(x):\n    return x ** 2  # comment",
    "1234567890 3.14159 -42",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Question?\nChoices:\n(A) x\n(B) y"},
        {"role": "assistant", "content": "Answer: (B"},
        {"role": "user", "content": "Why?"},
    ],
]


# ---------------------------------------------------------------------------------------------
# Writers: a tokenizer trained here, a checkpoint written with numpy only, and transformers ones.


@pytest.fixture(scope="module")
def trained_tokenizer() -> tokenizers.Tokenizer:
    """A small byte-level BPE trained on Python's own docs, whose post-processor prepends <s>."""
    from pydoc_data.topics import topics

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(topics.values())[:40], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def write_tokenizer(directory: pathlib.Path, tok: tokenizers.Tokenizer, *, post_processor=True, **config) -> None:
    """tokenizer.json (+ tokenizer_config.json with a Phi-3-like template) into `directory`."""
    tok = tokenizers.Tokenizer.from_str(tok.to_str())
    if not post_processor:
        tok.post_processor = None
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "chat_template": PHI3_TEMPLATE} | config
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def write_numpy_llama(directory: pathlib.Path, tok: tokenizers.Tokenizer, **overrides) -> dict[str, np.ndarray]:
    """A 2-layer Llama directory written with safetensors.numpy alone (no transformers needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 48, "vocab_size": 400, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 128, "rope_theta": 500000.0, "rope_scaling": None,
              "tie_word_embeddings": False} | overrides
    d, q, kv, f, v = 32, 32, 16, 48, 400
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                   p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                   p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                   p + "mlp.down_proj.weight": (d, f)}
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    write_tokenizer(directory, tok)
    return tensors


@pytest.fixture(scope="module")
def numpy_llama(tmp_path_factory, trained_tokenizer):
    directory = tmp_path_factory.mktemp("numpy_llama")
    return directory, write_numpy_llama(directory, trained_tokenizer)


@pytest.fixture
def llama_copy(tmp_path, numpy_llama) -> pathlib.Path:
    """A fresh copy of the numpy Llama directory, for tests that break it."""
    return pathlib.Path(shutil.copytree(numpy_llama[0], tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory, trained_tokenizer):
    """Tiny random Llama / Phi-3 checkpoints saved by transformers: name → (dir, model)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=trained_tokenizer.get_vocab_size(),
                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    specs = {
        "llama": (transformers.LlamaConfig(**common, rope_theta=50000.0), {}),
        "llama_sharded": (transformers.LlamaConfig(**common), {"max_shard_size": "40KB"}),
        "llama_tied": (transformers.LlamaConfig(**common, tie_word_embeddings=True), {}),
        "phi3": (transformers.Phi3Config(**common, sliding_window=100, rms_norm_eps=1e-5), {}),
    }
    out = {}
    for name, (config, save_kwargs) in specs.items():
        model_class = transformers.Phi3ForCausalLM if config.model_type == "phi3" else transformers.LlamaForCausalLM
        model = model_class(config).eval()
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory, safe_serialization=True, **save_kwargs)
        write_tokenizer(directory, trained_tokenizer)
        out[name] = (directory, model)
    bf16_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).to(torch.bfloat16).eval()
    directory = tmp_path_factory.mktemp("llama_bf16")
    bf16_model.save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory, trained_tokenizer)
    out["llama_bf16"] = (directory, bf16_model)
    return out


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Weights and config.


def test_numpy_checkpoint_round_trips(numpy_llama):
    directory, written = numpy_llama
    ckpt = read_hf_dir(directory)
    assert set(ckpt.weights) == set(written)
    for name, array in written.items():
        np.testing.assert_array_equal(ckpt.weights[name], array, err_msg=name)
    assert ckpt.config.rope_base == 500000.0 and ckpt.config.d_ffn == 48 and ckpt.config.n_kv_heads == 2
    assert ckpt.config.sliding_window is None


def test_dtype_argument_casts(numpy_llama):
    directory, written = numpy_llama
    ckpt = read_hf_dir(directory, dtype=np.float16)
    embed = ckpt.weights["model.embed_tokens.weight"]
    assert embed.dtype == np.float16
    np.testing.assert_array_equal(embed, written["model.embed_tokens.weight"].astype(np.float16))
    with pytest.raises(InputError, match="int32"):
        read_hf_dir(directory, dtype=np.int32)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["llama", "llama_sharded", "llama_tied", "llama_bf16"])
def test_llama_weights_equal_state_dict(hf_checkpoints, name):
    directory, model = hf_checkpoints[name]
    if name == "llama_sharded":
        assert (directory / "model.safetensors.index.json").exists()
        assert len(list(directory.glob("model-*.safetensors"))) > 1
    expected = state_dict_numpy(model)
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    ckpt = read_hf_dir(directory)
    assert set(ckpt.weights) == set(expected)
    for key, array in expected.items():
        assert ckpt.weights[key].dtype == np.float32
        np.testing.assert_array_equal(ckpt.weights[key], array, err_msg=key)


@pytest.mark.reference
def test_phi3_split_pieces_equal_fused_rows(hf_checkpoints):
    directory, model = hf_checkpoints["phi3"]
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    q_rows, kv_rows = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    ckpt = read_hf_dir(directory)
    state = state_dict_numpy(model)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        fused = state.pop(p + "self_attn.qkv_proj.weight")
        pieces = [ckpt.weights[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
        assert [x.shape[0] for x in pieces] == [q_rows, kv_rows, kv_rows]
        np.testing.assert_array_equal(np.concatenate(pieces), fused)
        np.testing.assert_array_equal(pieces[1], fused[q_rows:q_rows + kv_rows])
        gate_up = state.pop(p + "mlp.gate_up_proj.weight")
        np.testing.assert_array_equal(ckpt.weights[p + "mlp.gate_proj.weight"], gate_up[: cfg.intermediate_size])
        np.testing.assert_array_equal(ckpt.weights[p + "mlp.up_proj.weight"], gate_up[cfg.intermediate_size:])
    for key, array in state.items():  # everything else passes through unchanged
        np.testing.assert_array_equal(ckpt.weights[key], array, err_msg=key)


@pytest.mark.reference
def test_phi3_split_matches_torch_projections(hf_checkpoints):
    """The split q/k/v rows reproduce what the torch module computes from the fused weight."""
    torch = pytest.importorskip("torch")
    directory, model = hf_checkpoints["phi3"]
    ckpt = read_hf_dir(directory)
    x = np.random.default_rng(1).standard_normal((5, model.config.hidden_size)).astype(np.float32)
    layer = model.model.layers[1]
    with torch.no_grad():
        fused_out = layer.self_attn.qkv_proj(torch.from_numpy(x)).numpy()
        mlp_out = layer.mlp.gate_up_proj(torch.from_numpy(x)).numpy()
    p = "model.layers.1."
    ours = np.concatenate([x @ ckpt.weights[p + f"self_attn.{n}_proj.weight"].T for n in "qkv"], axis=-1)
    np.testing.assert_allclose(ours, fused_out, rtol=1e-5, atol=1e-6)
    ours_mlp = np.concatenate([x @ ckpt.weights[p + f"mlp.{n}_proj.weight"].T for n in ("gate", "up")], axis=-1)
    np.testing.assert_allclose(ours_mlp, mlp_out, rtol=1e-5, atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["llama", "llama_tied", "phi3"])
def test_config_fields_match_transformers(hf_checkpoints, name):
    directory, model = hf_checkpoints[name]
    cfg = model.config
    got = read_hf_dir(directory).config
    assert got.architecture == cfg.model_type
    assert (got.d_model, got.n_layers, got.n_heads, got.n_kv_heads, got.d_ffn, got.vocab_size) == (
        cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
        cfg.intermediate_size, cfg.vocab_size)
    assert got.head_dim == model.model.layers[0].self_attn.head_dim
    assert got.rope_base == cfg.rope_parameters["rope_theta"]
    assert got.norm_eps == cfg.rms_norm_eps
    assert got.tie_embeddings == cfg.tie_word_embeddings
    assert got.max_context == cfg.max_position_embeddings
    assert got.sliding_window == getattr(cfg, "sliding_window", None)


def test_old_style_phi3_config_reads_like_phi3_mini(llama_copy):
    """A Phi-3-mini-4k-style config.json (top-level rope_theta, rope_scaling null) gives its figures."""
    raw = {"model_type": "phi3", "hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064, "rope_theta": 10000.0,
           "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "sliding_window": 2047,
           "tie_word_embeddings": False, "rope_scaling": None, "hidden_act": "silu"}
    from harness.model.hf_reader import model_config_from_hf

    cfg = model_config_from_hf(raw, source="config.json")
    assert (cfg.head_dim, cfg.sliding_window, cfg.max_context, cfg.rope_base) == (96, 2047, 4096, 10000.0)
    assert cfg.expected_shapes()["model.layers.0.self_attn.k_proj.weight"] == (3072, 3072)


# ---------------------------------------------------------------------------------------------
# Tokenizer and chat template against transformers' AutoTokenizer.


def reference_ids(reference, text: str) -> list[int]:
    """transformers' ids, except the one deliberate difference: ChatTokenizer.encode never doubles BOS
    when the text already starts with it (transformers prepends a second one)."""
    ids = reference(text)["input_ids"]
    bos = reference.bos_token_id
    return ids[1:] if len(ids) >= 2 and ids[0] == ids[1] == bos else ids


@pytest.mark.reference
@pytest.mark.parametrize("post_processor", [True, False])
def test_token_ids_equal_autotokenizer(tmp_path, trained_tokenizer, post_processor):
    transformers = pytest.importorskip("transformers")
    write_tokenizer(tmp_path, trained_tokenizer, post_processor=post_processor)
    from harness.model.hf_reader import read_hf_tokenizer

    ours = read_hf_tokenizer(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.add_bos is post_processor
    for text in VARIED_TEXTS:
        assert ours.encode(text) == reference_ids(reference, text), text
        assert ours.encode(text, add_bos=False) == reference(text, add_special_tokens=False)["input_ids"], text


@pytest.fixture(scope="module")
def llama_tokenizers(hf_checkpoints):
    """(ours, transformers' AutoTokenizer) for the random Llama directory."""
    transformers = pytest.importorskip("transformers")
    directory, _ = hf_checkpoints["llama"]
    return read_hf_dir(directory).tokenizer, transformers.AutoTokenizer.from_pretrained(directory)


@pytest.mark.reference
@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
                  | st.lists(st.sampled_from(SPECIALS + ["A", " (", "\n", "é", "ab"]), max_size=12).map("".join))
def test_token_ids_equal_autotokenizer_property(llama_tokenizers, text):
    ours, reference = llama_tokenizers
    assert ours.encode(text) == reference_ids(reference, text)


@pytest.mark.reference
@pytest.mark.parametrize("source", ["tokenizer_config", "saved_by_transformers"])
def test_chat_template_equals_apply_chat_template(tmp_path, hf_checkpoints, source):
    transformers = pytest.importorskip("transformers")
    directory, _ = hf_checkpoints["phi3"]
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    if source == "saved_by_transformers":  # newer transformers writes chat_template.jinja
        directory = pathlib.Path(shutil.copytree(directory, tmp_path / "resaved"))
        (directory / "tokenizer_config.json").unlink()
        reference.save_pretrained(directory)
        assert (directory / "chat_template.jinja").is_file()
        reference = transformers.AutoTokenizer.from_pretrained(directory)
    ours = read_hf_dir(directory).tokenizer
    assert (ours.bos_token, ours.eos_token) == (reference.bos_token, reference.eos_token)
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            got = ours.render_chat(messages, add_generation_prompt=add_generation_prompt)
            assert got == expected
            assert ours.encode(got) == reference_ids(reference, expected)


def test_chat_template_file_takes_priority(llama_copy):
    (llama_copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}|jinja")
    assert read_hf_dir(llama_copy).tokenizer.render_chat([{"role": "user", "content": "hi"}]) == "hi|jinja"


def test_explicit_add_bos_token_wins_with_a_warning(llama_copy, trained_tokenizer):
    write_tokenizer(llama_copy, trained_tokenizer, post_processor=True, add_bos_token=False)
    with pytest.warns(UserWarning, match="add_bos_token=False"):
        tok = read_hf_dir(llama_copy).tokenizer
    assert tok.add_bos is False
    assert tok.encode("Hello")[0] != tok.token_id("<s>")


def test_added_token_dict_and_eos_appending_post_processor(llama_copy, trained_tokenizer):
    write_tokenizer(llama_copy, trained_tokenizer, bos_token={"__type": "AddedToken", "content": "<s>"})
    assert read_hf_dir(llama_copy).tokenizer.bos_token == "<s>"
    tok = tokenizers.Tokenizer.from_file(str(llama_copy / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.save(str(llama_copy / "tokenizer.json"))
    with pytest.raises(InputError, match=r"tokenizer\.json: post_processor appends \['</s>'\]"):
        read_hf_dir(llama_copy)


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the file and the field / tensor.


def edit_config(directory: pathlib.Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def assert_input_error(directory_or_path, *fragments):
    with pytest.raises(InputError) as info:
        read_hf_dir(directory_or_path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_directory(tmp_path):
    assert_input_error(tmp_path / "nope", "nope", "not a directory")


@pytest.mark.parametrize("filename", ["config.json", "tokenizer.json"])
def test_missing_file(llama_copy, filename):
    (llama_copy / filename).unlink()
    assert_input_error(llama_copy, str(llama_copy / filename), "missing")


def test_missing_weights(llama_copy):
    (llama_copy / "model.safetensors").rename(llama_copy / "pytorch_model.safetensors")
    assert_input_error(llama_copy, str(llama_copy), "model.safetensors", "pytorch_model.safetensors")


def test_truncated_safetensors(llama_copy):
    path = llama_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(llama_copy, str(path), "not a readable safetensors file", "incomplete")


def test_garbage_safetensors(llama_copy):
    path = llama_copy / "model.safetensors"
    path.write_bytes(np.random.default_rng(3).bytes(4096))
    assert_input_error(llama_copy, str(path), "not a readable safetensors file")


def test_garbage_json(llama_copy):
    (llama_copy / "config.json").write_text("{not json")
    assert_input_error(llama_copy, str(llama_copy / "config.json"), "not valid JSON")


def test_missing_tensor(llama_copy):
    path = llama_copy / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path))
    assert_input_error(llama_copy, str(path), "missing weight model.layers.1.mlp.up_proj.weight")


def test_unexpected_bias_tensor(llama_copy):
    path = llama_copy / "model.safetensors"
    tensors = load_file(str(path)) | {"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}
    save_file(tensors, str(path))
    assert_input_error(llama_copy, str(path), "unexpected weight model.layers.0.self_attn.q_proj.bias")


def test_shape_mismatch(llama_copy):
    edit_config(llama_copy, intermediate_size=64)
    assert_input_error(llama_copy, "model.safetensors", "model.layers.0.mlp.gate_proj.weight", "(48, 32)", "(64, 32)")


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"model_type": "mamba"}, ["model_type 'mamba'"]),
        ({"hidden_size": ...}, ["field hidden_size is missing"]),
        ({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
         ["key 'rope_scaling' = {'type': 'longrope'", "expected null"]),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
         ["key 'rope_parameters.rope_type' = 'longrope' is not supported"]),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "factor": 8.0}},
         ["key 'rope_parameters.factor' = 8.0 is not supported"]),
        ({"partial_rotary_factor": 0.5}, ["key 'partial_rotary_factor' = 0.5 is not supported"]),
        ({"attention_bias": True}, ["key 'attention_bias' = True is not supported", "expected false"]),
        ({"hidden_act": "gelu"}, ["key 'hidden_act' = 'gelu' is not supported", "expected 'silu'"]),
        ({"sliding_window": 64}, ["key 'sliding_window' = 64 is not supported", "llama"]),
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, ["key 'quantization_config' = {'quant_method'"]),
        ({"num_key_value_heads": 3}, ["n_kv_heads=3"]),
        ({"intermediate_size": "96"}, ["field intermediate_size = '96' (str)"]),
        ({"rope_theta": "big"}, ["field rope_theta = 'big' (str)"]),
        ({"rms_norm_eps": -1e-6}, ["field rms_norm_eps = -1e-06"]),
        ({"tie_word_embeddings": "false"}, ["field tie_word_embeddings = 'false' (str)"]),
        ({"num_hidden_layers": True}, ["field num_hidden_layers = True (bool)"]),
        ({"eos_token_id": 400}, ["eos_token_id 400 is outside vocab_size 400"]),
    ],
)
def test_unsupported_config(llama_copy, changes, fragments):
    edit_config(llama_copy, **changes)
    assert_input_error(llama_copy, str(llama_copy / "config.json"), *fragments)


def test_tied_but_different_lm_head(llama_copy):
    edit_config(llama_copy, tie_word_embeddings=True)
    assert_input_error(llama_copy, "model.safetensors", "tie_word_embeddings", "lm_head.weight differs")


def test_tied_equal_lm_head_is_dropped(llama_copy):
    path = llama_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(path))
    edit_config(llama_copy, tie_word_embeddings=True)
    ckpt = read_hf_dir(llama_copy)
    assert "lm_head.weight" not in ckpt.weights and ckpt.config.tie_embeddings


def test_tokenizer_larger_than_model_vocab(llama_copy):
    edit_config(llama_copy, vocab_size=100)
    assert_input_error(llama_copy, "model.safetensors", "(100, 32)")  # weights are checked first
    path = llama_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:100]
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:100]
    save_file(tensors, str(path))
    assert_input_error(llama_copy, "tokenizer.json", "vocab_size 100")


def split_into_shards(directory: pathlib.Path) -> tuple[pathlib.Path, dict[str, str]]:
    """Rewrite model.safetensors as two shards plus model.safetensors.index.json."""
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / shard))
        weight_map |= {n: shard for n in part}
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index, weight_map


def test_sharded_numpy_checkpoint_reads_like_single(llama_copy, numpy_llama):
    split_into_shards(llama_copy)
    weights = read_hf_dir(llama_copy).weights
    assert set(weights) == set(numpy_llama[1])
    for name, array in numpy_llama[1].items():
        np.testing.assert_array_equal(weights[name], array)


def test_missing_shard(llama_copy):
    index, _ = split_into_shards(llama_copy)
    (llama_copy / "model-00002-of-00002.safetensors").unlink()
    assert_input_error(llama_copy, str(index), "shard 'model-00002-of-00002.safetensors'", "does not exist")


def test_tensor_listed_in_index_missing_from_shard(llama_copy):
    index, weight_map = split_into_shards(llama_copy)
    shard = llama_copy / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    victim = sorted(tensors)[0]
    del tensors[victim]
    save_file(tensors, str(shard))
    assert_input_error(llama_copy, str(shard), f"tensor {victim} listed in model.safetensors.index.json is missing")


def test_tensor_not_listed_in_index(llama_copy):
    index, weight_map = split_into_shards(llama_copy)
    victim = sorted(weight_map)[-1]
    del weight_map[victim]
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert_input_error(llama_copy, f"tensor {victim} is not listed")


# ---------------------------------------------------------------------------------------------
# The Hugging Face cache, offline.


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE=1 and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def lay_out_cache(cache: pathlib.Path, model_id: str, source: pathlib.Path) -> pathlib.Path:
    """The hub cache layout: blobs/<hash> files, snapshots/<commit>/<name> symlinks, refs/main."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for k, file in enumerate(sorted(source.iterdir())):
        blob = repo / "blobs" / f"{k:064x}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(pathlib.Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_resolve_hf_cache(tmp_path, monkeypatch, numpy_llama, no_network):
    cache = tmp_path / "hub"
    snapshot = lay_out_cache(cache, "org/tiny-llama", numpy_llama[0])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    resolved = resolve_hf_cache("org/tiny-llama")
    assert resolved.resolve() == snapshot.resolve()
    ckpt = read_hf_dir(resolved)
    np.testing.assert_array_equal(ckpt.weights["model.norm.weight"], numpy_llama[1]["model.norm.weight"])


def test_resolve_hf_cache_follows_hf_home(tmp_path, monkeypatch, numpy_llama, no_network):
    snapshot = lay_out_cache(tmp_path / "home" / "hub", "org/tiny-llama", numpy_llama[0])
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_hf_cache("org/tiny-llama").resolve() == snapshot.resolve()


@pytest.mark.parametrize("model_id", ["org/absent-model", "not a valid id!"])
def test_resolve_hf_cache_absent(tmp_path, monkeypatch, numpy_llama, no_network, model_id):
    cache = tmp_path / "hub"
    lay_out_cache(cache, "org/tiny-llama", numpy_llama[0])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(InputError) as info:
        resolve_hf_cache(model_id)
    message = str(info.value)
    assert f"model id {model_id!r} is not in the local Hugging Face cache ({cache})" in message
    assert "pass a directory or .gguf path" in message


def test_integer_bits_are_not_weights(llama_copy):
    path = llama_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].view(np.int32)  # F32 bits relabelled I32
    save_file(tensors, str(path))
    assert_input_error(llama_copy, str(path), "tensor model.norm.weight has dtype int32, expected a float dtype")


def test_config_read_as_utf8_with_bom_and_no_effect_keys_listed(llama_copy):
    path = llama_copy / "config.json"
    config = json.loads(path.read_text()) | {"initializer_range": 0.5, "use_cache": False}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(config).encode())
    assert read_hf_dir(llama_copy).ignored_fields == ("architectures", "initializer_range", "use_cache")
    path.write_bytes(json.dumps(config).encode().replace(b'"llama"', b'"ll\xe9ama"'))
    assert_input_error(llama_copy, str(path), "not UTF-8", "line 1")
    path.write_text(json.dumps(config)[:-1] + ', "vocab_size": 400}')
    assert_input_error(llama_copy, str(path), "'vocab_size' appears twice")


def test_unknown_config_key_is_refused_naming_file_key_and_value(llama_copy):
    edit_config(llama_copy, some_future_flag=1)
    assert_input_error(llama_copy, f"{llama_copy / 'config.json'}: key 'some_future_flag' = 1 is not supported "
                                   "(this harness runs llama maths as harness.model.families.llama says; unknown keys may change the maths)")


# ---------------------------------------------------------------------------------------------
# Every config.json key is used, provably harmless, or pinned to the supported value; the rest is refused.

# HuggingFaceTB/SmolLM2-135M-Instruct config.json, hub revision eba0825ddc7730d24a88685a6c0a078cf919b383
# (huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/eba0825ddc7730d24a88685a6c0a078cf919b383/config.json).
SMOLLM2_135M_INSTRUCT = {
    "_name_or_path": "HuggingFaceTB/smollm2-135M-8k-lc100k-mix1-ep2", "architectures": ["LlamaForCausalLM"],
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 576, "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
    "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": True, "vocab_size": 49152,
}
# Later uploads of SmolLM2 configs (and every fine-tune saved from SmolLM2-135M-Instruct, e.g.
# huggingface.co/VIshalChak/SmolLM2-FT-DPO/blob/main/config.json) also carry transformers.js's runtime hints.
TRANSFORMERS_JS = {"transformers.js_config": {"kv_cache_dtype": {"fp16": "float16", "q4f16": "float16"}}}
# meta-llama/Meta-Llama-3-8B-Instruct config.json after hub commit 4d6c61da057c45bfc4dc4d3bfa5a691ecb9ce0cf
# (eos_token_id 128001 -> 128009, <|eot_id|>); the same keys and values are in the copies of it saved by fine-tunes,
# e.g. huggingface.co/zakkosi/jhcode-meta-llama3_eng/blob/main/config.json.
META_LLAMA_3_8B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256,
}
# meta-llama/Llama-3.2-1B-Instruct config.json as quoted in kevinstephano/thunder_model_blocks hf_llama/llama_config.py
# (without the "_commit_hash" transformers adds on loading). Llama-3.1 and 3.2 use "llama3" RoPE scaling, which
# rescales the RoPE frequencies at every position: the builder runs plain RoPE, so these stay refused.
LLAMA_3_2_1B_INSTRUCT = {
    "_name_or_path": "meta-llama/Llama-3.2-1B-Instruct", "architectures": ["LlamaForCausalLM"],
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
    "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}
# microsoft/Phi-3-mini-4k-instruct config.json (2024-07 revision: attention_bias added, transformers 4.40.2); the same
# file tests/standins.py phi3_config() gives with tiny widths.
PHI3_MINI_4K_INSTRUCT = {
    "_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config", "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"},
    "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": True, "vocab_size": 32064,
}
REAL_CONFIGS = {
    "SmolLM2-135M-Instruct": (SMOLLM2_135M_INSTRUCT, ("llama", 576, 30, 9, 3, 64, 1536, 49152, 100000.0, True, 8192, None)),
    "SmolLM2-135M-Instruct+transformers.js": (SMOLLM2_135M_INSTRUCT | TRANSFORMERS_JS,
                                              ("llama", 576, 30, 9, 3, 64, 1536, 49152, 100000.0, True, 8192, None)),
    "Meta-Llama-3-8B-Instruct": (META_LLAMA_3_8B_INSTRUCT,
                                 ("llama", 4096, 32, 32, 8, 128, 14336, 128256, 500000.0, False, 8192, None)),
    "Phi-3-mini-4k-instruct": (PHI3_MINI_4K_INSTRUCT,
                               ("phi3", 3072, 32, 32, 32, 96, 8192, 32064, 10000.0, False, 4096, 2047)),
}


def figures(cfg) -> tuple:
    return (cfg.architecture, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ffn,
            cfg.vocab_size, cfg.rope_base, cfg.tie_embeddings, cfg.max_context, cfg.sliding_window)


def family_of(raw):
    return families.for_hf(raw["model_type"], "config.json")


@pytest.mark.parametrize("name", sorted(families.families()))
def test_the_three_key_lists_are_disjoint(name):
    family = families.families()[name]
    used, harmless, pinned = family.hf_used_keys, set(family.hf_no_effect_keys), set(family.hf_supported_values)
    assert not (used & harmless) and not (used & pinned) and not (harmless & pinned)


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_config_files_load(name):
    raw, expected = REAL_CONFIGS[name]
    assert figures(model_config_from_hf(raw, source=f"{name}/config.json")) == expected
    assert hf_reader.ignored_config_keys(raw) == tuple(sorted(set(raw) & set(family_of(raw).hf_no_effect_keys)))
    assert set(raw) <= family_of(raw).hf_known_keys


def test_standin_phi3_config_has_the_real_keys():
    from standins import phi3_config

    assert set(phi3_config()) == set(PHI3_MINI_4K_INSTRUCT)
    assert {k: v for k, v in phi3_config().items() if k not in TINY_WIDTHS} == {
        k: v for k, v in PHI3_MINI_4K_INSTRUCT.items() if k not in TINY_WIDTHS}


TINY_WIDTHS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "num_hidden_layers")


@pytest.mark.parametrize("version", ["Llama-3.2-1B-Instruct", "Llama-3.1-8B-Instruct"])
def test_llama3_rope_scaling_is_read(version):
    factor = 32.0 if version == "Llama-3.2-1B-Instruct" else 8.0
    raw = LLAMA_3_2_1B_INSTRUCT | {"rope_scaling": LLAMA_3_2_1B_INSTRUCT["rope_scaling"] | {"factor": factor}}
    scaling = model_config_from_hf(raw, source="ckpt/config.json").rope_scaling
    assert (scaling.kind, scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_max) == (
        "llama3", factor, 1.0, 4.0, 8192)


def test_linear_rope_scaling_is_refused_in_one_line():
    raw = LLAMA_3_2_1B_INSTRUCT | {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    with pytest.raises(InputError) as info:
        model_config_from_hf(raw, source="ckpt/config.json")
    message = str(info.value)
    assert message.startswith("ckpt/config.json: key 'rope_scaling' = {") and "'rope_type': 'linear'" in message
    assert "is not supported (expected null or rope_type 'llama3'" in message and "\n" not in message


KNOWN_KEYS = frozenset().union(*(f.hf_known_keys for f in families.families().values()))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(base=st.sampled_from(sorted(REAL_CONFIGS)), key=st.text(min_size=1, max_size=30), value=JSON_VALUES)
def test_any_unknown_key_is_refused_in_one_line(base, key, value):
    hypothesis.assume(key not in KNOWN_KEYS)
    raw = REAL_CONFIGS[base][0] | {key: value}
    with pytest.raises(InputError) as info:
        model_config_from_hf(raw, source="some/dir/config.json")
    message = str(info.value)
    assert message.startswith(f"some/dir/config.json: key {key!r} = ") and "\n" not in message
    family = family_of(raw).name
    assert message.endswith(f" is not supported (this harness runs {family} maths as harness.model.families.{family} "
                            "says; unknown keys may change the maths)")


NO_EFFECT_ANY_VALUE = sorted(set(common.NO_EFFECT_KEYS) - {"bos_token_id", "eos_token_id", "pad_token_id"})


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(base=st.sampled_from(sorted(REAL_CONFIGS)), key=st.sampled_from(NO_EFFECT_ANY_VALUE), value=JSON_VALUES)
def test_no_effect_keys_accept_any_value_and_are_listed(base, key, value):
    """Names, bookkeeping and training-only settings (dropout of any rate) change nothing; the token ids, also
    without effect on the maths, are only checked to lie inside the vocabulary (test_unsupported_config)."""
    raw, expected = REAL_CONFIGS[base]
    changed = raw | {key: value}
    assert figures(model_config_from_hf(changed, source="config.json")) == expected
    assert key in hf_reader.ignored_config_keys(changed)


@pytest.mark.parametrize(("key", "value", "why"), [
    ("hidden_act", "gelu_pytorch_tanh", "expected 'silu'"),
    ("hidden_act", None, "expected 'silu'"),
    ("attention_bias", True, "expected false"),
    ("attention_bias", 0, "expected false"),
    ("mlp_bias", True, "expected false"),
    ("pretraining_tp", 2, "expected 1"),
    ("pretraining_tp", True, "expected 1"),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "expected null"),
    ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "expected null"),
    ("rope_scaling", "linear", "expected null"),
    ("rope_interleaved", True, "expected false"),
    ("partial_rotary_factor", 0.5, "expected 1.0"),
    ("original_max_position_embeddings", 0, "expected a positive int"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "expected null"),
    ("original_max_position_embeddings", "4096", "expected a positive int"),
])
@pytest.mark.parametrize("base", ["Meta-Llama-3-8B-Instruct", "Phi-3-mini-4k-instruct"])
def test_pinned_key_with_another_value_is_refused(base, key, value, why):
    raw = REAL_CONFIGS[base][0]
    assert key in family_of(raw).hf_supported_values
    with pytest.raises(InputError) as info:
        model_config_from_hf(raw | {key: value}, source="d/config.json")
    supported = family_of(raw).hf_supported_values[key][1]
    assert supported.startswith(why)
    assert str(info.value) == f"d/config.json: key {key!r} = {short_repr(value)} is not supported ({supported})"


@pytest.mark.parametrize(("key", "value"), [
    ("rope_scaling", {"rope_type": "default"}), ("partial_rotary_factor", 1.0), ("partial_rotary_factor", None),
    ("original_max_position_embeddings", 131072), ("rope_interleaved", False), ("mlp_bias", False),
])
def test_pinned_key_with_the_supported_value_passes(key, value):
    raw, expected = REAL_CONFIGS["Meta-Llama-3-8B-Instruct"]
    assert figures(model_config_from_hf(raw | {key: value}, source="config.json")) == expected
