"""Residual capture on a tiny random model: bad layer / where / tokens raise one-line InputErrors, the
forward that stops at a layer never runs the later blocks, and splicing the residual back gives the logits."""

from __future__ import annotations

import numpy as np
import pytest

from checkpoints import tiny_checkpoint
from harness.errors import InputError
from harness.model import capture, forms
from harness.model.forms import Form

N_LAYERS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=N_LAYERS, seed=5)


@pytest.fixture(scope="module")
def model(checkpoint):
    return forms.build_model(checkpoint, form=Form.SCAN)


@pytest.fixture(scope="module")
def tokens(checkpoint):
    return np.random.default_rng(2).integers(0, checkpoint.config.vocab_size, size=(2, 8))


def _one_line_error(call) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("layer", [-1, N_LAYERS, N_LAYERS + 7])
def test_layer_out_of_range_names_the_layer_and_the_range(model, checkpoint, tokens, layer):
    ctx = checkpoint.config.max_context
    for call in (
        lambda: capture.residual(model, tokens, layer=layer, max_context=ctx),
        lambda: capture.residual_and_logits(model, tokens, layer=layer, where="post", max_context=ctx),
        lambda: capture.logits_from_residual(model, np.zeros((2, 8, checkpoint.config.d_model)), layer=layer),
    ):
        message = _one_line_error(call)
        assert f"layer {layer}" in message and f"0..{N_LAYERS - 1}" in message


def test_where_other_than_a_capture_point_is_rejected(model, checkpoint, tokens):
    message = _one_line_error(lambda: capture.residual(model, tokens, layer=0, where="mid", max_context=128))
    assert "'mid'" in message and "['pre', 'post', 'attn_out', 'mlp_out']" in message


def test_prompt_longer_than_the_context_is_rejected_not_truncated(model, checkpoint, tokens):
    ctx = checkpoint.config.max_context
    too_long = np.zeros((1, ctx + 1), dtype=np.int64)
    for call in (
        lambda: capture.logits(model, too_long, max_context=ctx),
        lambda: capture.residual(model, too_long, layer=0, max_context=ctx),
        lambda: capture.residual_and_logits(model, too_long, layer=0, max_context=ctx),
    ):
        message = _one_line_error(call)
        assert f"{ctx + 1} tokens" in message and f"context of {ctx}" in message
    # Exactly the context length is accepted.
    assert capture.logits(model, too_long[:, :ctx], max_context=ctx).shape == (1, ctx, checkpoint.config.vocab_size)


@pytest.mark.parametrize(
    "bad", [np.zeros((1, 4), dtype=np.float32), np.array(["a", "b"]).reshape(1, 2), np.zeros(4, dtype=np.int32)]
)
def test_tokens_must_be_a_2d_integer_array(model, bad):
    message = _one_line_error(lambda: capture.logits(model, bad, max_context=128))
    assert "integer [batch, seq]" in message and str(bad.dtype) in message


def _poisoned_after(model, checkpoint, first_bad: int, form: Form):
    """The same model with every block from `first_bad` on set to NaN."""
    global_params, blocks = forms.split_params(model)
    poisoned = {}
    for label, stacked in blocks.items():
        values = np.array(stacked.unwrap(forms.LAYER_AXIS, *[a for a in stacked.named_shape if a != forms.LAYER_AXIS]))
        values[first_bad:] = np.nan
        axes = [forms.LAYER_AXIS, *[a for a in stacked.named_shape if a != forms.LAYER_AXIS]]
        poisoned[label] = forms.pz.nx.wrap(values).tag(*axes)
    return forms.assemble(checkpoint.config, global_params, poisoned, form)


@pytest.mark.parametrize("form", list(Form))
def test_the_forward_that_stops_at_a_layer_never_runs_later_blocks(model, checkpoint, tokens, form):
    """Blocks 1.. are NaN: the residual before block 1 must be finite and equal the clean one."""
    poisoned = _poisoned_after(model, checkpoint, 1, form)
    ctx = checkpoint.config.max_context
    clean = np.asarray(capture.residual(model, tokens, layer=1, max_context=ctx))
    stopped = np.asarray(capture.residual(poisoned, tokens, layer=1, max_context=ctx))
    np.testing.assert_allclose(stopped, clean, atol=1e-5, rtol=0)
    assert np.isnan(np.asarray(capture.logits(poisoned, tokens, max_context=ctx))).all()  # the poison is live


@pytest.mark.parametrize(  # one layer/where per form keeps compile time down; together they cover both ends
    "form,layer,where", [(Form.UNROLLED, 0, "pre"), (Form.LAYERSTACK, 1, "post"), (Form.SCAN, N_LAYERS - 1, "post")]
)
def test_residual_spliced_back_gives_the_full_logits(model, checkpoint, tokens, form, layer, where):
    m = forms.convert(model, checkpoint.config, form)
    ctx = checkpoint.config.max_context
    full = np.asarray(capture.logits(m, tokens, max_context=ctx))
    resid, both_logits = capture.residual_and_logits(m, tokens, layer=layer, where=where, max_context=ctx)
    alone = capture.residual(m, tokens, layer=layer, where=where, max_context=ctx)
    assert resid.shape == (2, 8, checkpoint.config.d_model)
    np.testing.assert_allclose(np.asarray(alone), np.asarray(resid), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(both_logits), full, atol=1e-5, rtol=0)
    spliced = capture.logits_from_residual(m, resid, layer=layer, where=where)
    np.testing.assert_allclose(np.asarray(spliced), full, atol=1e-5, rtol=0)
    # A changed residual changes the logits (the splice is really used).
    moved = capture.logits_from_residual(m, np.asarray(resid) + 1.0, layer=layer, where=where)
    assert np.abs(np.asarray(moved) - full).max() > 1e-3


def test_pre_of_a_layer_is_post_of_the_one_before(model, checkpoint, tokens):
    ctx = checkpoint.config.max_context
    post0 = capture.residual(model, tokens, layer=0, where="post", max_context=ctx)
    pre1 = capture.residual(model, tokens, layer=1, where="pre", max_context=ctx)
    np.testing.assert_array_equal(np.asarray(post0), np.asarray(pre1))
    pre0 = np.asarray(capture.residual(model, tokens, layer=0, where="pre", max_context=ctx))
    embed = checkpoint.weights["model.embed_tokens.weight"][tokens]  # llama: the embeddings, unscaled
    np.testing.assert_allclose(pre0, embed, atol=1e-6, rtol=0)
