"""C2b: the model's MC accuracy is not an artifact of the question format (rotations, prompt variants, formats).

Measured in harness.studies.format_robustness on a seeded subject-stratified N_QUESTIONS of the MMLU run scored in all
three formats: the original letter prompt under the 4 cyclic rotations (rotation 0 read from the session's letter
run, rotations 1-3 run here), two more letter variants at rotation 0, and the session's text and cloze log-probs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pytest

from harness.claims.measures import FormatCredits, measure
from harness.data.subset import stratified_subset
from harness.scoring import scores
from harness.studies import features, format_robustness

N_QUESTIONS = 100


def cached_scorer(model, checkpoint, variant, cached, *, batch_size: int = 16) -> format_robustness.Scorer:
    """format_robustness.letter_scorer whose score arrays (and boundary-mismatch counts) come from the activation
    cache, keyed by the variant, the shift, the questions' text and choices, and format_robustness.py's source."""
    live = format_robustness.letter_scorer(model, checkpoint, variant, batch_size=batch_size)

    def score(questions, shift):
        content = json.dumps([(q.question, list(q.choices)) for q in questions], ensure_ascii=False)
        key = {"variant": dataclasses.asdict(variant), "shift": int(shift), "batch_size": batch_size,
               "questions": hashlib.sha256(content.encode()).hexdigest()}
        arrays = cached("letter-variant scores", key, lambda: {
            "scores": np.asarray(live(questions, shift), np.float64),
            "mismatches": np.int64(live.mismatches[-1]), "sequence_scored": np.int64(live.sequence_scored[-1])},
            code=("studies/format_robustness.py",))
        score.mismatches.append(int(arrays["mismatches"]))
        score.sequence_scored.append(int(arrays["sequence_scored"]))
        return arrays["scores"]

    score.mismatches, score.sequence_scored = [], []
    return score


@pytest.fixture(scope="module")
def format_credits(profile, checkpoint, model, question_sets, option_runs, cached) -> FormatCredits:
    """Per-question credit of every rotation and variant on the same questions, with the rotation study."""
    role = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    runs = {f: option_runs(role, f) for f in ("letter", "text", "cloze")}
    idx = dict(zip(runs, features.shared_questions(*[[q.qid for q in r.questions] for r in runs.values()])))
    letter = runs["letter"]
    picked = {q.qid for q in stratified_subset(tuple(letter.questions[i] for i in idx["letter"]),
                                                min(N_QUESTIONS, len(idx["letter"])), seed=profile.seed)[0]}
    keep = [k for k, i in enumerate(idx["letter"]) if letter.questions[i].qid in picked]
    idx = {f: i[keep] for f, i in idx.items()}
    questions = [letter.questions[i] for i in idx["letter"]]
    answers = letter.answers[idx["letter"]]
    original = cached_scorer(model, checkpoint, format_robustness.VARIANT_BY_NAME["paren-open"], cached)
    rotation0 = letter.letter_logits[idx["letter"]]  # the same prompt and letter tokens, already run
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def scorer(rotated, shift):
        got = rotation0 if shift == 0 else original(rotated, shift)
        seen[shift] = (np.asarray(got, float), np.array([q.answer for q in rotated]))
        return got

    study = format_robustness.rotation_study(questions, scorer, name="paren-open")
    rotations = {f"shift {s}": scores.argmax_credit(g, a) for s, (g, a) in sorted(seen.items())}
    variants = {"letter paren-open (the original; rotation 0)": rotations["shift 0"]}
    mismatches = {"paren-open": sum(original.mismatches)}
    for v in format_robustness.VARIANTS[1:]:
        s = cached_scorer(model, checkpoint, v, cached)
        variants[f"letter {v.name}"] = scores.argmax_credit(np.asarray(s(questions, 0), float), answers)
        mismatches[v.name] = sum(s.mismatches)
    variants["text (summed log-prob)"] = scores.argmax_credit(runs["text"].logprob[idx["text"]], answers)
    variants["cloze (summed log-prob)"] = scores.argmax_credit(runs["cloze"].logprob[idx["cloze"]], answers)
    return FormatCredits(study=study, rotations=rotations, variants=variants,
                         details={"question_set": role, "boundary_mismatches": mismatches})


@pytest.mark.measure("rotation_spread", "variant_spread", "pick_distribution")
def test_accuracy_does_not_depend_on_the_question_format(claim, check_claim, format_credits):
    check_claim(claim, measure(claim, format_credits))


def test_format_robustness_section_is_written(profile, format_credits, pytestconfig, report_sections):
    from harness.scoring.stats import Accuracy

    accs = {k: Accuracy.from_credit(c) for k, c in format_credits.variants.items()}
    section = format_robustness.markdown_section(format_credits.study, accs)
    directory = pathlib.Path(pytestconfig.getoption("--reports-dir")) / profile.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "format_robustness.md").write_text(section)
    assert "shift 3" in section and len(accs) == 5
    report_sections.append(section)
