"""runs.options.collect on a tiny random model: batched, bucketed, right-padded results equal an independent
computation that runs one sequence at a time with no padding (numpy log-softmax over capture.logits); the bucket
policy (plan_batches) on synthetic length lists: every sequence once, in a bucket that holds it, within the shape bound,
with the padding it reports."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from checkpoints import tiny_checkpoint
from hypothesis import given
from hypothesis import strategies as st

from harness.data.records import MCQuestion
from harness.errors import InputError
from harness.model import capture, forms
from harness.prompts.formats import context_text, continuations
from harness.runs import compile_cache
from harness.runs.batching import MAX_SHAPES, Progress, grid_length, plan_batches, plan_stats
from harness.runs.options import collect

N_LAYERS = 3
LAYER = 1


def _question(i: int, question: str, choices: tuple[str, ...], answer: int) -> MCQuestion:
    return MCQuestion(question=question, choices=choices, answer=answer, subject="s", source="t", qid=f"t:{i}")


# Few distinct sequence lengths (the unpadded reference compiles once per length) but more than one bucket.
QUESTIONS = (
    _question(0, "hello?", ("he", "or", "wo", "hell no"), 1),
    _question(1, "Where is the world, and why?", ("a", "b", "c", "d"), 0),
    _question(2, "why", ("a", "b", "c", "d"), 3),
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=N_LAYERS, seed=3)


@pytest.fixture(scope="module")
def model(checkpoint):
    return forms.build_model(checkpoint, form=forms.Form.SCAN)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _unbatched(model, checkpoint, q: MCQuestion, fmt: str, where: str):
    """(resid [4, d], logprob [4], letter logits [4]) from one unpadded forward per option (joined-string tokens)."""
    tok, ctx = checkpoint.tokenizer, checkpoint.config.max_context
    context = context_text(tok, q, fmt)
    n_ctx = len(tok.encode(context))
    resid, logprob, letters = [], [], None
    for cont in continuations(q, fmt):
        ids = np.array([tok.encode(context + cont)])
        logits = np.asarray(capture.logits(model, ids, max_context=ctx))[0]
        lp = _log_softmax(logits)
        logprob.append(sum(lp[t - 1, ids[0, t]] for t in range(n_ctx, ids.shape[1])))
        resid.append(np.asarray(capture.residual(model, ids, layer=LAYER, where=where, max_context=ctx))[0, -1])
        if fmt == "letter":
            letters = logits[n_ctx - 1, [tok.token_id(l) for l in "ABCD"]]
    return np.array(resid), np.array(logprob), letters


@pytest.mark.slow  # ~10-25 s: the unpadded reference compiles once per sequence length
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "per-option"])
@pytest.mark.parametrize("fmt", ["letter", "text", "cloze"])
def test_batched_collection_equals_one_unpadded_sequence_at_a_time(model, checkpoint, fmt, packed):
    # batch_size 3 and a small token budget: several buckets, padded rows and more than one batch per bucket
    run = collect(model, checkpoint, QUESTIONS, fmt=fmt, layer=LAYER, batch_size=3, token_budget=96, progress=False,
                  packed=packed)
    assert run.fmt == fmt and run.questions == QUESTIONS and run.skipped == () and run.boundary_mismatches == 0
    assert run.resid.shape == (3, 4, checkpoint.config.d_model) and run.resid.dtype == np.float32
    np.testing.assert_array_equal(run.answers, [1, 0, 3])
    for i, q in enumerate(QUESTIONS):
        resid, logprob, letters = _unbatched(model, checkpoint, q, fmt, "pre")
        np.testing.assert_allclose(run.resid[i], resid, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(run.logprob[i], logprob, rtol=1e-4, atol=1e-4)
        conts = continuations(q, fmt)
        np.testing.assert_array_equal(run.n_chars[i], [len(c) for c in conts])
        assert all(run.n_tokens[i, o] == len(checkpoint.tokenizer.encode(c, add_bos=False)) for o, c in enumerate(conts))
        if fmt == "letter":
            np.testing.assert_allclose(run.letter_logits[i], letters, rtol=1e-4, atol=1e-4)
    assert (run.letter_logits is None) == (fmt != "letter")


@pytest.mark.slow
def test_resid_post_is_the_output_of_the_block(model, checkpoint):
    run = collect(model, checkpoint, QUESTIONS[:1], fmt="cloze", layer=LAYER, hook="resid_post", progress=False)
    resid, _, _ = _unbatched(model, checkpoint, QUESTIONS[0], "cloze", "post")
    np.testing.assert_allclose(run.resid[0], resid, rtol=1e-4, atol=1e-4)
    assert run.hook == "resid_post"


def test_an_over_long_question_is_skipped_with_its_reason_and_the_rest_scored(model, checkpoint):
    long_q = _question(9, "why " * 40, ("a", "b", "c", "d"), 0)
    run = collect(model, checkpoint, (QUESTIONS[0], long_q, QUESTIONS[2]), fmt="text", layer=LAYER, progress=False)
    assert [q.qid for q in run.questions] == ["t:0", "t:2"] and run.resid.shape[0] == 2
    assert len(run.skipped) == 1 and run.skipped[0][0] == "t:9" and "exceeds" in run.skipped[0][1]
    short = collect(model, checkpoint, QUESTIONS[:1], fmt="text", layer=LAYER, progress=False)
    np.testing.assert_allclose(run.logprob[0], short.logprob[0], rtol=1e-5, atol=1e-5)


def test_batches_cover_every_sequence_once_at_a_bucket_that_holds_it():
    lengths = [5, 40, 33, 100, 64, 7, 128]
    plan = plan_batches(lengths, max_len=128, batch_size=2, token_budget=128)
    seen = sorted(i for _, _, members in plan for i in members)
    assert seen == list(range(len(lengths)))
    for length, rows, members in plan:
        assert len(members) <= rows and rows * length <= max(128, length)
        assert all(lengths[i] <= length for i in members)
    assert grid_length(129, 130) == 130 and grid_length(3, 128) == 16 and grid_length(300, 4096) == 320


@given(lengths=st.lists(st.integers(1, 700), min_size=1, max_size=300), max_shapes=st.integers(1, 10),
       budget=st.sampled_from([700, 1024, 4096]), batch_size=st.integers(1, 64), multiple=st.sampled_from([1, 2]))
def test_plan_is_a_partition_within_the_shape_bound_and_reports_its_padding(lengths, max_shapes, budget, batch_size,
                                                                           multiple):
    plan = plan_batches(lengths, max_len=700, batch_size=batch_size, token_budget=budget, multiple=multiple,
                        max_shapes=max_shapes)
    assert sorted(i for _, _, m in plan for i in m) == list(range(len(lengths)))
    for length, rows, members in plan:
        assert 1 <= len(members) <= rows and rows % multiple == 0 and length <= 700
        assert all(lengths[i] <= length for i in members)
        assert rows <= max(multiple, min(batch_size, budget // length))      # the row cap and the token budget
    stats = plan_stats(plan, lengths)
    assert stats.n_shapes == len({(r, n) for n, r, _ in plan}) <= max_shapes
    assert stats.n_sequences == len(lengths) and stats.n_batches == len(plan)
    assert stats.real_tokens == sum(lengths)
    assert stats.padded_tokens == sum(r * n for n, r, _ in plan) >= stats.real_tokens
    assert stats.waste == pytest.approx(stats.padded_tokens / sum(lengths))


def test_more_shapes_never_cost_more_padding_and_the_default_bound_holds_on_a_wide_spread():
    lengths = np.random.default_rng(0).integers(20, 2000, 5000).tolist()
    padded = [plan_stats(plan_batches(lengths, max_len=2048, batch_size=4096, token_budget=4096, max_shapes=k),
                         lengths).padded_tokens for k in (1, 2, 4, 8, 16)]
    assert padded == sorted(padded, reverse=True) and padded[-1] < padded[0]
    stats = plan_stats(plan_batches(lengths, max_len=2048, batch_size=4096, token_budget=4096), lengths)
    assert stats.n_shapes == MAX_SHAPES and stats.waste < 1.25


def test_a_length_past_max_len_or_a_bad_bound_is_an_input_error():
    with pytest.raises(InputError, match="sequence length 130"):
        plan_batches([5, 130], max_len=128, batch_size=2, token_budget=128)
    with pytest.raises(InputError, match="max_shapes=0"):
        plan_batches([5], max_len=128, batch_size=2, token_budget=128, max_shapes=0)
    assert plan_batches([], max_len=128, batch_size=2, token_budget=128) == []


def test_collect_reports_its_batches_and_calls_progress_after_each(model, checkpoint):
    seen: list[Progress] = []
    run = collect(model, checkpoint, QUESTIONS, fmt="cloze", layer=LAYER, batch_size=2, token_budget=64,
                  progress=seen.append, packed=False, max_shapes=2)
    stats = run.batches
    assert stats.n_sequences == run.n_sequences == 12 and stats.n_shapes <= 2 and run.padded_tokens == stats.padded_tokens
    assert stats.real_tokens == sum(len(checkpoint.tokenizer.encode(p)) for p in _joined(checkpoint, "cloze"))
    assert len(seen) == stats.n_batches and [p.done for p in seen] == sorted(p.done for p in seen)
    assert seen[-1].done == seen[-1].total == 12 and seen[-1].tokens == stats.real_tokens
    assert seen[-1].padded_tokens == stats.padded_tokens and seen[-1].tokens_per_s > 0
    assert seen[-1].label == "cloze forwards"
    assert 0 < stats.forward_seconds <= stats.seconds and stats.host_seconds >= 0
    with pytest.raises(InputError, match="progress=True"):
        collect(model, checkpoint, QUESTIONS, fmt="cloze", layer=LAYER, progress=True)


def _joined(checkpoint, fmt):
    """Every option's full text (context + continuation), as the per-option path encodes it."""
    tok = checkpoint.tokenizer
    return [context_text(tok, q, fmt) + c for q in QUESTIONS for c in continuations(q, fmt)]


def test_bad_hook_and_format_are_rejected(model, checkpoint):
    with pytest.raises(InputError, match="resid_mid"):
        collect(model, checkpoint, QUESTIONS, fmt="cloze", layer=LAYER, hook="resid_mid", progress=False)
    with pytest.raises(InputError, match="'mcf'"):
        collect(model, checkpoint, QUESTIONS, fmt="mcf", layer=LAYER, progress=False)


@pytest.mark.slow  # compiles the tiny forward afresh
def test_the_packed_path_compiles_one_forward_per_planned_shape_and_reuses_it(model, checkpoint):
    # One row per batch (token_budget 1), one shape: the three rows need 5, 4 and 4 predictors ("hell no" is two
    # words), which must not become separate compiles.
    jax.clear_caches()
    with compile_cache.disabled(), compile_cache.watch() as log:
        run = collect(model, checkpoint, QUESTIONS, fmt="text", layer=LAYER, token_budget=1, max_shapes=1)
        again = collect(model, checkpoint, QUESTIONS, fmt="text", layer=LAYER, token_budget=1, max_shapes=1)
    assert run.batches.n_batches == 3 and run.batches.n_shapes == 1
    assert sum("_resid_and_logits_jit" in name for name in log.names) == 1
    assert run.batches.n_compiles >= 1 and again.batches.n_compiles == 0
    np.testing.assert_array_equal(run.logprob, again.logprob)
