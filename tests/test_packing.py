"""Packed shared-prefix scoring equals running each prefix + continuation alone, in every form."""

import numpy as np
import pytest
from checkpoints import tiny_checkpoint

from harness.errors import InputError
from harness.model import capture
from harness.model.forms import Form, build_model
from harness.runs.packing import pack_shared_prefix, stack_rows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=3, seed=3)


def _alone(model, checkpoint, ids, layer):
    """Residual [seq, embedding] at `layer` and log-softmax [seq, vocab] of one unpadded sequence."""
    resid, logits = capture.residual_and_logits(
        model, np.array([ids]), layer=layer, where="pre", max_context=checkpoint.config.max_context
    )
    logits = np.asarray(logits[0], np.float64)
    return np.asarray(resid[0]), logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)


@pytest.mark.parametrize("form", list(Form))
def test_packed_continuations_score_as_if_run_alone(checkpoint, form):
    model = build_model(checkpoint, form=form)
    vocab = checkpoint.config.vocab_size
    rng = np.random.default_rng(0)
    rows = []
    for prefix_len, cont_lens in ((5, (1, 1, 1, 1)), (7, (3, 1, 4, 2))):
        prefix = list(rng.integers(3, vocab, prefix_len))
        conts = [list(rng.integers(3, vocab, n)) for n in cont_lens]
        rows.append((prefix, conts, pack_shared_prefix(prefix, conts)))
    ids, positions, segments = stack_rows([p for _, _, p in rows], 20)
    resid, logits = capture.residual_and_logits(
        model, ids, layer=2, where="pre", max_context=checkpoint.config.max_context, positions=positions, segments=segments
    )
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    for r, (prefix, conts, packed) in enumerate(rows):
        for i, cont in enumerate(conts):
            want_resid, want_logp = _alone(model, checkpoint, prefix + cont, 2)
            np.testing.assert_allclose(np.asarray(resid[r, packed.last[i]]), want_resid[-1], atol=1e-4, rtol=1e-4)
            got = logp[r, packed.predictors(i), packed.targets(i)].sum()
            want = want_logp[np.arange(len(prefix) - 1, len(prefix) + len(cont) - 1), cont].sum()
            assert got == pytest.approx(want, abs=1e-4)


def test_packing_rejects_empty_pieces_and_half_packed_inputs(checkpoint):
    with pytest.raises(InputError, match="continuation is empty"):
        pack_shared_prefix([1, 2], [[3], []])
    with pytest.raises(InputError, match="prefix is empty"):
        pack_shared_prefix([], [[3]])
    model = build_model(checkpoint, form=Form.SCAN)
    with pytest.raises(InputError, match="pass both"):
        capture.logits(model, np.zeros((1, 4), np.int32), max_context=64, positions=np.zeros((1, 4), np.int32))


def test_logits_at_chosen_positions_equal_the_full_logits_there(checkpoint):
    model = build_model(checkpoint, form=Form.SCAN)
    tokens = np.random.default_rng(4).integers(3, checkpoint.config.vocab_size, size=(2, 9))
    at = np.array([[0, 8, 3], [5, 5, 1]])
    kw = dict(layer=1, where="pre", max_context=checkpoint.config.max_context)
    _, full = capture.residual_and_logits(model, tokens, **kw)
    _, some = capture.residual_and_logits(model, tokens, logit_positions=at, **kw)
    np.testing.assert_allclose(np.asarray(some), np.take_along_axis(np.asarray(full), at[..., None], axis=1), atol=1e-5)
    with pytest.raises(InputError, match="logit_positions"):
        capture.residual_and_logits(model, tokens, logit_positions=np.array([[9], [0]]), **kw)
