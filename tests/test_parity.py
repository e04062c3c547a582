"""Our penzai model vs transformers (torch, CPU, float32) on the same weights: logits in all three forms,
and the residual stream at a layer vs transformers' hidden_states.

Tolerances (absolute, float32 on both sides; the only difference is the order of floating-point
accumulation in matmuls, softmax and norms, which grows with depth):
- tiny random models (2-3 blocks, logits of scale ~10): 1e-4; measured ~2e-5.
- SmolLM2-135M (30 blocks, logits of scale ~20): 2e-3, about 1e-4 of the logit scale; measured ~2e-4.
  Argmax must agree at every compared position as well.
"""

from __future__ import annotations

import numpy as np
import pytest

from checkpoints import tiny_gguf, write_hf_checkpoint
from harness.model import capture, forms
from harness.model.forms import Form
from harness.model.gguf_reader import read_gguf
from harness.model.hf_reader import read_hf_dir
from harness.model.sources import default_gguf_path

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.reference

TINY_ATOL = 1e-4
SMOLLM2_ATOL = 2e-3
FORMS = list(Form)


def hf_forward(model, tokens: np.ndarray, *, hidden: bool = False):
    """transformers logits (and hidden_states) for [batch, seq] token ids; no attention mask (causal)."""
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(tokens), dtype=torch.long), output_hidden_states=hidden)
    logits = out.logits.float().numpy()
    return (logits, [h.float().numpy() for h in out.hidden_states]) if hidden else logits


def assert_logits_close(ours, theirs, atol: float, what: str, mask: np.ndarray | None = None) -> float:
    """Max abs difference over the (masked) positions within `atol`, and argmax equal there."""
    mask = np.ones(ours.shape[:2], bool) if mask is None else mask
    ours, theirs = np.asarray(ours)[mask], np.asarray(theirs)[mask]
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{what}: max abs logit difference {diff:.3g} (tolerance {atol:g}, logit scale {np.abs(theirs).max():.3g})")
    assert diff <= atol, f"{what}: max abs logit difference {diff:.3g} > {atol:g}"
    agree = (ours.argmax(-1) == theirs.argmax(-1)).mean()
    assert agree == 1.0, f"{what}: argmax agrees at only {agree:.1%} of positions (max abs diff {diff:.3g})"
    return diff


# --- tiny random checkpoints: HF safetensors (Llama, Phi-3) and a phi3 GGUF ----------------------

TINY_COMMON = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=300, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    initializer_range=0.2,  # weights large enough for logits of order 10, not transformers' 0.02 (~0.5)
)


@pytest.fixture(scope="module", params=["llama", "phi3"])
def tiny_hf(request, tmp_path_factory):
    """(our checkpoint, transformers model) for a random GQA Llama or Phi-3 saved as safetensors."""
    torch.manual_seed(7)
    if request.param == "llama":
        config = transformers.LlamaConfig(**TINY_COMMON, rope_theta=50000.0, rms_norm_eps=1e-6)
        model = transformers.LlamaForCausalLM(config)
    else:  # sliding window wider than any sequence here, as in Phi-3-mini-4k's config
        config = transformers.Phi3Config(**TINY_COMMON, sliding_window=200, rms_norm_eps=1e-5)
        model = transformers.Phi3ForCausalLM(config)
    model = model.float().eval()
    directory = write_hf_checkpoint(tmp_path_factory.mktemp(request.param), model)
    checkpoint = read_hf_dir(directory)
    assert checkpoint.config.architecture == request.param and checkpoint.config.n_kv_heads == 2
    return checkpoint, model


@pytest.fixture(scope="module")
def tiny_tokens():
    return np.random.default_rng(11).integers(0, TINY_COMMON["vocab_size"], size=(2, 24))


@pytest.mark.parametrize("form", FORMS)
def test_tiny_hf_logits_equal_transformers(tiny_hf, tiny_tokens, form):
    checkpoint, hf_model = tiny_hf
    ours = capture.logits(forms.build_model(checkpoint, form=form), tiny_tokens, max_context=checkpoint.config.max_context)
    theirs = hf_forward(hf_model, tiny_tokens)
    assert_logits_close(ours, theirs, TINY_ATOL, f"{checkpoint.config.architecture} safetensors, {form.value}")


@pytest.fixture(scope="module")
def tiny_phi3_gguf(tmp_path_factory):
    directory = tmp_path_factory.mktemp("phi3_gguf")
    tiny_gguf(directory / "phi3.gguf", arch="phi3", n_layers=2, seed=4)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file="phi3.gguf", dtype=torch.float32
    ).eval()
    assert hf_model.config.model_type == "phi3"
    return read_gguf(directory / "phi3.gguf"), hf_model


@pytest.mark.parametrize("form", FORMS)
def test_tiny_phi3_gguf_logits_equal_transformers(tiny_phi3_gguf, form):
    checkpoint, hf_model = tiny_phi3_gguf
    tokens = np.random.default_rng(12).integers(0, checkpoint.config.vocab_size, size=(2, 16))
    ours = capture.logits(forms.build_model(checkpoint, form=form), tokens, max_context=checkpoint.config.max_context)
    assert_logits_close(ours, hf_forward(hf_model, tokens), TINY_ATOL, f"phi3 GGUF, {form.value}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layer", [0, 1])
def test_tiny_residuals_equal_transformers_hidden_states(tiny_hf, tiny_tokens, form, layer):
    """pre block L == hidden_states[L], post == hidden_states[L + 1] (the last entry is after the final norm)."""
    checkpoint, hf_model = tiny_hf
    _, hidden = hf_forward(hf_model, tiny_tokens, hidden=True)
    assert len(hidden) == checkpoint.config.n_layers + 1
    model = forms.build_model(checkpoint, form=form)
    ctx = checkpoint.config.max_context
    for where, index in (("pre", layer), ("post", layer + 1)):
        ours = np.asarray(capture.residual(model, tiny_tokens, layer=layer, where=where, max_context=ctx))
        diff = np.abs(ours - hidden[index]).max()
        print(f"\n{checkpoint.config.architecture} {form.value} {where} {layer}: max abs residual difference {diff:.3g}")
        assert diff <= TINY_ATOL, f"{where} block {layer} vs hidden_states[{index}]: max abs difference {diff:.3g}"


# --- the real SmolLM2-135M-Instruct GGUF ---------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    """(our checkpoint, transformers' own GGUF load of the same file), loaded once for the module."""
    path = default_gguf_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    return read_gguf(path), hf_model


@pytest.fixture(scope="module")
def smollm2_models(smollm2):
    checkpoint, _ = smollm2
    scan = forms.build_model(checkpoint, form=Form.SCAN)
    return {form: forms.convert(scan, checkpoint.config, form) for form in FORMS}


@pytest.fixture(scope="module")
def chat_batch(smollm2):
    """Two chat-formatted prompts of different lengths, right-padded with EOS; mask of real positions."""
    tok = smollm2[0].tokenizer
    questions = ["What is the capital of France?", "Name three primary colours and say which one you like best, briefly."]
    ids = [tok.encode(tok.render_chat([{"role": "user", "content": q}])) for q in questions]
    width = max(map(len, ids))
    assert len(ids[0]) != len(ids[1])
    tokens = np.full((2, width), tok.token_id(tok.eos_token), dtype=np.int64)
    mask = np.zeros((2, width), bool)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)], mask[row, : len(seq)] = seq, True
    return tokens, mask


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_smollm2_chat_logits_equal_transformers(smollm2, smollm2_models, chat_batch, form):
    checkpoint, hf_model = smollm2
    tokens, mask = chat_batch
    ours = capture.logits(smollm2_models[form], tokens, max_context=checkpoint.config.max_context)
    # transformers on each prompt alone, unpadded: padding must not leak into the real positions.
    theirs = np.zeros(ours.shape, np.float32)
    for row in range(2):
        n = int(mask[row].sum())
        theirs[row, :n] = hf_forward(hf_model, tokens[row : row + 1, :n])[0]
    assert_logits_close(ours, theirs, SMOLLM2_ATOL, f"SmolLM2 chat prompts, {form.value}", mask)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_smollm2_random_token_logits_equal_transformers(smollm2, smollm2_models, chat_batch, form):
    """Random ids in the chat batch's shape (so the compiled forward is reused)."""
    checkpoint, hf_model = smollm2
    tokens = np.random.default_rng(0).integers(0, checkpoint.config.vocab_size, size=chat_batch[0].shape)
    ours = capture.logits(smollm2_models[form], tokens, max_context=checkpoint.config.max_context)
    assert_logits_close(ours, hf_forward(hf_model, tokens), SMOLLM2_ATOL, f"SmolLM2 random ids, {form.value}")


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_smollm2_residual_at_layer_20_equals_transformers(smollm2, smollm2_models, chat_batch, form):
    """Residual pre/post block 20 vs hidden_states[20]/[21], relative to the residual scale (BOS norms ~2e4).

    Causal attention: the right padding cannot change the real positions, so the padded batch is compared.
    """
    checkpoint, hf_model = smollm2
    tokens, mask = chat_batch
    _, hidden = hf_forward(hf_model, tokens, hidden=True)
    model, ctx = smollm2_models[form], checkpoint.config.max_context
    for where, index in (("pre", 20), ("post", 21)):
        ours, ours_logits = capture.residual_and_logits(model, tokens, layer=20, where=where, max_context=ctx)
        ours, theirs = np.asarray(ours)[mask], hidden[index][mask]
        scale = np.abs(theirs).max()
        diff = np.abs(ours - theirs).max()
        print(f"\nSmolLM2 {form.value} {where} 20: max abs residual difference {diff:.3g} (scale {scale:.3g})")
        assert diff <= 1e-5 * scale, f"{where} 20 vs hidden_states[{index}]: {diff:.3g} over 1e-5 × {scale:.3g}"


@pytest.mark.slow
def test_smollm2_stopped_forward_and_splice_agree_with_the_full_forward(smollm2, smollm2_models, chat_batch):
    """True-scan form (all forms are covered on tiny models in test_capture): stop at 20, splice back."""
    checkpoint, _ = smollm2
    tokens, _ = chat_batch
    model, ctx = smollm2_models[Form.SCAN], checkpoint.config.max_context
    full = np.asarray(capture.logits(model, tokens, max_context=ctx))
    both, both_logits = capture.residual_and_logits(model, tokens, layer=20, where="pre", max_context=ctx)
    stopped = np.asarray(capture.residual(model, tokens, layer=20, where="pre", max_context=ctx))
    np.testing.assert_allclose(stopped, np.asarray(both), atol=1e-6 * np.abs(stopped).max(), rtol=0)
    np.testing.assert_allclose(np.asarray(both_logits), full, atol=1e-4, rtol=0)
    spliced = np.asarray(capture.logits_from_residual(model, both, layer=20, where="pre"))
    np.testing.assert_allclose(spliced, full, atol=1e-4, rtol=0)


# --- bfloat16: ours (bf16 parameters, bf16 x bf16 -> float32 contractions, float32 residual) vs transformers on CPU in
# float32 and in bf16 (bf16 parameters *and* activations). Measured on the two chat prompts (81 real positions, logit
# scale ~20): vs float32 max |diff| 0.43, argmax 100%; vs transformers' bf16 1.40, argmax 95.1% — ours is the closer
# of the two to the float32 model, since its residual stream stays float32. Tolerances: about 1.5x the measured.
BF16_TOLERANCE = {"float32": (0.75, 0.98), "bfloat16": (2.0, 0.9)}  # reference dtype -> (max |diff|, argmax share)


@pytest.mark.slow
@pytest.mark.parametrize("reference_dtype", ["bfloat16", "float32"])
def test_smollm2_bfloat16_logits_near_transformers(smollm2, chat_batch, reference_dtype):
    checkpoint, hf_model = smollm2
    tokens, mask = chat_batch
    ours = np.asarray(capture.logits(forms.build_model(checkpoint, form=Form.SCAN, dtype="bfloat16"), tokens,
                                     max_context=checkpoint.config.max_context))
    reference = hf_model.to(getattr(torch, reference_dtype))
    try:
        theirs = np.zeros(ours.shape, np.float32)
        for row in range(2):
            n = int(mask[row].sum())
            theirs[row, :n] = hf_forward(reference, tokens[row : row + 1, :n])[0]
    finally:
        hf_model.to(torch.float32)
    diff = float(np.abs(ours[mask] - theirs[mask]).max())
    top1 = float((ours[mask].argmax(-1) == theirs[mask].argmax(-1)).mean())
    print(f"\nSmolLM2 bf16 (ours) vs transformers {reference_dtype}: max abs logit difference {diff:.3g}, "
          f"argmax agreement {top1:.1%} of {int(mask.sum())} positions")
    atol, share = BF16_TOLERANCE[reference_dtype]
    assert diff <= atol and top1 >= share, (diff, top1)
