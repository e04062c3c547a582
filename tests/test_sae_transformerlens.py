"""SAEs trained on TransformerLens' residual (SAELens), read faithfully on the plain model this harness runs.

center_writing_weights: TransformerLens' HookedTransformer.load_and_process_state_dict (1.x and 3.x) centres W_E,
W_pos, W_O, b_O, W_out and b_out over d_model, for LayerNorm models only (RMSNorm: skipped with a warning). Here that
processing is applied to a GPT-2 written by transformers itself, and its residuals (and sub-block outputs) are checked
to be the plain model's minus their mean over d_model, which is what an SAE with ``center_input`` reads from the
harness's own capture. Then the SAE maths with ``center_input`` against numpy, the splice (a lossless centred SAE
gives the clean CE and zero FVU; the mean it adds back does not move a LayerNorm model's CE), ``for_model`` (ignored
on RMSNorm, as TransformerLens) and prepend_bos (the run's prompts begin with GPT-2's <|endoftext|>), and the claims
plugin's fixtures doing both for a run (its cache keys changing with the prompts).
"""

from __future__ import annotations

import dataclasses
import json

import family_standins as fs
import jax.numpy as jnp
import numpy as np
import pytest

from harness.data.records import MCQuestion
from harness.model import capture
from harness.model.forms import Form, build_model
from harness.model.sources import read_checkpoint
from harness.prompts.formats import build_prompts
from harness.sae import splice
from harness.sae.metrics import measure_quality
from harness.sae.sae import (
    SAEMeta,
    SAEParams,
    bos_for_sae,
    centred,
    check_params,
    checkpoint_for_sae,
    decode,
    decoder_projection,
    encode,
    for_model,
    pre_activations,
    reconstruct,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytest_plugins = ["pytester"]

D, H = 16, 48
TOL = dict(rtol=1e-4, atol=1e-4)


def _random_sae(seed=0, *, center_input=True, apply_b_dec_to_input=True, d=D, h=H):
    rng = np.random.default_rng(seed)
    w = dict(W_enc=rng.normal(size=(d, h)) / np.sqrt(d), b_enc=rng.normal(scale=0.3, size=h),
             W_dec=rng.normal(size=(h, d)) / np.sqrt(h), b_dec=rng.normal(scale=0.3, size=d))
    params = SAEParams(**{k: jnp.asarray(v, jnp.float32) for k, v in w.items()}, architecture="relu",
                       apply_b_dec_to_input=apply_b_dec_to_input, center_input=center_input)
    return check_params(params, source="test"), w


def _lossless_sae(d: int, b_dec: np.ndarray, *, center_input=True) -> SAEParams:
    """2d ReLU features ±e_i: decode(encode(x)) = x' + b_dec exactly, x' the SAE's input (x_c − b_dec)."""
    eye = np.eye(d)
    return check_params(SAEParams(W_enc=jnp.asarray(np.concatenate([eye, -eye], 1), jnp.float32),
                                  b_enc=jnp.zeros(2 * d, jnp.float32),
                                  W_dec=jnp.asarray(np.concatenate([eye, -eye], 0), jnp.float32),
                                  b_dec=jnp.asarray(b_dec, jnp.float32), architecture="relu",
                                  apply_b_dec_to_input=True, center_input=center_input), source="lossless")


def _meta(**fields) -> SAEMeta:
    return SAEMeta(d_model=D, d_sae=H, source="test", **fields)


# ---------------------------------------------------------------------------------------------- the maths


def test_centred_encode_decode_reconstruct_and_decoder_projection_against_numpy():
    params, w = _random_sae()
    x = np.random.default_rng(1).normal(scale=2.0, size=(3, 5, D)) + 4.0  # a large mean over d_model
    x_c = x - x.mean(-1, keepdims=True)
    pre = (x_c - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f = np.maximum(pre, 0)
    x_hat = f @ w["W_dec"] + w["b_dec"]
    np.testing.assert_allclose(np.asarray(centred(params, x)), x_c, **TOL)
    np.testing.assert_allclose(np.asarray(pre_activations(params, x)), pre, **TOL)
    np.testing.assert_allclose(np.asarray(encode(params, x)), f, **TOL)
    np.testing.assert_allclose(np.asarray(decode(params, f)), x_hat, **TOL)  # the SAE's own (centred) space
    np.testing.assert_allclose(np.asarray(reconstruct(params, x)), x_hat + x.mean(-1, keepdims=True), **TOL)
    np.testing.assert_allclose(np.asarray(decoder_projection(params, x, [4, 0])), x_c @ w["W_dec"][[4, 0]].T, **TOL)
    plain = dataclasses.replace(params, center_input=False)
    assert np.abs(np.asarray(encode(plain, x)) - f).max() > 0.1  # the centring is not a no-op on this x


def test_a_lossless_centred_sae_gives_x_back_and_its_error_is_the_centred_one():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, D)) + rng.normal(scale=3.0, size=(6, 1))
    params = _lossless_sae(D, rng.normal(size=D))
    x_c = x - x.mean(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(decode(params, encode(params, x))), x_c, **TOL)  # input centred...
    np.testing.assert_allclose(np.asarray(reconstruct(params, x)), x, **TOL)  # ...and the mean added back
    assert measure_quality(params, x).fvu < 1e-9  # measured in the SAE's space, as SAELens measures it
    assert measure_quality(dataclasses.replace(params, center_input=False), x).fvu < 1e-9


def test_for_model_centres_on_layernorm_and_ignores_the_flag_on_rmsnorm():
    params, _ = _random_sae(center_input=False)
    meta = _meta(center_writing_weights=True)
    on_ln, note = for_model(params, meta, norm="layer")
    assert on_ln.center_input and "center_writing_weights=true" in note
    on_rms, note = for_model(dataclasses.replace(params, center_input=True), meta, norm="rms")
    assert not on_rms.center_input and "ignored" in note and "'rms'" in note
    plain = _meta(center_writing_weights=False)
    assert for_model(params, plain, norm="layer") == (params, None)
    assert for_model(params, _meta(), norm="layer") == (params, None)  # a format that does not say


@pytest.mark.parametrize("prepend,add_bos,bos,want", [
    (True, False, "<|endoftext|>", (True, "starts with '<|endoftext|>'")),
    (True, False, None, (False, "no BOS token")),
    (True, True, "<s>", (False, None)),
    (False, True, "<bos>", (False, "never saw")),
    (False, False, "<s>", (False, None)),
    (None, False, "<s>", (False, None)),
])
def test_bos_for_sae(prepend, add_bos, bos, want):
    got, note = bos_for_sae(_meta(prepend_bos=prepend), add_bos=add_bos, bos_token=bos)
    assert got == want[0]
    assert note is None if want[1] is None else want[1] in note


# ---------------------------------------------------------------------------------------------- GPT-2 itself


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(folder, checkpoint, tokens) of transformers' own tiny random GPT-2 (every LayerNorm weight and bias random)."""
    folder = fs.write_hf("gpt2", tmp_path_factory.mktemp("gpt2"))
    checkpoint = read_checkpoint(folder)
    tokens = np.random.default_rng(0).integers(1, checkpoint.config.vocab_size, (2, 20))
    return folder, checkpoint, tokens


def _transformerlens_centred(folder):
    """transformers' GPT-2 with TransformerLens' center_writing_weights applied: W_E, W_pos, each block's attention and
    MLP output projection (Conv1D [in, d_model]) and their biases minus their mean over d_model."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        t = model.transformer
        for weight in (t.wte.weight, t.wpe.weight):
            weight -= weight.mean(-1, keepdim=True)
        for block in t.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight -= proj.weight.mean(-1, keepdim=True)
                proj.bias -= proj.bias.mean()
    return model


def _forward(model, tokens):
    """hidden_states and each block's attention / MLP output, as numpy."""
    outs = {"attn_out": [], "mlp_out": []}
    hooks = [h.attn.register_forward_hook(lambda m, i, o: outs["attn_out"].append(o[0].numpy()))
             for h in model.transformer.h]
    hooks += [h.mlp.register_forward_hook(lambda m, i, o: outs["mlp_out"].append(o.numpy()))
              for h in model.transformer.h]
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True, use_cache=False)
    for hook in hooks:
        hook.remove()
    return [h.numpy() for h in out.hidden_states], outs


def test_transformerlens_centred_activations_are_the_plain_ones_minus_their_mean(gpt2):
    """The equivalence SAEParams.center_input rests on, at every hook this harness reads: the processed model's
    resid_pre / resid_post / attn_out / mlp_out are the plain model's minus their mean over d_model, and the harness's
    own capture of the plain checkpoint, centred, gives them."""
    folder, checkpoint, tokens = gpt2
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    hidden, sub = _forward(plain, tokens)
    hidden_c, sub_c = _forward(_transformerlens_centred(folder), tokens)
    n_layers = checkpoint.config.n_layers
    for layer in range(n_layers):  # hidden_states[n_layers] is final-normed: not a residual
        np.testing.assert_allclose(hidden_c[layer], hidden[layer] - hidden[layer].mean(-1, keepdims=True), atol=2e-5)
        assert np.abs(hidden[layer].mean(-1)).max() > 0.05  # the plain residual has a mean to remove
        for where in ("attn_out", "mlp_out"):
            np.testing.assert_allclose(sub_c[where][layer], sub[where][layer] - sub[where][layer].mean(-1, keepdims=True),
                                       atol=2e-5)
    model = build_model(checkpoint, form=Form.SCAN)
    params, _ = _random_sae(d=checkpoint.config.d_model)
    for layer, where, theirs in [(1, "pre", hidden_c[1]), (1, "post", hidden_c[2]), (2, "attn_out", sub_c["attn_out"][2]),
                                 (0, "mlp_out", sub_c["mlp_out"][0])]:
        resid = capture.residual(model, tokens, layer=layer, where=where, max_context=checkpoint.config.max_context)
        np.testing.assert_allclose(np.asarray(centred(params, resid)), theirs, atol=1e-4)


def test_splicing_a_centred_sae_into_gpt2(gpt2):
    """A lossless centred SAE spliced in gives the clean CE, and the gate's figures FVU 0 / CE recovered 1. A lossy one:
    the mean reconstruct adds back does not move the CE (every LayerNorm downstream removes a common offset), while
    centring its input does (the encoder sees another vector)."""
    _, checkpoint, tokens = gpt2
    model = build_model(checkpoint, form=Form.SCAN)
    d, run = checkpoint.config.d_model, dict(layer=1, max_context=checkpoint.config.max_context)
    lossless = _lossless_sae(d, np.random.default_rng(3).normal(size=d))
    ev = splice.evaluate_sae(model, lossless, tokens, **run)
    assert abs(ev.ce.ce_spliced - ev.ce.ce_clean) < 1e-4 and abs(ev.ce.recovered - 1) < 1e-3
    assert ev.quality.fvu < 1e-6
    lossy, _ = _random_sae(7, d=d, h=3 * d)
    ce = {name: splice.ce_losses(model, tokens, edit=edit, **run).ce_spliced for name, edit in {
        "reconstruct": lambda r: reconstruct(lossy, r),
        "without the mean": lambda r: decode(lossy, encode(lossy, r)),
        "input not centred": lambda r: reconstruct(dataclasses.replace(lossy, center_input=False), r)}.items()}
    assert abs(ce["reconstruct"] - ce["without the mean"]) < 1e-4, ce
    assert abs(ce["reconstruct"] - ce["input not centred"]) > 1e-3, ce


def test_the_run_prompts_gpt2_with_its_bos_for_an_sae_trained_with_one(gpt2):
    """GPT-2's tokenizer adds no BOS (add_bos_token false); an SAE trained with prepend_bos=true gets prompts that begin
    with <|endoftext|>, one token longer than the model's own; one trained without BOS leaves the tokenizer as it is."""
    _, checkpoint, _ = gpt2
    assert not checkpoint.tokenizer.add_bos and checkpoint.tokenizer.bos_token == "<|endoftext|>"
    adapted, note = checkpoint_for_sae(checkpoint, _meta(prepend_bos=True))
    assert adapted.tokenizer.add_bos and "'<|endoftext|>'" in note
    assert adapted.config is checkpoint.config and adapted.weights is checkpoint.weights
    q = MCQuestion(question="Which is two?", choices=("one", "two", "three", "four"), answer=1, subject="s",
                   source="test", qid="q0")
    bos = checkpoint.tokenizer.token_id("<|endoftext|>")
    for fmt in ("letter", "text", "cloze"):
        mine, theirs = (build_prompts(c.tokenizer, q, fmt, max_len=10**6) for c in (adapted, checkpoint))
        for ours, plain in zip(mine.options, theirs.options):
            assert ours.ids[0] == bos and plain.ids[0] != bos and ours.ids[1:] == plain.ids
    assert checkpoint_for_sae(checkpoint, _meta(prepend_bos=False)) == (checkpoint, None)


# ---------------------------------------------------------------------------------------------- the claims fixtures

_PROBE = '''
import numpy as np


def test_probe(checkpoint, sae, cached, activation_cache, provenance, monkeypatch):
    keys = []
    monkeypatch.setattr(activation_cache, "get_or_compute", lambda key, compute: keys.append(key) or compute())
    cached("probe", {}, lambda: {"a": np.zeros(1)})
    params, meta = sae
    print("PROBE", checkpoint.tokenizer.add_bos, keys[0].get("bos_for_sae"), params.center_input,
          "sae prepend_bos" in provenance, "sae input centring" in provenance)
'''


@pytest.mark.parametrize("release,want", [("original", "PROBE True True True True True"),
                                          ("no bos, not centred", "PROBE False None False False False")])
def test_the_claims_run_prompts_and_reads_as_the_sae_was_trained(pytester, gpt2, tmp_path, release, want):
    """The plugin's fixtures, on the GPT-2 stand-in: with gpt2-small-res-jb's own cfg.json the run's tokenizer adds
    BOS, every cache key says so (the prompts differ from the model's own), the SAE reads a centred residual and the
    provenance says both; with a SAELens 6 cfg stating prepend_bos=false and no centring, nothing changes."""
    from standins import gpt2_res_jb_folder

    folder, checkpoint, _ = gpt2
    d = checkpoint.config.d_model
    _, w = _random_sae(d=d, h=2 * d)
    sae = gpt2_res_jb_folder(tmp_path / "gpt2-small-res-jb", 1, w)
    if release != "original":
        (sae / "cfg.json").write_text(json.dumps({
            "architecture": "standard", "d_in": d, "d_sae": 2 * d, "apply_b_dec_to_input": True,
            "metadata": {"sae_lens_version": "6.12.1", "hook_name": "blocks.1.hook_resid_pre", "prepend_bos": False,
                         "model_from_pretrained_kwargs": {"center_writing_weights": False}}}))
    pytester.makeini("[pytest]\nclaims_registry = evals/claims.toml\ntestpaths = evals\n")
    evals = pytester.mkdir("evals")
    (evals / "claims.toml").write_text(f'[[profile]]\nname = "mine"\nmodel = "{folder}"\nsae = "{sae}"\nlayer = 1\n'
                                       'datasets = ["mmlu"]\n')
    (evals / "test_probe.py").write_text(_PROBE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--profile", "mine", "-s", "--compile-cache=off",
                                           f"--cache-dir={tmp_path / 'cache'}", f"--reports-dir={tmp_path / 'reports'}")
    result.stdout.fnmatch_lines([f"*{want}*"])
    assert result.ret == 0, result.stdout.str()[-3000:]
