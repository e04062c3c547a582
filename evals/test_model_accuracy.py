"""C2, the model's own accuracy: letter (argmax over the 4 letter tokens after "Answer: ("), text (summed and
per-character log-prob of " " + answer after "Answer:"), cloze (the answer as the assistant's reply), and the
letter-pick distribution — every accuracy with its n and Wilson interval (harness.scores / harness.stats).

The default profile caps some (set, format) runs for CI's budget (evals/conftest.py RUN_LIMITS); n is reported.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness import scores
from harness.claims import Measurement
from harness.stats import pick_distribution_test

# claim id -> (question set, format, reading); reading: "letter" | "sum" | "norm" (per character)
ACCURACY = {
    "C2-letter-phi3-mmlu": ("mmlu", "letter", "letter"),
    "C2-letter-smollm2-mmlu-at-chance": ("mmlu", "letter", "letter"),
    "C2-letter-smollm2-mmlu-specialised": ("mmlu", "letter", "letter"),
    "C2-letter-smollm2-control-at-chance": ("control", "letter", "letter"),
    "C2-text-smollm2-mmlu-sum-at-chance": ("mmlu", "text", "sum"),
    "C2-text-smollm2-mmlu-norm-at-chance": ("mmlu", "text", "norm"),
    "C2-cloze-smollm2-control-above-chance": ("control", "cloze", "sum"),
    "C2-cloze-smollm2-mmlu-below-control": ("mmlu", "cloze", "sum"),
}
PICKS = {"C2-picks-smollm2-mmlu-one-letter": "mmlu"}


def _needs(question_sets, name: str):
    if name not in question_sets:
        pytest.skip(f"question set {name!r} not loaded (--dataset)")


def accuracy_measurement(run, reading: str) -> Measurement:
    """The run's accuracy under `reading` with n, Wilson CI and the other readings of the same run beside it."""
    answers = run.answers
    readings = {"sum": scores.text_accuracy(run.logprob, answers),
                "norm": scores.text_accuracy(run.logprob, answers, char_lengths=run.n_chars)}
    if run.letter_logits is not None:
        readings["letter"] = scores.letter_accuracy(run.letter_logits, answers)
        readings["letter_tie_first"] = scores.letter_accuracy(run.letter_logits, answers, ties="first")
    acc = readings[reading]
    details = {k: {"value": a.value, "n": a.n, "ci": [a.lo, a.hi]} for k, a in readings.items()}
    details |= {"format": run.fmt, "skipped": len(run.skipped), "boundary_mismatches": run.boundary_mismatches,
                "collection_seconds": round(run.seconds, 1)}
    return Measurement(value=acc.value, n=acc.n, ci=(acc.lo, acc.hi), details=details)


@pytest.mark.claims("C2-letter")
def test_model_letter_accuracy_on_the_question_set(claim, check_claim, question_sets, option_runs):
    name, fmt, reading = ACCURACY[claim.id]
    _needs(question_sets, name)
    check_claim(claim, accuracy_measurement(option_runs(name, fmt), reading))


@pytest.mark.claims("C2-text")
def test_model_answer_text_accuracy_with_choices_listed(claim, check_claim, question_sets, option_runs):
    name, fmt, reading = ACCURACY[claim.id]
    _needs(question_sets, name)
    check_claim(claim, accuracy_measurement(option_runs(name, fmt), reading))


@pytest.mark.claims("C2-cloze")
def test_model_cloze_accuracy_answer_as_the_reply(claim, check_claim, question_sets, option_runs):
    name, fmt, reading = ACCURACY[claim.id]
    _needs(question_sets, name)
    check_claim(claim, accuracy_measurement(option_runs(name, fmt), reading))


@pytest.mark.claims("C2-picks")
def test_model_picks_mostly_one_letter(claim, check_claim, question_sets, option_runs):
    """Share of picks taken by the most-picked letter, with the chi-square test of picks against the answer key."""
    name = PICKS[claim.id]
    _needs(question_sets, name)
    run = option_runs(name, "letter")
    picks = scores.pick_distribution(run.letter_logits)
    key = np.bincount(run.answers, minlength=4)
    fit = pick_distribution_test(picks, key)
    share = scores.letter_accuracy(run.letter_logits, np.full(run.n, int(np.argmax(picks))))  # its picks, with Wilson CI
    check_claim(claim, Measurement(value=float(picks.max() / picks.sum()), n=run.n, ci=(share.lo, share.hi),
                                   details={"picks_ABCD": picks.tolist(), "key_ABCD": key.tolist(),
                                            "chi2": fit.statistic, "p_value": fit.pvalue}))
