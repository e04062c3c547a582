"""The Gemma-2 and Gemma-3 (text) families against transformers, on tiny checkpoints transformers itself writes
(tests/family_standins.py): random weights with Gemma's (1 + w) norm weights random around 0, so a missing or doubled
offset shows; head_dim 32 != d_model / heads (16); query_pre_attn_scalar 24 != head_dim; sliding_window 4, shorter
than the 16-token sequences; layer_types mixing sliding and global layers (gemma2 alternating, gemma3 five local then
one global); gemma2's soft caps 5 (scores) and 3 (logits) small enough to bite; gemma3's local RoPE base (1e4 vs the
global 1e6) and, in gemma3_scaled, linear scaling (factor 8) on the global layers only. Each is read through
harness.model.sources.read_checkpoint and built in every form.

The GGUF cases run llama.cpp's own convert_hf_to_gguf.py (vendored) on such folders, with query_pre_attn_scalar equal
to head_dim (llama.cpp does not store it and scales queries by head_dim ** -0.5), and compare with transformers on the
source folder: they show that the GGUF norms hold 1 + w and that Q/K rows are not permuted.

Tolerances (absolute; float32 on both sides, differing only in accumulation order):
- logits: 1e-4; measured at most 8e-6 (logit scale 3-5) in every form, safetensors and GGUF alike;
- residual stream entering block L vs transformers' hidden_states[L]: 1e-5 x max |hidden_states[L]|; measured at most
  1.2e-6 of it.
"""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest

import family_standins as fs
from harness.errors import InputError
from harness.model import capture, families, forms
from harness.model.config import Checkpoint
from harness.model.forms import Form
from harness.model.gguf_reader import arch_keys
from harness.model.hf_reader import model_config_from_hf
from harness.model.sources import read_checkpoint
from harness.runs.packing import pack_trie, stack_rows

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

pytestmark = pytest.mark.reference

LOGITS_ATOL = 1e-4
RESIDUAL_RTOL = 1e-5
FORMS = list(Form)
VARIANTS = ("gemma2", "gemma3", "gemma3_scaled")
SEQ = 16
SLIDING, FULL = "sliding_attention", "full_attention"


def _tokens(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, fs.SPM_VOCAB, size=(2, SEQ))


@pytest.fixture(scope="module", params=VARIANTS)
def tiny(request, tmp_path_factory):
    """(name, checkpoint, tokens, transformers logits, transformers hidden_states) of one tiny variant."""
    folder = fs.write_hf(request.param, tmp_path_factory.mktemp(request.param) / "model")
    tokens = _tokens(1)
    logits, hidden = fs.reference(folder, tokens)
    return request.param, read_checkpoint(str(folder)), tokens, logits, hidden


def _logits(checkpoint, tokens, form=Form.UNROLLED) -> np.ndarray:
    model = forms.build_model(checkpoint, form=form)
    return np.asarray(capture.logits(model, tokens, max_context=checkpoint.config.max_context))


def _assert_logits_close(ours, theirs, what: str) -> float:
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{what}: max |Δlogit| {diff:.3g} (tolerance {LOGITS_ATOL:g}, logit scale {np.abs(theirs).max():.3g})")
    assert diff <= LOGITS_ATOL, f"{what}: max |Δlogit| {diff:.3g} > {LOGITS_ATOL:g}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).all(), f"{what}: argmax differs"
    return diff


# --- tiny safetensors checkpoints ------------------------------------------------------------------------------


def test_the_tiny_configs_exercise_every_gemma_switch(tiny):
    name, checkpoint, tokens, _, _ = tiny
    c = checkpoint.config
    assert c.architecture == ("gemma2" if name == "gemma2" else "gemma3")
    assert c.head_dim * c.n_heads != c.d_model and c.query_scale == pytest.approx(24 ** -0.5)
    assert {SLIDING, FULL} == set(c.layer_types) and c.sliding_window < tokens.shape[1]
    assert (c.norm_offset, c.mlp, c.post_norms, c.embed_scale) == (1.0, "geglu_tanh", True, 8.0)
    if name == "gemma2":
        assert c.layer_types == (SLIDING, FULL) * 2 and (c.attn_softcap, c.final_softcap) == (5.0, 3.0)
        assert not c.qk_norm and c.local_rope_base is None
    else:
        assert c.layer_types == (SLIDING,) * 5 + (FULL,) and c.qk_norm and (c.attn_softcap, c.final_softcap) == (None, None)
        assert (c.rope_base, c.local_rope_base) == (1e6, 1e4)
        assert c.rope(0) == (1e4, None) and c.rope(5)[0] == 1e6
        scaling = c.rope(5)[1]
        if name == "gemma3_scaled":
            assert (scaling.kind, scaling.factor) == ("linear", 8.0)
        else:
            assert scaling is None


@pytest.mark.parametrize("form", FORMS)
def test_tiny_gemma_logits_equal_transformers(tiny, form):
    name, checkpoint, tokens, logits, _ = tiny
    _assert_logits_close(_logits(checkpoint, tokens, form), logits, f"{name} safetensors, {form.value}")


@pytest.mark.parametrize("form", FORMS)
def test_tiny_gemma_residuals_equal_transformers_hidden_states(tiny, form):
    """The residual entering block L == hidden_states[L] (hidden_states[0]: embeddings x sqrt(d)): the embedding, after
    the first (sliding) block, and entering the last block (after gemma2's global layers, gemma3's five local ones)."""
    name, checkpoint, tokens, _, hidden = tiny
    model = forms.build_model(checkpoint, form=form)
    for layer in (0, 1, checkpoint.config.n_layers - 1):
        ours = np.asarray(capture.residual(model, tokens, layer=layer, where="pre",
                                           max_context=checkpoint.config.max_context))
        diff, scale = float(np.abs(ours - hidden[layer]).max()), float(np.abs(hidden[layer]).max())
        print(f"\n{name} {form.value} pre {layer}: max |Δresidual| {diff:.3g} = {diff / scale:.2g} of max |h|")
        assert diff <= RESIDUAL_RTOL * scale, f"{name} {form.value}: block {layer} residual differs by {diff:.3g}"


# Config switches whose loss the parity tests above would see: each changed alone moves the logits far past the
# tolerance (measured: at least 100x).
_MUTATIONS = {
    "gemma2": dict(norm_offset=0.0, attn_softcap=None, final_softcap=None, query_scale=None, embed_scale=None,
                   layer_types=(FULL,) * 4),
    "gemma3": dict(norm_offset=0.0, query_scale=None, embed_scale=None, local_rope_base=None, layer_types=(FULL,) * 6),
    "gemma3_scaled": dict(rope_scaling=None, local_rope_base=None),
}


def test_each_gemma_switch_changes_the_logits(tiny):
    name, checkpoint, tokens, logits, _ = tiny
    for field, value in _MUTATIONS[name].items():
        changed = Checkpoint(config=dataclasses.replace(checkpoint.config, **{field: value}), weights=checkpoint.weights,
                             tokenizer=checkpoint.tokenizer, source=checkpoint.source)
        diff = float(np.abs(_logits(changed, tokens) - logits).max())
        print(f"\n{name} with {field}={value!r}: max |Δlogit| {diff:.3g}")
        assert diff > 100 * LOGITS_ATOL, f"{name}: {field}={value!r} changes the logits by only {diff:.3g}"


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("form", FORMS)
def test_packed_gemma_sequences_score_as_if_run_alone(tiny, form):
    """A packed trie (shared prefixes, branches of different lengths, some longer than the window) scores every
    sequence as alone: the sliding window counts positions, not packed rows. (gemma3_scaled: as gemma3.)"""
    name, checkpoint, _, _, _ = tiny
    if name == "gemma3_scaled":
        pytest.skip("the same mask and forms as gemma3")
    model = forms.build_model(checkpoint, form=form)
    ctx = checkpoint.config.max_context
    rng = np.random.default_rng(5)
    prefix = list(rng.integers(3, fs.SPM_VOCAB, 6))
    seqs = [prefix + list(rng.integers(3, fs.SPM_VOCAB, n)) for n in (1, 5, 3)] + [prefix[:2] + [7, 8, 9]]
    packed = pack_trie(seqs)
    ids, packing = stack_rows([packed], 28, n_rows=1)
    layer = checkpoint.config.n_layers - 1
    resid, logits = capture.residual_and_logits(model, ids, layer=layer, where="pre", max_context=ctx, packing=packing)
    logp = _log_softmax(logits)
    alone = np.zeros((len(seqs), max(map(len, seqs))), np.int64)  # right padding changes nothing before it (causal)
    for i, seq in enumerate(seqs):
        alone[i, : len(seq)] = seq
    want_resids, want_logits = capture.residual_and_logits(model, alone, layer=layer, where="pre", max_context=ctx)
    want_logp = _log_softmax(want_logits)
    for i, seq in enumerate(seqs):
        want_resid = np.asarray(want_resids[i, : len(seq)])
        np.testing.assert_allclose(np.asarray(resid[0, packed.paths[i]]), want_resid,
                                   atol=RESIDUAL_RTOL * np.abs(want_resid).max())
        got = logp[0, packed.predictors(i, 1), seq[1:]].sum()
        want = want_logp[i, np.arange(len(seq) - 1), seq[1:]].sum()
        assert got == pytest.approx(want, abs=1e-4), (name, i)


# --- GGUF written by llama.cpp's converter -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=VARIANTS)
def tiny_gguf(request, tmp_path_factory):
    """(name, GGUF checkpoint, HF folder's checkpoint, tokens, transformers logits of the HF folder)."""
    pytest.importorskip("gguf")
    pytest.importorskip("sentencepiece")  # llama.cpp's converter reads tokenizer.model with it
    root = tmp_path_factory.mktemp(f"{request.param}_gguf")
    folder = fs.write_hf(request.param, root / "model", query_pre_attn_scalar=32)
    path = fs.write_gguf(request.param, folder, root / "model.gguf")
    tokens = _tokens(2)
    logits, _ = fs.reference(folder, tokens)
    return request.param, read_checkpoint(str(path)), read_checkpoint(str(folder)), tokens, logits


@pytest.mark.parametrize("form", FORMS)
def test_llama_cpp_gemma_gguf_logits_equal_transformers(tiny_gguf, form):
    name, checkpoint, _, tokens, logits = tiny_gguf
    _assert_logits_close(_logits(checkpoint, tokens, form), logits, f"{name} GGUF, {form.value}")


def test_llama_cpp_stores_gemma_norms_as_one_plus_w_and_q_k_rows_unpermuted(tiny_gguf):
    name, gguf_checkpoint, hf_checkpoint, _, _ = tiny_gguf
    assert (gguf_checkpoint.config.norm_offset, hf_checkpoint.config.norm_offset) == (0.0, 1.0)
    assert dataclasses.replace(gguf_checkpoint.config, norm_offset=1.0, norm_eps=hf_checkpoint.config.norm_eps) == \
        hf_checkpoint.config
    ours, theirs = gguf_checkpoint.weights, hf_checkpoint.weights
    assert set(ours) == set(theirs)
    for weight in ours:
        offset = 1.0 if weight.endswith("norm.weight") else 0.0
        np.testing.assert_allclose(ours[weight], theirs[weight] + offset, rtol=0, atol=1e-6, err_msg=f"{name} {weight}")
    # the final norm's effective scale (1 + w), as the logit-effect readings use it, is the same from either file
    np.testing.assert_allclose(gguf_checkpoint.unembedding()[0], hf_checkpoint.unembedding()[0], rtol=0, atol=1e-6)


# --- config.json keys, as transformers reads them --------------------------------------------------------------


def _config_json(name: str, tmp_path, **overrides) -> dict:
    folder = fs.write_hf(name, tmp_path / name, **overrides)
    return json.loads((folder / "config.json").read_text())


def _transformers_view(raw: dict) -> dict:
    """The maths-relevant values transformers derives from a config.json dict."""
    cls = transformers.Gemma2Config if raw["model_type"] == "gemma2" else transformers.Gemma3TextConfig
    t = cls.from_dict(dict(raw))
    rope = t.rope_parameters
    full, local = (rope, rope) if raw["model_type"] == "gemma2" else (rope[FULL], rope[SLIDING])
    return dict(layer_types=tuple(t.layer_types), window=t.sliding_window, head_dim=t.head_dim,
                n_kv_heads=t.num_key_value_heads, tie=t.tie_word_embeddings, query_scale=t.query_pre_attn_scalar ** -0.5,
                attn_softcap=t.attn_logit_softcapping if raw["model_type"] == "gemma2" else None,
                final_softcap=t.final_logit_softcapping, rope_base=full["rope_theta"],
                local_base=None if raw["model_type"] == "gemma2" else local["rope_theta"],
                factor=full.get("factor") if full.get("rope_type") == "linear" else None, eps=t.rms_norm_eps,
                max_context=t.max_position_embeddings)


def _our_view(raw: dict) -> dict:
    c = model_config_from_hf(raw, source="config.json")
    return dict(layer_types=c.layer_types, window=c.sliding_window, head_dim=c.head_dim, n_kv_heads=c.n_kv_heads,
                tie=c.tie_embeddings, query_scale=c.query_scale, attn_softcap=c.attn_softcap,
                final_softcap=c.final_softcap, rope_base=c.rope_base, local_base=c.local_rope_base,
                factor=c.rope_scaling.factor if c.rope_scaling else None, eps=c.norm_eps, max_context=c.max_context)


# google/gemma-3-1b-pt's config.json (written by transformers 4.50: hub-style RoPE keys, sliding_window_pattern).
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144,
}


def _without(raw: dict, *keys) -> dict:
    return {k: v for k, v in raw.items() if k not in keys}


def test_gemma_configs_read_as_transformers_reads_them(tmp_path):
    """Hub-style and transformers-5-style config.json files, with keys left to the classes' defaults, give the layer
    types, windows, RoPE bases, scaling, soft caps and query scale transformers derives."""
    g2, g3 = _config_json("gemma2", tmp_path), _config_json("gemma3", tmp_path)
    hub3 = _without(g3, "rope_parameters") | dict(rope_theta=5e5, rope_local_base_freq=2e4,
                                                  rope_scaling={"rope_type": "linear", "factor": 4.0})
    cases = {
        "gemma2 as written": g2,
        "gemma2 real (Gemma-2-2B)": fs.real_width("gemma2"),
        "gemma2 defaults": _without(g2, "layer_types", "attn_logit_softcapping", "final_logit_softcapping",
                                    "query_pre_attn_scalar", "sliding_window", "rope_parameters", "head_dim",
                                    "num_key_value_heads", "tie_word_embeddings", "rms_norm_eps"),
        "gemma3 as written": g3,
        "gemma3 scaled as written": _config_json("gemma3_scaled", tmp_path),
        "gemma3 real (Gemma-3-270M)": fs.real_width("gemma3"),
        "gemma3 hub (Gemma-3-1B, transformers 4.50)": GEMMA3_1B,
        "gemma3 hub-style RoPE keys": hub3,
        "gemma3 rope_theta beside rope_parameters (ignored)": g3 | {"rope_theta": 123.0, "rope_local_base_freq": 7.0},
        "gemma3 pattern 3": _without(g3, "layer_types") | {"sliding_window_pattern": 3},
        "gemma3 _sliding_window_pattern is never read": _without(g3, "layer_types") | {"_sliding_window_pattern": 2},
        "gemma3 defaults": _without(g3, "layer_types", "_sliding_window_pattern", "rope_parameters", "sliding_window",
                                    "query_pre_attn_scalar", "head_dim", "num_key_value_heads", "tie_word_embeddings",
                                    "final_logit_softcapping", "attn_logit_softcapping", "max_position_embeddings"),
        "gemma3 partial rope_parameters": g3 | {"rope_parameters": {FULL: {"rope_type": "linear", "factor": 2.0}}},
    }
    for what, raw in cases.items():
        theirs, ours = _transformers_view(raw), _our_view(raw)
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key]) if isinstance(theirs[key], float) else \
                ours[key] == theirs[key], f"{what}: {key} {ours[key]!r} != transformers' {theirs[key]!r}"


_REFUSED = {
    "gemma3 attention soft cap (transformers 5 ignores it)": ("gemma3", {"attn_logit_softcapping": 50.0},
                                                              "attn_logit_softcapping"),
    "gemma3 rope_scaling with 'type' (transformers 5 drops it)": (
        "gemma3", {"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 8.0}}, "rope_scaling"),
    "gemma3 rope_scaling beside rope_parameters": ("gemma3", {"rope_scaling": {"rope_type": "linear", "factor": 8.0}},
                                                   "rope_scaling"),
    "gemma3 scaled local RoPE": ("gemma3", {"rope_parameters": {SLIDING: {"rope_type": "linear", "factor": 2.0}}},
                                 "rope_parameters.sliding_attention"),
    "gemma3 yarn": ("gemma3", {"rope_parameters": {FULL: {"rope_type": "yarn", "factor": 2.0}}},
                    "rope_parameters.full_attention"),
    "gemma3 flat rope_parameters": ("gemma3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
                                    "rope_parameters.rope_type"),
    "gemma3 bidirectional (EmbeddingGemma)": ("gemma3", {"use_bidirectional_attention": True},
                                              "use_bidirectional_attention"),
    "gemma3 multimodal model_type": ("gemma3", {"model_type": "gemma3"}, "model_type 'gemma3' is not supported"),
    "gemma2 exact GELU": ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation"),
    "gemma2 linear RoPE": ("gemma2", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    "gemma2 attention biases": ("gemma2", {"attention_bias": True}, "attention_bias"),
    "gemma2 sliding layers without a window": ("gemma2", {"sliding_window": None}, "sliding_window is null"),
    "gemma2 unknown key": ("gemma2", {"attn_temperature": 2.0}, "attn_temperature"),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_unsupported_gemma_configs_are_refused_in_one_line(tmp_path, case):
    name, overrides, message = _REFUSED[case]
    raw = _config_json(name, tmp_path) | overrides
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        model_config_from_hf(raw, source="config.json")
    assert "\n" not in str(error.value)


# --- GGUF metadata, as llama.cpp reads it ---------------------------------------------------------------------------


def _gguf_values(arch: str, n_layers: int, **extra) -> dict:
    values = {f"{arch}.{k}": v for k, v in dict(
        block_count=n_layers, context_length=256, embedding_length=64, feed_forward_length=128,
        **{"attention.head_count": 4, "attention.head_count_kv": 2, "attention.layer_norm_rms_epsilon": 1e-6,
           "attention.key_length": 32, "attention.value_length": 32, "attention.sliding_window": 4}).items()}
    if arch == "gemma3":
        values["gemma3.rope.freq_base"] = 1e6
    return values | {f"{arch}.{k}": v for k, v in extra.items()}


def _gguf_config(arch: str, values: dict):
    tensors = {"token_embd.weight": types.SimpleNamespace(shape=(64, 300))}  # GGUF order: [d_model, vocab]
    keys = arch_keys(values, "tiny.gguf", arch)
    return families.for_gguf(arch, "tiny.gguf").config_from_gguf(keys, values, tensors, "tiny.gguf")


def test_gemma_gguf_metadata_reads_as_llama_cpp_runs_it():
    g2 = _gguf_config("gemma2", _gguf_values("gemma2", 4))
    assert g2.layer_types == (SLIDING, FULL) * 2 and (g2.attn_softcap, g2.final_softcap) == (50.0, 30.0)
    assert (g2.norm_offset, g2.query_scale, g2.embed_scale) == (0.0, 32 ** -0.5, 8.0)
    assert _gguf_config("gemma2", _gguf_values("gemma2", 4, attn_logit_softcapping=5.0)).attn_softcap == 5.0
    no_window = {k: v for k, v in _gguf_values("gemma2", 4).items() if not k.endswith("sliding_window")}
    assert _gguf_config("gemma2", no_window).sliding_window == 4096
    assert _gguf_config("gemma2", _gguf_values("gemma2", 46)).query_scale == pytest.approx((64 // 4) ** -0.5)

    g3 = _gguf_config("gemma3", _gguf_values("gemma3", 12))
    assert g3.layer_types == ((SLIDING,) * 5 + (FULL,)) * 2 and (g3.rope_base, g3.local_rope_base) == (1e6, 1e4)
    assert (g3.qk_norm, g3.norm_offset, g3.query_scale, g3.attn_softcap, g3.rope_scaling) == (True, 0.0, 32 ** -0.5,
                                                                                            None, None)
    scaled = _gguf_config("gemma3", _gguf_values("gemma3", 6, **{"rope.scaling.type": "linear", "rope.scaling.factor": 8.0}))
    assert (scaled.rope_scaling.kind, scaled.rope_scaling.factor, scaled.rope(0), scaled.rope(5)[0]) == (
        "linear", 8.0, (1e4, None), 1e6)
    assert _gguf_config("gemma3", _gguf_values("gemma3", 62)).query_scale == pytest.approx((64 // 4) ** -0.5)
    no_window = {k: v for k, v in _gguf_values("gemma3", 6).items() if not k.endswith("sliding_window")}
    assert _gguf_config("gemma3", no_window).layer_types == (FULL,) * 6


@pytest.mark.parametrize("arch, extra, message", [
    ("gemma3", {"rope.freq_base_swa": 2e4}, "freq_base_swa"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("gemma3", {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}, "rope.scaling"),
    ("gemma2", {"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, "rope.scaling.type"),
    ("gemma2", {"attention.sliding_window_pattern": 3}, "sliding_window_pattern"),
    ("llama", {"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ("llama", {"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, "rope.scaling"),
])
def test_unsupported_gemma_gguf_metadata_is_refused_in_one_line(arch, extra, message):
    values = _gguf_values(arch, 6, **extra)
    with pytest.raises(InputError, match=message) as error:
        _gguf_config(arch, values)
    assert "\n" not in str(error.value)


def test_a_gemma3_gguf_without_its_global_rope_base_is_refused():
    values = _gguf_values("gemma3", 6)
    del values["gemma3.rope.freq_base"]
    with pytest.raises(InputError, match="freq_base is missing"):
        _gguf_config("gemma3", values)


def test_the_gemma_families_are_registered():
    assert families.for_hf("gemma2", "x").name == "gemma2" and families.for_hf("gemma3_text", "x").name == "gemma3"
    assert families.for_gguf("gemma2", "x").name == "gemma2" and families.for_gguf("gemma3", "x").name == "gemma3"
