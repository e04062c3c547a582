"""Trie packing: every sequence in a packed row scores as if run alone, in every form; the mask rule exactly."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from checkpoints import tiny_checkpoint

from harness.errors import InputError
from harness.model import capture
from harness.model.forms import Form, build_model
from harness.runs.packing import pack_trie, stack_rows


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


def _visible(packed, q: int, k: int) -> bool:
    """blocks.CausalMask's rule for one (query row, key row) pair, in numpy."""
    kseg, qseg = packed.segments[k], packed.segments[q]
    return bool(k <= q and kseg <= qseg <= packed.segment_ends[k])


@given(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=6), min_size=1, max_size=12))
def test_the_trie_row_holds_every_sequence_and_each_token_sees_exactly_its_own_prefix(sequences):
    packed = pack_trie(sequences)
    assert len(packed.ids) == len({tuple(s[:n]) for s in sequences for n in range(1, len(s) + 1)})  # each prefix once
    on_path = set()
    for i, seq in enumerate(sequences):
        path = packed.paths[i]
        np.testing.assert_array_equal(packed.ids[path], seq)
        np.testing.assert_array_equal(packed.positions[path], np.arange(len(seq)))
        on_path |= {(int(path[a]), int(path[b])) for a in range(len(seq)) for b in range(a + 1)}
    # a token sees exactly the tokens before it on its own path (every row is on some path's end or inside it)
    for q in range(len(packed.ids)):
        for k in range(len(packed.ids)):
            assert _visible(packed, q, k) == ((q, k) in on_path), (q, k)


@pytest.mark.parametrize("form", list(Form))
def test_packed_sequences_score_as_if_run_alone(checkpoint, form):
    model = build_model(checkpoint, form=form)
    vocab = checkpoint.config.vocab_size
    rng = np.random.default_rng(0)
    rows = []
    for prefix_len, cont_lens in ((5, (1, 1, 1, 1)), (7, (3, 1, 4, 2))):
        prefix = list(rng.integers(3, vocab, prefix_len))
        conts = [list(rng.integers(3, vocab, n)) for n in cont_lens]
        seqs = [prefix + c for c in conts]
        seqs += [seqs[1][:-1] + [seqs[1][-1] % (vocab - 3) + 3], prefix[:3] + conts[0], prefix + conts[2][:2]]  # deeper
        rows.append((seqs, pack_trie(seqs)))                # branches, another branch early, a prefix of a sequence
    ids, packing = stack_rows([p for _, p in rows], 30, n_rows=3)
    resid, logits = capture.residual_and_logits(
        model, ids, layer=2, where="pre", max_context=checkpoint.config.max_context, packing=packing
    )
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    for r, (seqs, packed) in enumerate(rows):
        for i, seq in enumerate(seqs):
            want_resid, want_logp = _alone(model, checkpoint, seq, 2)
            path = packed.paths[i]
            np.testing.assert_allclose(np.asarray(resid[r, path]), want_resid, atol=1e-5 * np.abs(want_resid).max(), rtol=1e-4)
            got = logp[r, packed.predictors(i, 1), seq[1:]].sum()
            want = want_logp[np.arange(len(seq) - 1), seq[1:]].sum()
            assert got == pytest.approx(want, abs=1e-4)


def test_packing_rejects_empty_sequences_and_half_packed_inputs(checkpoint):
    with pytest.raises(InputError, match="at least one token"):
        pack_trie([[1, 2], []])
    with pytest.raises(InputError, match="at least one token"):
        pack_trie([])
    model = build_model(checkpoint, form=Form.SCAN)
    with pytest.raises(InputError, match="packing"):
        capture.logits(model, np.zeros((1, 4), np.int32), max_context=64, packing=(np.zeros((1, 4), np.int32),))
    with pytest.raises(InputError, match="packing segments"):
        capture.logits(model, np.zeros((1, 4), np.int32), max_context=64,
                       packing=(np.zeros((1, 4)), np.zeros((1, 3)), np.zeros((1, 4))))


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
