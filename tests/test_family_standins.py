"""Checks of tests/family_standins.py: each family's folder is what transformers writes and reads back, its features
are exercised at a 16-token sequence, and llama.cpp's own converter turns it into a GGUF (slow)."""

from __future__ import annotations

import json

import family_standins as fs
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 16


def _tokens(vocab_size: int, *, batch: int = 2, seq: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab_size, size=(batch, seq))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Every family written once (float32, seed 0); a dict name -> folder."""
    root = tmp_path_factory.mktemp("families")
    return {name: fs.write_hf(name, root / name) for name in fs.FAMILIES}


@pytest.mark.parametrize("name", fs.FAMILIES)
def test_folder_loads_back_and_reference_is_finite(folders, name):
    folder = folders[name]
    config = json.loads((folder / "config.json").read_text())
    assert tuple(sorted(config)) == fs.CONFIG_KEYS[name]
    assert config["architectures"] == [fs._CLASSES[name][1]]
    for file in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / file).is_file()
    tokens = _tokens(min(config["vocab_size"], 500))
    logits, hidden = fs.reference(folder, tokens)
    d_model = config.get("hidden_size", config.get("n_embd"))
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    assert logits.shape == (2, SEQ, config["vocab_size"]) and logits.dtype == np.float32
    assert np.isfinite(logits).all() and logits.std() > 0.1
    assert len(hidden) == n_layers + 1
    assert all(h.shape == (2, SEQ, d_model) and np.isfinite(h).all() for h in hidden)


def test_weights_follow_the_seed(tmp_path):
    from safetensors.numpy import load_file

    a = load_file(str(fs.write_hf("qwen2", tmp_path / "a", seed=3) / "model.safetensors"))
    b = load_file(str(fs.write_hf("qwen2", tmp_path / "b", seed=3) / "model.safetensors"))
    c = load_file(str(fs.write_hf("qwen2", tmp_path / "c", seed=4) / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["model.norm.weight"], c["model.norm.weight"])
    # norms and biases are random, not transformers' ones / zeros
    assert np.abs(a["model.norm.weight"] - 1).max() > 0.1
    assert np.abs(a["model.layers.0.self_attn.q_proj.bias"]).max() > 0.05


def test_saved_dtype(tmp_path):
    from safetensors import safe_open

    folder = fs.write_hf("llama", tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["mistral", "gemma2", "gemma3"])
def test_sliding_windows_are_shorter_than_the_test_sequence(folders, name):
    config = json.loads((folders[name] / "config.json").read_text())
    assert config["sliding_window"] < SEQ
    if name != "mistral":
        assert {"sliding_attention", "full_attention"} <= set(config["layer_types"])


def test_mistral_window_changes_the_logits_only_past_it(folders):
    """With the window lifted the first `window` positions agree and the later ones differ: the window is exercised."""
    folder = folders["mistral"]
    tokens = _tokens(500, batch=1)
    windowed, _ = fs.reference(folder, tokens)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager",
                                                              sliding_window=None).eval()
    with torch.no_grad():
        full = model(torch.as_tensor(tokens)).logits.numpy()
    window = fs.TINY_CONFIGS["mistral"]["sliding_window"]
    np.testing.assert_allclose(windowed[:, :window], full[:, :window], atol=1e-5)
    assert np.abs(windowed[:, window:] - full[:, window:]).max() > 1e-3


def test_llama3_rope_has_all_three_regimes():
    model = transformers.LlamaForCausalLM(fs.tiny_config("llama31"))
    head_dim = 16
    base = 1.0 / (500000.0 ** (np.arange(0, head_dim, 2) / head_dim))
    divisor = base / model.model.rotary_emb.inv_freq.numpy()
    kept, divided = np.isclose(divisor, 1, rtol=1e-5), np.isclose(divisor, 8, rtol=1e-5)
    assert kept.any() and divided.any() and (~kept & ~divided).any()


def test_longrope_switches_factors_past_the_original_length(folders):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folders["phi3_longrope"])).eval()
    rope = model.model.rotary_emb
    params = fs.TINY_CONFIGS["phi3_longrope"]
    original = params["original_max_position_embeddings"]
    base = 10000.0 ** (np.arange(0, 16, 2) / 16)
    assert rope.attention_scaling == pytest.approx(2 ** 0.5)  # sqrt(1 + ln(64/8) / ln(8))
    for seq, factors in ((original, "short_factor"), (original + 1, "long_factor"), (SEQ, "long_factor")):
        with torch.no_grad():
            model(torch.as_tensor(_tokens(500, batch=1, seq=seq)))
        np.testing.assert_allclose(1 / (rope.inv_freq.numpy() * base), params["rope_scaling"][factors], rtol=1e-5)


def test_tokenizer_ids_fit_the_vocabulary(folders):
    import tokenizers

    for name, folder in folders.items():
        tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
        assert max(tok.get_vocab(with_added_tokens=True).values()) < vocab_size, name
        assert tok.encode("The heart pumps blood.").ids


def test_tokenizer_model_matches_tokenizer_json():
    """The hand-serialised tokenizer.model encodes exactly as the tokenizer.json beside it."""
    spm = pytest.importorskip("sentencepiece")
    import standins
    import tokenizers

    processor = spm.SentencePieceProcessor(model_proto=fs.sentencepiece_model_proto())
    tok = tokenizers.Tokenizer.from_str(fs._llama_tokenizer_json())
    assert processor.vocab_size() == fs.SPM_VOCAB and (processor.bos_id(), processor.eos_id()) == (1, 2)
    for line in standins.CORPUS.splitlines() + ["Héllo wörld ☃ 123  two  spaces", " leading", "tab\there"]:
        assert processor.encode(line) == tok.encode(line, add_special_tokens=False).ids, line


@pytest.mark.parametrize("name", sorted(fs.REAL_PARAMETERS))
def test_real_width_configs_read_in_transformers(name):
    config = fs.real_width(name)
    model_type = config.pop("model_type")
    built = transformers.AutoConfig.for_model(model_type, **config)
    assert type(built).__name__ == fs._CLASSES[name][0]
    fresh = fs.real_width(name)
    fresh["vocab_size"] = -1
    assert fs.real_width(name)["vocab_size"] > 0  # a fresh copy each call


@pytest.mark.parametrize("name", sorted(fs.REAL_PARAMETERS))
def test_real_width_parameter_counts(name):
    """Built on the meta device (no memory): the published parameter counts, so the numbers above are the real ones."""
    config = fs.real_width(name)
    built = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(built)
    assert sum(p.numel() for p in model.parameters()) == fs.REAL_PARAMETERS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(fs.GGUF_ARCH))
def test_llama_cpp_converter_writes_the_family(tmp_path, name):
    gguf = pytest.importorskip("gguf")
    if name in fs.NEEDS_SENTENCEPIECE:
        pytest.importorskip("sentencepiece")
    folder = fs.write_hf(name, tmp_path / name, vocab=fs.GGUF_VOCAB[name])
    if name in fs.GGUF_UNCONVERTIBLE:
        with pytest.raises(RuntimeError, match="rotary_pct"):
            fs.write_gguf(name, folder, tmp_path / f"{name}.gguf")
        return
    path = fs.write_gguf(name, folder, tmp_path / f"{name}.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == fs.GGUF_ARCH[name]
    assert reader.fields["general.file_type"].contents() == 0  # ALL_F32
    config = json.loads((folder / "config.json").read_text())
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert [int(n) for n in embd.shape] == [config.get("hidden_size", config.get("n_embd")), config["vocab_size"]]


@pytest.mark.slow
def test_byte_level_families_need_the_real_vocabulary(tmp_path):
    """llama.cpp refuses a byte-level BPE whose pre-tokenizer hash it does not know (the tiny one)."""
    folder = fs.write_hf("gpt2", tmp_path / "gpt2")
    with pytest.raises(RuntimeError, match="pre-tokenizer was not recognized"):
        fs.write_gguf("gpt2", folder, tmp_path / "gpt2.gguf")
