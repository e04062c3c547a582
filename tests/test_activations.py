"""activations.collect on a tiny random model: batched, bucketed, right-padded results equal an independent
computation that runs one sequence at a time with no padding (numpy log-softmax over capture.logits)."""

from __future__ import annotations

import numpy as np
import pytest

from checkpoints import tiny_checkpoint
from harness.activations import bucket_length, collect, plan_batches
from harness.data.records import MCQuestion
from harness.errors import InputError
from harness.model import capture, forms
from harness.prompts import context_text, continuations

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
    assert bucket_length(129, 130) == 130 and bucket_length(3, 128) == 32


def test_bad_hook_and_format_are_rejected(model, checkpoint):
    with pytest.raises(InputError, match="resid_mid"):
        collect(model, checkpoint, QUESTIONS, fmt="cloze", layer=LAYER, hook="resid_mid", progress=False)
    with pytest.raises(InputError, match="'mcf'"):
        collect(model, checkpoint, QUESTIONS, fmt="mcf", layer=LAYER, progress=False)
