"""Splicing into a tiny random model: an identity edit reproduces the clean CE (so the splice itself is
exact), zero-ablation changes it, all three execution forms agree, and the CE and collected residuals
equal an independent numpy/scipy computation on capture's own outputs."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from checkpoints import tiny_checkpoint

from harness.claims.profiles import DEFAULT_SAE_DIR
from harness.errors import InputError
from harness.model import capture, forms
from harness.model.forms import Form
from harness.sae import splice
from harness.sae.metrics import ce_loss_recovered, quality_from_arrays
from harness.sae.sae import SAEParams, encode, reconstruct

N_LAYERS, LAYER = 3, 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=N_LAYERS, seed=11)


@pytest.fixture(scope="module")
def models(checkpoint):
    return {form: forms.build_model(checkpoint, form=form) for form in Form}


@pytest.fixture(scope="module")
def tokens(checkpoint):
    return np.random.default_rng(4).integers(0, checkpoint.config.vocab_size, size=(5, 12))


@pytest.fixture(scope="module")
def tiny_sae(checkpoint):
    rng = np.random.default_rng(0)
    d, n = checkpoint.config.d_model, 48
    w = rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    return SAEParams(W_enc=jnp.asarray(w.T), b_enc=jnp.zeros(n), W_dec=jnp.asarray(w), b_dec=jnp.zeros(d),
                     architecture="topk", k=8)


def _ce(model, tokens, ctx, edit, **kw):
    return splice.ce_losses(model, tokens, layer=LAYER, max_context=ctx, edit=edit, batch_size=tokens.shape[0], **kw)  # one batch: one compile per form


def test_next_token_ce_matches_scipy(models, checkpoint, tokens):
    logits = np.asarray(capture.logits(models[Form.SCAN], tokens, max_context=checkpoint.config.max_context))
    logp = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    expected = -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(splice.next_token_ce(logits, tokens), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", list(Form))
def test_identity_splice_gives_the_clean_ce_and_zero_ablation_does_not(models, checkpoint, tokens, form):
    losses = _ce(models[form], tokens, checkpoint.config.max_context, edit=lambda r: r)
    assert losses.n_predictions == tokens.shape[0] * (tokens.shape[1] - 1)
    assert losses.ce_spliced == pytest.approx(losses.ce_clean, rel=1e-5)
    assert abs(losses.ce_zero_ablate - losses.ce_clean) > 1e-3
    assert losses.recovered == pytest.approx(1.0, abs=1e-4)


def test_ce_is_the_same_in_all_three_forms(models, checkpoint, tokens, tiny_sae):
    ctx = checkpoint.config.max_context
    results = {form: _ce(m, tokens, ctx, edit=lambda r: reconstruct(tiny_sae, r)) for form, m in models.items()}
    reference = results[Form.UNROLLED]
    assert abs(reference.ce_spliced - reference.ce_clean) > 1e-4  # a real edit, not the identity
    for form, losses in results.items():
        for field in ("ce_clean", "ce_spliced", "ce_zero_ablate"):
            assert getattr(losses, field) == pytest.approx(getattr(reference, field), rel=1e-4), (form, field)


def test_spliced_ce_equals_ce_of_logits_continued_from_the_edited_residual(models, checkpoint, tokens, tiny_sae):
    model, ctx = models[Form.SCAN], checkpoint.config.max_context
    losses = _ce(model, tokens, ctx, edit=lambda r: reconstruct(tiny_sae, r))
    resid = np.asarray(capture.residual(model, tokens, layer=LAYER, max_context=ctx))
    edited = np.array(reconstruct(tiny_sae, resid))
    edited[:, 0] = resid[:, 0]  # BOS keeps its clean residual
    zeroed = np.zeros_like(resid)
    zeroed[:, 0] = resid[:, 0]
    for value, r in ((losses.ce_spliced, edited), (losses.ce_zero_ablate, zeroed)):
        logits = np.asarray(capture.logits_from_residual(model, r, layer=LAYER), dtype=np.float64)
        logp = scipy.special.log_softmax(logits[:, :-1], axis=-1)
        expected = -np.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()
        assert value == pytest.approx(expected, rel=1e-5)


def test_keeping_every_position_makes_any_edit_a_no_op(models, checkpoint, tokens):
    losses = _ce(models[Form.SCAN], tokens, checkpoint.config.max_context, edit=lambda r: r * 3.0 + 1.0,
                 keep_first=tokens.shape[1])
    assert losses.ce_spliced == pytest.approx(losses.ce_clean, rel=1e-6)
    assert losses.ce_zero_ablate == pytest.approx(losses.ce_clean, rel=1e-6)


def test_residual_batches_are_captures_residual_without_bos_flattened(models, checkpoint, tokens):
    model, ctx = models[Form.SCAN], checkpoint.config.max_context
    got = np.concatenate(list(splice.residual_batches(model, tokens, layer=LAYER, max_context=ctx, batch_size=2)))
    resid = np.asarray(capture.residual(model, tokens, layer=LAYER, max_context=ctx))
    # batches of 2 vs one batch of 5 compile to different kernels: float32 rounding differs (~1e-4 seen)
    np.testing.assert_allclose(got, resid[:, 1:].reshape(-1, resid.shape[-1]), rtol=1e-4, atol=1e-3)


def test_evaluate_sae_reports_quality_ce_and_outliers_consistently(models, checkpoint, tokens, tiny_sae):
    model, ctx = models[Form.SCAN], checkpoint.config.max_context
    ev = splice.evaluate_sae(model, tiny_sae, tokens, layer=LAYER, max_context=ctx, n_ce_sequences=3,
                             outlier_factor=1.05, batch_size=3)
    x = np.asarray(capture.residual(model, tokens, layer=LAYER, max_context=ctx))[:, 1:]
    x = x.reshape(-1, checkpoint.config.d_model)
    norms = np.linalg.norm(x, axis=1)
    keep = norms <= 1.05 * np.median(norms)
    assert ev.n_tokens == x.shape[0] and ev.n_outliers == int((~keep).sum()) > 0
    f = np.asarray(encode(tiny_sae, x[keep]))
    expected = quality_from_arrays(x[keep], np.asarray(reconstruct(tiny_sae, x[keep])), f)
    assert ev.quality.fvu == pytest.approx(expected.fvu, rel=1e-4)
    assert ev.quality.mean_l0 == pytest.approx(expected.mean_l0)
    assert ev.quality.n_tokens == int(keep.sum())
    assert ev.ce.n_predictions == 3 * (tokens.shape[1] - 1)
    assert ev.quality.ce_loss_recovered == pytest.approx(
        ce_loss_recovered(ev.ce.ce_clean, ev.ce.ce_spliced, ev.ce.ce_zero_ablate))


@pytest.mark.parametrize("bad", [np.zeros(5, dtype=np.int32), np.zeros((2, 1), dtype=np.int32), np.zeros((0, 4), dtype=np.int32)])
def test_bad_token_arrays_are_one_line_input_errors(models, checkpoint, bad):
    with pytest.raises(InputError) as caught:
        _ce(models[Form.SCAN], bad, checkpoint.config.max_context, edit=lambda r: r)
    assert "\n" not in str(caught.value) and "[sequence, position]" in str(caught.value)


def test_too_many_ce_sequences_is_refused(models, checkpoint, tokens, tiny_sae):
    with pytest.raises(InputError, match="n_ce_sequences=9"):
        splice.evaluate_sae(models[Form.SCAN], tiny_sae, tokens, layer=LAYER,
                            max_context=checkpoint.config.max_context, n_ce_sequences=9)


REPO = pathlib.Path(__file__).resolve().parent.parent


def _run_card(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "sae_card.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=1800)


@pytest.mark.slow
def test_card_command_recomputes_the_committed_card_figures():
    done = _run_card()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 mismatches" in done.stdout and "ce_loss_recovered" in done.stdout


@pytest.mark.slow
def test_card_command_fails_on_a_card_that_disagrees_with_the_weights(tmp_path):
    copy = tmp_path / "sae"
    shutil.copytree(DEFAULT_SAE_DIR, copy)
    settings = json.loads((copy / "sae.json").read_text())
    settings["card"]["gate_sample"]["fvu"] += 0.05
    (copy / "sae.json").write_text(json.dumps(settings))
    done = _run_card("--sae", str(copy), "--only", "gate_sample")
    assert done.returncode == 1
    assert any(line.startswith("MISMATCH") and " fvu " in line for line in done.stdout.splitlines())


def test_gate_arrays_round_tripped_through_the_cache_give_evaluate_sae_exactly(models, checkpoint, tokens, tiny_sae,
                                                                              tmp_path):
    """The evals gate fixture caches gate_arrays on disk and rebuilds the figures with evaluation_from_arrays."""
    from harness.runs.cache import ActivationCache

    model, ctx = models[Form.SCAN], checkpoint.config.max_context
    run = dict(layer=LAYER, max_context=ctx, n_ce_sequences=3, batch_size=3)
    ev = splice.evaluate_sae(model, tiny_sae, tokens, outlier_factor=1.05, **run)
    cache = ActivationCache(directory=tmp_path)
    cache.get_or_compute({"t": tokens}, lambda: splice.gate_arrays(model, tiny_sae, tokens, **run))
    arrays = cache.get_or_compute({"t": tokens}, lambda: pytest.fail("the second read must be a cache hit"))
    assert arrays["x"].shape == (tokens.shape[0] * (tokens.shape[1] - 1), checkpoint.config.d_model)
    assert splice.evaluation_from_arrays(tiny_sae, arrays, outlier_factor=1.05) == ev
