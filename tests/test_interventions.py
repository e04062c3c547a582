"""Interventions as model rewrites (harness.model.interventions, harness.sae.clamp) against an independent reference: a
transformers-written llama run by transformers itself, with torch forward hooks doing the same steering / ablation /
clamping, in all three execution forms. Invariants (hypothesis): alpha = 0 is the plain model bit for bit; the residual
entering the steered block is linear in alpha and every later residual is what the hooked reference computes; steered
logits do not depend on batch composition or packing; the shared-prefix alpha grid equals separate steered runs."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import random_llama, write_hf_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from penzai import pz

from harness.errors import InputError
from harness.model import capture, forms
from harness.model import interventions as iv
from harness.model.forms import Form
from harness.model.hf_reader import read_hf_dir
from harness.runs.packing import pack_trie, stack_rows
from harness.sae.clamp import ClampFeature
from harness.sae.sae import SAEParams

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

D, N_LAYERS, VOCAB, CTX = 64, 3, 300, 128
SEQ = 10
# float32 on both sides. Measured on this model, the same in all three forms (max |ours - transformers|, |logits| <= 7):
# plain logits 8e-6; steered (alpha -4..16, |v| = 7.3) 2e-6..8e-6; ablated 9e-6; clamped 7e-6..1e-5. Residuals (|x| up
# to 25): at most 1.1e-6 of the layer's largest |x|. Packed vs alone 5e-6; batch composition and the grid: 0 (bitwise).
LOGIT_TOL = 1e-4
RESID_RTOL = 1e-5  # of the largest |residual| in the layer


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    hf = random_llama(seed=7, d=D, n_layers=N_LAYERS, vocab=VOCAB, ctx=CTX)
    checkpoint = read_hf_dir(write_hf_checkpoint(tmp_path_factory.mktemp("llama"), hf))
    return checkpoint, hf


@pytest.fixture(scope="module")
def models(tiny_llama):
    checkpoint, _ = tiny_llama
    return {form: forms.build_model(checkpoint, form=form) for form in Form}


TOKENS = np.random.default_rng(11).integers(3, VOCAB, size=(2, SEQ))
VECTOR = (np.random.default_rng(12).normal(size=D) * 8 / np.sqrt(D)).astype(np.float32)  # norm ~8, |x| ~ 1..60


def _tensor(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _hf_run(hf, tokens, *, pre=None, attn=None, mlp=None):
    """transformers' (logits, hidden states [batch, seq, d] entering each block then leaving the last) with `pre(layer,
    x)` as a forward pre-hook on every decoder layer's input, `attn(x)` / `mlp(x)` on every attention / MLP output."""
    hooks, entering = [], {}
    for i, layer in enumerate(hf.model.layers):
        def pre_hook(module, args, i=i):
            x = args[0] if pre is None else pre(i, args[0])
            entering[i] = x.detach().numpy().copy()
            return (x, *args[1:])
        hooks.append(layer.register_forward_pre_hook(pre_hook))
        if attn is not None:
            hooks.append(layer.self_attn.register_forward_hook(lambda m, i_, out: (attn(out[0]), *out[1:])))
        if mlp is not None:
            hooks.append(layer.mlp.register_forward_hook(lambda m, i_, out: mlp(out)))
    hooks.append(hf.model.norm.register_forward_pre_hook(
        lambda m, args: entering.__setitem__(len(hf.model.layers), args[0].detach().numpy().copy())))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor(tokens, dtype=torch.long), use_cache=False).logits.numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, [entering[i] for i in range(len(hf.model.layers) + 1)]


def _steer_hook(vector, alpha, layer, from_position=None):
    v = _tensor(vector)

    def pre(i, x):
        if i != layer:
            return x
        mask = torch.ones(x.shape[1]) if from_position is None else (torch.arange(x.shape[1]) >= from_position).float()
        return x + alpha * mask[:, None] * v
    return pre


def _ablation_hooks(direction):
    """andyrdt/refusal_direction's hooks: x - (x·r̂) r̂ on every block's input and every attention / MLP output."""
    r = _tensor(direction / np.linalg.norm(direction))
    project = lambda x: x - (x @ r)[..., None] * r
    return {"pre": lambda i, x: project(x), "attn": project, "mlp": project}


def _resid(model, tokens, layer, **kw):
    return np.asarray(capture.residual(model, tokens, layer=layer, where="pre", max_context=CTX, **kw))


def _residuals(model, tokens):
    """Residual entering each block, then leaving the last one."""
    out = [_resid(model, tokens, i) for i in range(N_LAYERS)]
    return out + [np.asarray(capture.residual(model, tokens, layer=N_LAYERS - 1, where="post", max_context=CTX))]


def _logits(model, tokens, **kw):
    return np.asarray(capture.logits(model, tokens, max_context=CTX, **kw))


def _relu_sae(seed: int = 0, d_sae: int = 48) -> SAEParams:
    rng = np.random.default_rng(seed)
    return SAEParams(W_enc=(rng.normal(size=(D, d_sae)) / np.sqrt(D)).astype(np.float32),
                     b_enc=rng.normal(size=d_sae).astype(np.float32) * 0.1,
                     W_dec=(rng.normal(size=(d_sae, D)) / np.sqrt(d_sae)).astype(np.float32),
                     b_dec=rng.normal(size=D).astype(np.float32) * 0.1, apply_b_dec_to_input=True, out_norm_factor=2.0)


# ------------------------------------------------------------------------------------------ against transformers


@pytest.mark.parametrize("form", list(Form))
def test_steering_equals_a_forward_pre_hook_on_the_block(tiny_llama, models, form):
    _, hf = tiny_llama
    for layer, alpha, from_position in ((0, 3.0, None), (1, -4.0, 4), (2, 8.0, None)):
        steered = iv.intervene(models[form], iv.Steer(vector=VECTOR, alpha=alpha, layer=layer,
                                                      from_position=from_position))
        want, want_resid = _hf_run(hf, TOKENS, pre=_steer_hook(VECTOR, alpha, layer, from_position))
        got = _logits(steered, TOKENS)
        assert np.abs(got - want).max() <= LOGIT_TOL, (layer, alpha, from_position)
        assert np.abs(got - _logits(models[form], TOKENS)).max() > 0.1  # it did steer
        for i, (ours, theirs) in enumerate(zip(_residuals(steered, TOKENS), want_resid)):
            assert np.abs(ours - theirs).max() <= RESID_RTOL * np.abs(theirs).max() + 1e-6, (layer, i)


@pytest.mark.parametrize("form", list(Form))
def test_directional_ablation_equals_the_refusal_direction_hooks(tiny_llama, models, form):
    _, hf = tiny_llama
    ablated = iv.intervene(models[form], iv.Ablate(direction=VECTOR))
    want, want_resid = _hf_run(hf, TOKENS, **_ablation_hooks(VECTOR))
    assert np.abs(_logits(ablated, TOKENS) - want).max() <= LOGIT_TOL
    unit = VECTOR / np.linalg.norm(VECTOR)
    for i, (ours, theirs) in enumerate(zip(_residuals(ablated, TOKENS), want_resid)):
        assert np.abs(ours - theirs).max() <= RESID_RTOL * np.abs(theirs).max() + 1e-6, i
        assert np.abs(ours @ unit).max() <= 1e-6 * np.abs(ours).max() * np.sqrt(D), i  # orthogonal at every layer
    # what each sub-block writes is ablated too (hook_attn_out / hook_mlp_out of the ablated model)
    for where in ("attn_out", "mlp_out"):
        write = np.asarray(capture.residual(ablated, TOKENS, layer=1, where=where, max_context=CTX))
        assert np.abs(write @ unit).max() <= 1e-6 * np.abs(write).max() * np.sqrt(D)


@pytest.mark.parametrize("form", list(Form))
def test_clamping_a_feature_equals_a_hook_that_encodes_clamps_and_adds_the_decoded_difference(tiny_llama, models, form):
    _, hf = tiny_llama
    params = _relu_sae()
    W_enc, b_enc, W_dec, b_dec = map(_tensor, (params.W_enc, params.b_enc, params.W_dec, params.b_dec))

    def hook(layer, feature, value):
        def pre(i, x):
            if i != layer:
                return x
            f = torch.relu((x - b_dec) @ W_enc + b_enc)
            clamped = f.clone()
            clamped[..., feature] = value
            decode = lambda g: (g @ W_dec + b_dec) / params.out_norm_factor
            return x + decode(clamped) - decode(f)
        return pre

    for layer, feature, value in ((0, 5, 12.0), (2, 17, 0.0)):
        clamped = iv.intervene(models[form], ClampFeature(sae_params=params, feature=feature, value=value,
                                                             layer=layer))
        want, _ = _hf_run(hf, TOKENS, pre=hook(layer, feature, value))
        got = _logits(clamped, TOKENS)
        assert np.abs(got - want).max() <= LOGIT_TOL, (layer, feature)
        assert np.abs(got - _logits(models[form], TOKENS)).max() > 1e-3  # it changed something


# ------------------------------------------------------------------------------------------ invariants


@settings(max_examples=12, deadline=None)
@given(form=st.sampled_from(list(Form)), layer=st.integers(0, N_LAYERS - 1),
       from_position=st.none() | st.integers(0, SEQ + 2), seed=st.integers(0, 2**16))
def test_alpha_zero_is_the_plain_model_bit_for_bit(models, form, layer, from_position, seed):
    vector = np.random.default_rng(seed).normal(size=D).astype(np.float32) * 100
    steered = iv.intervene(models[form], iv.Steer(vector=vector, alpha=0.0, layer=layer, from_position=from_position))
    assert np.array_equal(_logits(steered, TOKENS), _logits(models[form], TOKENS))
    for ours, plain in zip(_residuals(steered, TOKENS), _residuals(models[form], TOKENS)):
        assert np.array_equal(ours, plain)


@settings(max_examples=12, deadline=None)
@given(form=st.sampled_from(list(Form)), layer=st.integers(0, N_LAYERS - 1),
       alpha=st.floats(-16, 16, allow_nan=False, width=32), from_position=st.none() | st.integers(0, SEQ - 1))
def test_the_residual_entering_the_block_is_linear_in_alpha_and_later_ones_are_the_models(
        tiny_llama, models, form, layer, alpha, from_position):
    _, hf = tiny_llama
    steered = iv.intervene(models[form], iv.Steer(vector=VECTOR, alpha=alpha, layer=layer, from_position=from_position))
    ours = _residuals(steered, TOKENS)
    # at resid_pre L: exactly x + alpha * v (one float32 rounding of each product and of the sum)
    plain = _resid(models[form], TOKENS, layer).astype(np.float64)
    mask = np.ones(SEQ, np.float32) if from_position is None else (np.arange(SEQ) >= from_position).astype(np.float32)
    added = np.float32(alpha) * VECTOR * mask[:, None]  # float32, as the model computes it
    exact = plain + added.astype(np.float64)
    assert (np.abs(ours[layer] - exact) <= np.spacing(np.abs(ours[layer])) + np.spacing(np.abs(added))).all()
    # before L nothing moved; after L each residual is what transformers computes with the same hook
    for i in range(layer):
        assert np.array_equal(ours[i], _resid(models[form], TOKENS, i))
    want, want_resid = _hf_run(hf, TOKENS, pre=_steer_hook(VECTOR, float(np.float32(alpha)), layer, from_position))
    for i in range(layer, N_LAYERS + 1):
        assert np.abs(ours[i] - want_resid[i]).max() <= RESID_RTOL * np.abs(want_resid[i]).max() + 1e-6, i
    assert np.abs(_logits(steered, TOKENS) - want).max() <= LOGIT_TOL


@pytest.fixture(scope="module")
def packed_rows():
    """Two packed trie rows of sequences sharing prefixes, and the sequences."""
    rng = np.random.default_rng(5)
    rows = []
    for prefix_len, cont_lens in ((5, (1, 3, 2)), (3, (4, 1))):
        prefix = list(rng.integers(3, VOCAB, prefix_len))
        seqs = [prefix + list(rng.integers(3, VOCAB, n)) for n in cont_lens] + [prefix[:2]]
        rows.append((seqs, pack_trie(seqs)))
    return rows


@pytest.mark.parametrize("form", [Form.UNROLLED, Form.SCAN])
@pytest.mark.parametrize(("layer", "from_position"), [(1, None), (2, 4)])
def test_steered_logits_do_not_depend_on_batch_composition_or_packing(models, packed_rows, form, layer, from_position):
    steered = iv.intervene(models[form], iv.Steer(vector=VECTOR, alpha=5.0, layer=layer, from_position=from_position))
    ids, packing = stack_rows([p for _, p in packed_rows], 16)
    packed = _logits(steered, ids, packing=packing)
    tol = 1e-4
    for r, (seqs, trie) in enumerate(packed_rows):
        for i, seq in enumerate(seqs):
            alone = _logits(steered, np.array([seq]))[0]
            assert np.abs(packed[r, trie.paths[i]] - alone).max() <= tol, (r, i)
    # a row alone equals the same row inside a batch of others
    batch = _logits(steered, TOKENS)
    for b in range(len(TOKENS)):
        assert np.abs(_logits(steered, TOKENS[b : b + 1])[0] - batch[b]).max() <= tol


@pytest.mark.parametrize("form", list(Form))
def test_the_alpha_grid_equals_separate_steered_runs_and_counts_its_blocks(models, form):
    alphas = (-4.0, 0.0, 2.5, 8.0)
    for layer, from_position in ((0, None), (2, 3)):
        grid = iv.steer_grid(models[form], TOKENS, vector=VECTOR, alphas=alphas, layer=layer,
                             from_position=from_position, max_context=CTX)
        for alpha, got in zip(alphas, grid.logits):
            steered = iv.intervene(models[form], iv.Steer(vector=VECTOR, alpha=alpha, layer=layer,
                                                          from_position=from_position))
            np.testing.assert_allclose(np.asarray(got), _logits(steered, TOKENS), rtol=0, atol=1e-5)  # measured: 0
        assert np.array_equal(np.asarray(grid.logits[1]), _logits(models[form], TOKENS))  # alpha 0 bit for bit
        assert grid.blocks_run == layer + len(alphas) * (N_LAYERS - layer)
        assert grid.forwards == pytest.approx((layer + 4 * (N_LAYERS - layer)) / N_LAYERS)
        assert grid.forwards <= 1 + 4 * (N_LAYERS - layer) / N_LAYERS and grid.separate_forwards == 4


def test_the_alpha_grid_runs_a_packed_batch(models, packed_rows):
    model = models[Form.SCAN]
    ids, packing = stack_rows([p for _, p in packed_rows], 16)
    grid = iv.steer_grid(model, ids, vector=VECTOR, alphas=(1.5, -3.0), layer=1, from_position=2, max_context=CTX,
                         packing=packing)
    for alpha, got in zip(grid.alphas, grid.logits):
        steered = iv.intervene(model, iv.Steer(vector=VECTOR, alpha=alpha, layer=1, from_position=2))
        np.testing.assert_allclose(np.asarray(got), _logits(steered, ids, packing=packing), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ structure and errors


def test_ablation_leaves_a_parallel_residual_model_orthogonal_at_every_layer():
    from harness.model.config import ModelConfig
    from harness.studies import compile_timing

    config = ModelConfig(architecture="gpt_neox", d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8,
                         d_ffn=64, vocab_size=50, rope_base=1e4, norm_eps=1e-5, tie_embeddings=False, max_context=64,
                         norm="layer", mlp="gelu", parallel_residual=True, rotary_dim=2)
    model = compile_timing.model_in_form(config, compile_timing.random_params(config), "scan")
    r = np.random.default_rng(0).normal(size=32).astype(np.float32)
    ablated = iv.intervene(model, iv.Ablate(direction=r))
    tokens = np.random.default_rng(1).integers(0, 50, (2, 7))
    for layer, where in ((0, "pre"), (1, "pre"), (1, "post")):
        x = np.asarray(capture.residual(ablated, tokens, layer=layer, where=where, max_context=64))
        assert np.abs(x @ (r / np.linalg.norm(r))).max() <= 1e-6 * np.abs(x).max() * np.sqrt(32)


def test_stacked_forms_keep_one_block_body_and_the_rewrite_keeps_the_form(models):
    spec = iv.Steer(vector=VECTOR, alpha=1.0, layer=2)
    for form, model in models.items():
        steered = iv.intervene(model, spec, iv.Ablate(direction=VECTOR))
        assert forms.form_of(steered) is form and capture.n_layers(steered) == N_LAYERS
    stack = next(l for l in iv.steer(models[Form.SCAN], spec).body.sublayers if isinstance(l, forms.ScanLayerStack))
    (add,) = pz.select(stack).at_instances_of(iv.AddVector).get_sequence()
    np.testing.assert_array_equal(np.asarray(add.alpha.unwrap(forms.LAYER_AXIS)), [0.0, 1.0, 0.0])  # at block L-1's end


def test_bad_interventions_are_refused_in_one_line(models):
    model = models[Form.SCAN]
    cases = [
        (iv.Steer(vector=VECTOR, alpha=1.0, layer=N_LAYERS),
         r"intervention layer 3 out of range: the model has blocks 0..2"),
        (iv.Steer(vector=VECTOR[:5], alpha=1.0, layer=0), r"steering vector: shape \(5,\), expected \[d_model=64\]"),
        (iv.Steer(vector=np.full(D, np.nan), alpha=1.0, layer=0), r"steering vector: 64 NaN/inf values"),
        (iv.Steer(vector=VECTOR, alpha=float("inf"), layer=0), r"alpha=inf: expected a finite number"),
        (iv.Steer(vector=VECTOR, alpha=1.0, layer=0, from_position=-1), r"from_position=-1"),
        (iv.Ablate(direction=np.zeros(D)), r"the zero vector has no direction"),
        (ClampFeature(sae_params=_relu_sae(), feature=48, value=1.0, layer=0), r"feature index 48 out of range"),
        (ClampFeature(sae_params=SAEParams(W_enc=np.zeros((8, 4)), b_enc=np.zeros(4), W_dec=np.zeros((4, 8)),
                                              b_dec=np.zeros(8)), feature=0, value=1.0, layer=0),
         r"SAE width d_model=8 does not match the model's d_model=64"),
        ("steer", r"intervention 'steer': expected a spec with a rewrite\(model\) method"),
    ]
    for spec, message in cases:
        with pytest.raises(InputError, match=message) as caught:
            iv.intervene(model, spec)
        assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="at least one alpha"):
        iv.steer_grid(model, TOKENS, vector=VECTOR, alphas=[], layer=1, max_context=CTX)
