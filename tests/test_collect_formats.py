"""collect_formats: three formats of a question in one trie row give the numbers of three separate runs, each format
keeps its own skipped questions, and the run reports one set of batch statistics."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import tiny_checkpoint

from harness.data.records import MCQuestion
from harness.errors import InputError
from harness.model import forms
from harness.prompts.formats import build_prompts
from harness.runs.options import collect, collect_formats

FORMATS = ("letter", "text", "cloze")
QUESTIONS = tuple(
    MCQuestion(question=q, choices=c, answer=a, subject="s", source="t", qid=f"t:{i}")
    for i, (q, c, a) in enumerate((
        ("hello?", ("he", "or", "wo", "hell no"), 1),
        ("Where is the world, and why?", ("a", "b", "c", "d"), 0),
        ("why", ("the same", "the same", "c", "the same again"), 3),   # identical and prefix-sharing options
    ))
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, n_layers=3, seed=5)


@pytest.fixture(scope="module")
def model(checkpoint):
    return forms.build_model(checkpoint, form=forms.Form.SCAN)


def test_fused_formats_equal_separate_runs(model, checkpoint):
    fused = collect_formats(model, checkpoint, QUESTIONS, fmts=FORMATS, layer=1, token_budget=256)
    assert tuple(fused) == FORMATS
    for fmt in FORMATS:
        alone = collect(model, checkpoint, QUESTIONS, fmt=fmt, layer=1, token_budget=256)
        got = fused[fmt]
        assert got.questions == alone.questions == QUESTIONS and got.fmt == fmt
        np.testing.assert_allclose(got.resid, alone.resid, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.logprob, alone.logprob, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got.n_tokens, alone.n_tokens)
        if fmt == "letter":
            np.testing.assert_allclose(got.letter_logits, alone.letter_logits, rtol=1e-4, atol=1e-4)
        assert got.batches is fused["letter"].batches   # one run, one set of statistics
    # the fused row holds fewer tokens than the three packed runs together (shared chat template and question)
    separate = sum(collect(model, checkpoint, QUESTIONS, fmt=f, layer=1).batches.real_tokens for f in FORMATS)
    assert fused["letter"].batches.real_tokens < separate


def test_a_question_too_long_in_one_format_still_runs_the_others(model, checkpoint):
    tok = checkpoint.tokenizer
    long_q = QUESTIONS[1]
    lengths = {f: build_prompts(tok, long_q, f, max_len=10**6).max_len for f in FORMATS}
    assert lengths["cloze"] < lengths["letter"]
    max_len = lengths["cloze"]   # cloze fits, letter and text (choices listed) do not
    fused = collect_formats(model, checkpoint, (long_q,), fmts=FORMATS, layer=1, max_len=max_len)
    assert fused["cloze"].questions == (long_q,) and fused["cloze"].skipped == ()
    assert fused["letter"].questions == () and [qid for qid, _ in fused["letter"].skipped] == [long_q.qid]
    alone = collect(model, checkpoint, (long_q,), fmt="cloze", layer=1, max_len=max_len)
    np.testing.assert_allclose(fused["cloze"].logprob, alone.logprob, rtol=1e-4, atol=1e-4)


def test_formats_must_be_distinct_and_known(model, checkpoint):
    with pytest.raises(InputError, match="distinct"):
        collect_formats(model, checkpoint, QUESTIONS, fmts=("text", "text"), layer=1)
    with pytest.raises(InputError, match="format"):
        collect_formats(model, checkpoint, QUESTIONS, fmts=("essay",), layer=1)
