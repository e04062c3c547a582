"""Llama-like families and RoPE scalings against transformers: Qwen2 (q/k/v biases; its optional sliding layers),
Mistral (a sliding window on every layer), Llama-3.1/3.2's llama3 RoPE scaling and Phi-3's longrope.

Each case is a tiny checkpoint written by transformers itself (tests/family_standins.py: save_pretrained, safetensors,
a tokenizer.json) and read with harness.model.sources.read_checkpoint; its logits and the residual stream before every
block (== transformers' hidden_states[L]) must equal transformers' float32 eager forward in all three forms.

Tolerance: max |ours - transformers| <= REL_TOL * max |transformers| over the whole [batch, seq, ...] array, with the
argmax of the logits equal everywhere. Both sides are float32; only the order of accumulation differs. Measured on
these 3-block models (2 x 24 tokens), identical in all three forms (max over blocks for the residuals):
    qwen2 1.1e-6 (logits) / 6.8e-7 (residuals); qwen2 with sliding layers 1.2e-6 / 8.6e-7; mistral 5.8e-7 / 3.4e-7;
    llama3 scaling 5.0e-7 / 3.8e-7; Phi-3 longrope 6.0e-7 / 2.7e-7; qwen2 GGUF (llama.cpp's converter, f32) 1.0e-6 /
    5.6e-7 (the residual before block 0, the embedding, is exact everywhere).

Each case also checks that the feature matters: the harness with the feature switched off (no biases, no window, no
scaling, no attention factor) differs from transformers by far more than the tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest

import family_standins as fs
from harness.errors import InputError
from harness.model import blocks, capture, forms
from harness.model.config import Checkpoint, Weights
from harness.model.forms import Form
from harness.model.hf_reader import ignored_config_keys, model_config_from_hf
from harness.model.sources import read_checkpoint

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.reference

REL_TOL = 1e-5
FORMS = list(Form)
SEQ = 24

# Llama-3.1's llama3 scaling with a 32-token original context (theta 1e4, head_dim 16): of the 8 frequencies the one
# of wavelength 6.3 is kept (< 32 / 4), 19.9 is smoothed, 63 and longer are divided by 8, all inside a test sequence.
LLAMA3_SMALL = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32}

# case -> (family_standins name, config overrides); every sequence here (24 tokens) exceeds the windows (4, 8) and
# stays inside longrope's original context (32), where Phi-3 runs its short factors.
CASES = {
    "qwen2": ("qwen2", {}),
    "qwen2_sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "mistral": ("mistral", {}),  # sliding_window 8
    "llama3": ("llama31", dict(rope_theta=10000.0, rope_scaling=LLAMA3_SMALL)),
    "longrope": ("phi3_longrope", dict(original_max_position_embeddings=32, max_position_embeddings=256)),
}


def assert_close(ours, theirs, what: str, *, logits: bool = False) -> float:
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs transformers' {theirs.shape}"
    scale = float(np.abs(theirs).max())
    rel = float(np.abs(ours - theirs).max()) / scale
    print(f"\n{what}: max abs difference {rel:.3g} of the scale {scale:.3g} (tolerance {REL_TOL:g})")
    assert rel <= REL_TOL, f"{what}: max abs difference is {rel:.3g} of the scale {scale:.3g} > {REL_TOL:g}"
    if logits:
        agree = (ours.argmax(-1) == theirs.argmax(-1)).mean()
        assert agree == 1.0, f"{what}: argmax agrees at only {agree:.1%} of positions"
    return rel


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(case name, checkpoint read by the harness, tokens, transformers' logits, transformers' hidden_states)."""
    standin, overrides = CASES[request.param]
    directory = fs.write_hf(standin, tmp_path_factory.mktemp(request.param), **overrides)
    checkpoint = read_checkpoint(directory)
    tokens = np.random.default_rng(5).integers(0, checkpoint.config.vocab_size, size=(2, SEQ))
    logits, hidden = fs.reference(directory, tokens)
    return request.param, checkpoint, tokens, logits, hidden


def check_forward(checkpoint, tokens, logits, hidden, form: Form, what: str) -> None:
    model = forms.build_model(checkpoint, form=form)
    ctx = checkpoint.config.max_context
    assert_close(capture.logits(model, tokens, max_context=ctx), logits, f"{what} {form.value} logits", logits=True)
    assert len(hidden) == checkpoint.config.n_layers + 1
    for layer in range(checkpoint.config.n_layers):
        ours = capture.residual(model, tokens, layer=layer, where="pre", max_context=ctx)
        assert_close(ours, hidden[layer], f"{what} {form.value} residual before block {layer}")


@pytest.mark.parametrize("form", FORMS)
def test_logits_and_residuals_equal_transformers(case, form):
    name, checkpoint, tokens, logits, hidden = case
    check_forward(checkpoint, tokens, logits, hidden, form, name)


def test_the_configs_are_read_as_meant(case):
    name, checkpoint, *_ = case
    cfg = checkpoint.config
    expected = {
        "qwen2": dict(architecture="qwen2", attention_bias=True, sliding_window=None, tie_embeddings=True),
        "qwen2_sliding": dict(architecture="qwen2", attention_bias=True, sliding_window=4,
                              layer_types=("full_attention", "sliding_attention", "sliding_attention")),
        "mistral": dict(architecture="mistral", attention_bias=False, sliding_window=8, layer_types=None),
        "llama3": dict(architecture="llama", rope_base=10000.0),
        "longrope": dict(architecture="phi3", max_context=32),  # runs its short factors only: up to the original 32
    }[name]
    assert {key: getattr(cfg, key) for key in expected} == expected
    assert [cfg.window(i) for i in range(cfg.n_layers)] == {
        "qwen2_sliding": [None, 4, 4], "mistral": [8, 8, 8]}.get(name, [None] * 3)
    if name == "llama3":
        assert cfg.rope_scaling.kind == "llama3" and cfg.rope_scaling.original_max == 32
    if name == "longrope":
        assert cfg.rope_scaling.kind == "longrope" and cfg.rope_scaling.attention_factor == pytest.approx(
            np.sqrt(1 + np.log(8) / np.log(32)))
        with pytest.raises(InputError, match="longer than the model's context of 32"):  # the long factors' range
            capture.check_tokens(np.zeros((1, 33), np.int64), cfg.max_context)


def _switched_off(checkpoint: Checkpoint, drop_weights=(), **config_changes) -> Checkpoint:
    config = dataclasses.replace(checkpoint.config, **config_changes)
    tensors = {k: v for k, v in checkpoint.weights.tensors.items() if not k.endswith(tuple(drop_weights))}
    weights = Weights(tensors, dtype=checkpoint.weights.dtype, source=checkpoint.weights.source)
    return dataclasses.replace(checkpoint, config=config, weights=weights)


def test_the_feature_matters(case):
    """Without its feature the harness is far off transformers: the parity above really tests the feature."""
    name, checkpoint, tokens, logits, _ = case
    scaling = checkpoint.config.rope_scaling
    variants = {
        "qwen2": lambda: {"q/k/v biases": dict(attention_bias=False,
                                               drop_weights=("q_proj.bias", "k_proj.bias", "v_proj.bias"))},
        "qwen2_sliding": lambda: {"the window": dict(sliding_window=None, layer_types=None)},
        "mistral": lambda: {"the window": dict(sliding_window=None)},
        "llama3": lambda: {"the scaling": dict(rope_scaling=None)},
        "longrope": lambda: {
            "the attention factor": dict(rope_scaling=dataclasses.replace(scaling, attention_factor=1.0)),
            "the short factors": dict(rope_scaling=dataclasses.replace(
                scaling, short_factor=(1.0,) * len(scaling.short_factor)))},
    }[name]()
    for what, changes in variants.items():
        model = forms.build_model(_switched_off(checkpoint, **changes), form=Form.UNROLLED)
        ours = np.asarray(capture.logits(model, tokens, max_context=checkpoint.config.max_context))
        rel = np.abs(ours - logits).max() / np.abs(logits).max()
        print(f"\n{name} without {what}: off by {rel:.3g} of the logit scale")
        assert rel > 1000 * REL_TOL, f"{name}: switching off {what} changes the logits by only {rel:.3g}"


# --- RoPE frequencies against transformers' own init functions (no forward pass) ----------------------------------


def _config_json(config) -> dict:
    return json.loads(config.to_json_string())


@pytest.mark.parametrize("rope", [
    LLAMA3_SMALL,
    dict(LLAMA3_SMALL, low_freq_factor=2.0, high_freq_factor=8.0, factor=4.0),
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},  # Llama-3.1's own numbers (theta 500000 below)
    {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},  # Llama-3.2's factor, legacy "type" spelling
])
@pytest.mark.parametrize("head_dim", [16, 64])
def test_llama3_inverse_frequencies_equal_transformers(rope, head_dim):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta = 500000.0 if rope["original_max_position_embeddings"] == 8192 else 10000.0
    config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, rope_theta=theta,
                                      rope_scaling=rope, max_position_embeddings=131072)
    theirs, attention = ROPE_INIT_FUNCTIONS["llama3"](config, None)
    ours = model_config_from_hf(_config_json(config), source="config.json")
    assert ours.rope_scaling.kind == "llama3" and attention == 1.0
    inv = blocks.rope_inv_freq(ours.rope_base, head_dim, ours.rope_scaling)
    np.testing.assert_allclose(inv, theirs.numpy(), rtol=1e-6, atol=0)
    plain = blocks.rope_inv_freq(ours.rope_base, head_dim, None)
    assert not np.allclose(inv, plain, rtol=1e-3), "the scaling changes no frequency"


@pytest.mark.parametrize("extra", [
    {},  # factor = max_position / original = 8: attention_factor sqrt(1 + ln 8 / ln 32)
    {"factor": 4.0},  # an explicit factor wins over the ratio for the attention factor
    {"attention_factor": 1.1},  # an explicit attention factor wins over both
])
@pytest.mark.parametrize("max_position", [256, 32])  # 32: no extension (factor 1, attention_factor 1)
def test_longrope_short_frequencies_and_attention_factor_equal_transformers(extra, max_position):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    short = [1.0, 1.05, 1.1, 1.2, 1.4, 1.7, 2.1, 2.6]
    rope = {"rope_type": "longrope", "short_factor": short, "long_factor": [2.0 * s for s in short],
            "original_max_position_embeddings": 32, **extra}
    config = transformers.Phi3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                                     max_position_embeddings=max_position, original_max_position_embeddings=32,
                                     rope_scaling=rope)
    theirs, attention = ROPE_INIT_FUNCTIONS["longrope"](config, None)  # seq_len None: the short factors
    ours = model_config_from_hf(_config_json(config), source="config.json")
    assert ours.max_context == 32
    assert ours.rope_scaling.attention_factor == pytest.approx(attention, rel=1e-12)
    inv = blocks.rope_inv_freq(ours.rope_base, 16, ours.rope_scaling)
    np.testing.assert_allclose(inv, theirs.numpy(), rtol=1e-6, atol=0)


# --- keys and values: what is read, what is refused (one line) ----------------------------------------------------


def test_real_qwen2_and_mistral_configs_load():
    qwen = model_config_from_hf(fs.real_width("qwen2"), source="Qwen2.5-0.5B/config.json")
    assert (qwen.architecture, qwen.attention_bias, qwen.sliding_window, qwen.layer_types, qwen.head_dim,
            qwen.tie_embeddings, qwen.rope_base) == ("qwen2", True, None, None, 64, True, 1e6)
    mistral = model_config_from_hf(fs.real_width("mistral"), source="Mistral-7B-v0.1/config.json")
    assert (mistral.architecture, mistral.sliding_window, mistral.window(0), mistral.n_kv_heads) == (
        "mistral", 4096, 4096, 8)
    assert ignored_config_keys(fs.real_width("qwen2")) == (
        "architectures", "attention_dropout", "bos_token_id", "eos_token_id", "initializer_range", "torch_dtype",
        "use_cache")


def _refused(raw: dict) -> str:
    with pytest.raises(InputError) as info:
        model_config_from_hf(raw, source="d/config.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("d/config.json: ")
    return message


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_a_key_outside_the_lists_is_refused_in_one_line(family):
    message = _refused(fs.real_width(family) | {"use_fancy_attention": True})
    assert message == (f"d/config.json: key 'use_fancy_attention' = True is not supported (this harness runs {family} "
                       f"maths as harness.model.families.{family} says; unknown keys may change the maths)")


@pytest.mark.parametrize(("family", "changes", "expected"), [
    ("qwen2", {"use_mrope": True}, "key 'use_mrope' = True is not supported (expected false: multimodal RoPE"),
    ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
     "key 'rope_scaling' = {'rope_type': 'yarn'"),
    ("qwen2", {"hidden_act": "gelu"}, "key 'hidden_act' = 'gelu' is not supported (expected 'silu'"),
    ("qwen2", {"use_sliding_window": False, "layer_types": ["sliding_attention"] * 24},
     "key 'layer_types' lists sliding_attention layers but the sliding window is off"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4096, "layer_types": ["chunked_attention"] * 24},
     "layer_types: expected 24 entries of ('full_attention', 'sliding_attention'), got 24 including 'chunked_attention'"),
    ("qwen2", {"use_sliding_window": "yes"}, "use_sliding_window"),
    ("qwen2", {"attention_bias": False}, "key 'attention_bias' = False is not supported (this harness runs qwen2"),
    ("mistral", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "key 'rope_scaling' = {'rope_type': 'linear'"),
    ("mistral", {"layer_types": ["sliding_attention"] * 32}, "key 'layer_types' = "),  # Ministral's, not Mistral's
    ("mistral", {"attention_bias": True}, "key 'attention_bias' = True is not supported (expected false"),
])
def test_a_value_that_changes_the_maths_is_refused_in_one_line(family, changes, expected):
    assert expected in _refused(fs.real_width(family) | changes)


def test_qwen2_sliding_window_settings_without_effect_are_accepted():
    """use_sliding_window false turns sliding_window and max_window_layers off (transformers 5 sets the window to
    None): any window then reads as full attention."""
    raw = fs.real_width("qwen2")
    for changes in ({"sliding_window": 4}, {"max_window_layers": 0}, {"sliding_window": None},
                    {"layer_types": ["full_attention"] * 24}, {"use_mrope": False}):
        cfg = model_config_from_hf(raw | changes, source="config.json")
        assert cfg.layer_types in (None, ("full_attention",) * 24) and cfg.window(23) is None, changes


@pytest.mark.parametrize(("rope", "expected"), [
    ({"rope_type": "longrope", "short_factor": [1.0] * 7, "long_factor": [1.0] * 8, "original_max_position_embeddings": 32},
     "longrope short_factor: expected 8 positive numbers (head_dim / 2)"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8, "original_max_position_embeddings": 32,
      "factor": "8"}, "key 'rope_parameters.factor' = '8' is not supported"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
     "llama3 RoPE scaling lacks 'original_max_position_embeddings'"),
    ({"rope_type": "longrope", "type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
      "original_max_position_embeddings": 1}, "longrope needs original_max_position_embeddings (an int >= 2)"),
])
def test_broken_rope_scalings_are_refused_in_one_line(rope, expected):
    family = "llama31" if rope["rope_type"] == "llama3" else "phi3"
    raw = {k: v for k, v in fs.real_width(family).items() if k != "rope_scaling"}
    raw |= {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "rope_parameters": rope}
    assert expected in _refused(raw)


# --- Qwen2 GGUF, written by llama.cpp's own converter ---------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_gguf(tmp_path_factory):
    """(GGUF checkpoint, HF folder it was converted from, tokens, transformers' logits and hidden_states).

    llama.cpp's converter recognises a byte-level vocabulary by its pre-tokenizer hash, so the folder carries Qwen2's
    real vocabulary (llama.cpp's vocab fixture, 151936 ids). Its Qwen2Model tries sentencepiece before the byte-level
    vocabulary and imports the package first: a stub package (no tokenizer.model exists) lets it fall through."""
    root = tmp_path_factory.mktemp("qwen2_gguf")
    directory = fs.write_hf("qwen2", root / "hf", vocab="llama.cpp")
    stub = root / "stub" / "sentencepiece"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("class SentencePieceProcessor:  # import-only stub\n    pass\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(stub.parent))
        path = fs.write_gguf("qwen2", directory, root / "qwen2.gguf")
    checkpoint = read_checkpoint(path)
    tokens = np.random.default_rng(6).integers(0, 5000, size=(2, SEQ))
    logits, hidden = fs.reference(directory, tokens)
    return checkpoint, directory, tokens, logits, hidden


@pytest.mark.slow  # the converter and Qwen2's real 151936-token vocabulary: ~30 s to write
@pytest.mark.parametrize("form", FORMS)
def test_qwen2_gguf_equals_transformers(qwen2_gguf, form):
    checkpoint, _, tokens, logits, hidden = qwen2_gguf
    assert checkpoint.config.architecture == "qwen2" and checkpoint.config.attention_bias
    check_forward(checkpoint, tokens, logits, hidden, form, "qwen2 GGUF")


@pytest.mark.slow
def test_qwen2_gguf_tokenizer_equals_the_vocabularys_tokenizer_json(qwen2_gguf):
    """The file's byte-level BPE split as tokenizer.ggml.pre 'qwen2' says encodes as the tokenizer.json that
    transformers built from llama.cpp's Qwen2 vocab fixture (both without Qwen2's NFC step)."""
    import tokenizers

    checkpoint, directory, *_ = qwen2_gguf
    reference = tokenizers.Tokenizer.from_file(str(pathlib.Path(directory) / "tokenizer.json"))
    texts = ["Hello world! It's 2024, isn't it? I'LL say we'VE 12345 numbers.",
             "def f(x):\n\treturn x**2  # comment\r\n\n\n   trailing   ",
             "naïve café — 東京 中文字符 🙂 ünïcödé", "<|endoftext|>a<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        assert checkpoint.tokenizer.encode(text, add_bos=False) == reference.encode(text).ids, text
    assert not checkpoint.tokenizer.add_bos
