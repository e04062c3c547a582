"""C2b: the model's MC accuracy is not an artifact of the question format (rotations, prompt variants, formats).

Measured in harness.format_robustness on a seeded subject-stratified N_QUESTIONS of the profile's MMLU subset scored
in all three formats: the original letter prompt under the 4 cyclic rotations (rotation 0 read from the session's letter run,
rotations 1-3 run here), two more letter variants at rotation 0, and the session's text and cloze log-probs.
"""

from __future__ import annotations

import pathlib
import time

import pytest

from harness import features as F
from harness import format_robustness as FR
from harness.data.subset import stratified_subset

N_QUESTIONS = 100


def _run(option_runs, name, fmt):
    return option_runs(name, fmt) if callable(option_runs) else option_runs[(name, fmt)]


@pytest.fixture(scope="module")
def robustness(profile, checkpoint, model, question_sets, option_runs):
    """(RotationStudy of the original letter prompt, {variant or format: Accuracy} on the same questions, seconds)."""
    start = time.perf_counter()
    name = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    runs = {f: _run(option_runs, name, f) for f in ("letter", "text", "cloze")}
    idx = dict(zip(runs, F.shared_questions(*[[q.qid for q in r.questions] for r in runs.values()])))
    picked = {q.qid for q in stratified_subset(tuple(runs["letter"].questions[i] for i in idx["letter"]),
                                                min(N_QUESTIONS, len(idx["letter"])), seed=profile.seed)[0]}
    keep = [k for k, i in enumerate(idx["letter"]) if runs["letter"].questions[i].qid in picked]
    idx = {f: i[keep] for f, i in idx.items()}
    questions = [runs["letter"].questions[i] for i in idx["letter"]]
    answers = runs["letter"].answers[idx["letter"]]
    original = FR.letter_scorer(model, checkpoint, FR.VARIANT_BY_NAME["paren-open"])
    rotation0 = runs["letter"].letter_logits[idx["letter"]]  # the same prompt and letter tokens, already run

    def scorer(rotated, shift):
        return rotation0 if shift == 0 else original(rotated, shift)

    study = FR.rotation_study(questions, scorer, name="paren-open")
    accs = {"letter paren-open (the original; rotation 0)": study.accuracy[0]}
    mismatches = {"paren-open": sum(original.mismatches)}
    for v in FR.VARIANTS[1:]:
        s = FR.letter_scorer(model, checkpoint, v)
        accs[f"letter {v.name}"] = FR.accuracy_of_scores(s(questions, 0), answers)
        mismatches[v.name] = sum(s.mismatches)
    accs["text (summed log-prob)"] = FR.accuracy_of_scores(runs["text"].logprob[idx["text"]], answers)
    accs["cloze (summed log-prob)"] = FR.accuracy_of_scores(runs["cloze"].logprob[idx["cloze"]], answers)
    seconds = time.perf_counter() - start
    print(f"\nC2b: {study.n} questions, rotations + variants in {seconds:.1f}s; boundary mismatches {mismatches}")
    return study, accs, {"seconds": round(seconds, 1), "boundary_mismatches": mismatches, "question_set": name}


@pytest.mark.claims("C2b-")
def test_accuracy_does_not_depend_on_the_question_format(claim, check_claim, robustness):
    study, accs, extra = robustness
    kind = claim.id.rsplit("-", 2)[-2:]
    if kind == ["rotation", "spread"]:
        check_claim(claim, FR.rotation_spread(study))
    elif kind == ["variant", "spread"]:
        check_claim(claim, FR.variant_spread(accs, **extra))
    else:
        check_claim(claim, FR.pick_distribution_p(study))


def test_format_robustness_section_is_written(profile, robustness, pytestconfig, request):
    study, accs, extra = robustness
    section = FR.markdown_section(study, accs) + f"\n(measured in {extra['seconds']} s; {extra['question_set']} set)\n"
    directory = pathlib.Path(pytestconfig.getoption("--reports-dir")) / profile.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "format_robustness.md").write_text(section)
    assert "shift 3" in section and len(accs) == 5
    request.getfixturevalue("report_sections").append(section)
