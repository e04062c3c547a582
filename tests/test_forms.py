"""The three execution forms (unrolled, LayerStack, true scan) of one tiny random checkpoint: same outputs,
lossless conversion between them, and the lowered programs that tell a true scan from an unrolled one."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from checkpoints import tiny_checkpoint

from harness.model import capture, forms
from harness.model.forms import Form

N_LAYERS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=N_LAYERS, seed=3)


@pytest.fixture(scope="module")
def models(checkpoint):
    return {form: forms.build_model(checkpoint, form=form) for form in Form}


@pytest.fixture(scope="module")
def tokens(checkpoint):
    return np.random.default_rng(1).integers(0, checkpoint.config.vocab_size, size=(2, 10))


def test_form_of_names_the_form_built(models):
    assert {form: forms.form_of(model) for form, model in models.items()} == {form: form for form in Form}


def test_three_forms_give_the_same_logits(models, checkpoint, tokens):
    out = {f: np.asarray(capture.logits(m, tokens, max_context=checkpoint.config.max_context)) for f, m in models.items()}
    assert out[Form.UNROLLED].shape == (2, 10, checkpoint.config.vocab_size)
    assert np.std(out[Form.UNROLLED]) > 0.1  # a real, non-degenerate output
    for form in (Form.LAYERSTACK, Form.SCAN):
        diff = np.abs(out[form] - out[Form.UNROLLED]).max()
        assert diff <= 1e-5, f"{form.value} vs unrolled: max abs logit difference {diff}"


def _params(model) -> dict[str, np.ndarray]:
    global_params, blocks = forms.split_params(model)
    named = {f"global/{k}": v for k, v in global_params.items()} | {f"blocks/{k}": v for k, v in blocks.items()}
    return {k: (tuple(sorted(v.named_shape.items())), np.asarray(v.unwrap(*sorted(v.named_shape)))) for k, v in named.items()}


@pytest.mark.parametrize("source,target", list(itertools.permutations(Form, 2)))
def test_convert_gives_the_target_form_with_equal_params(models, checkpoint, source, target):
    converted = forms.convert(models[source], checkpoint.config, target)
    assert forms.form_of(converted) is target
    got, expected = _params(converted), _params(models[target])
    assert set(got) == set(expected) and len(got) == 3 + 9  # embedder, final norm, lm head + 9 block tensors
    for name, (shape, value) in expected.items():
        assert got[name][0] == shape, name
        np.testing.assert_array_equal(got[name][1], value, err_msg=name)


def test_convert_round_trip_returns_the_same_params(models, checkpoint):
    for a, b in itertools.permutations(Form, 2):
        back = forms.convert(forms.convert(models[a], checkpoint.config, b), checkpoint.config, a)
        for name, (shape, value) in _params(models[a]).items():
            np.testing.assert_array_equal(_params(back)[name][1], value, err_msg=f"{a.value}->{b.value}->{a.value} {name}")


def _while_ops(model, tokens) -> int:
    text = capture._logits.lower(capture.pz.freeze_params(model), tokens).as_text()
    return text.count("stablehlo.while")


def test_only_the_true_scan_lowers_to_a_while_loop(models, tokens):
    """penzai 0.2.5's LayerStack scans with unroll=True: straight-line code, like the unrolled form."""
    counts = {form: _while_ops(model, tokens) for form, model in models.items()}
    assert counts == {Form.UNROLLED: 0, Form.LAYERSTACK: 0, Form.SCAN: 1}
