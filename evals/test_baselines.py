"""Regression baselines (pytest-regressions): the headline figures of the profile must match the recorded
run within a stated tolerance, so that a change that moves them without flipping a claim's verdict — a new
chat template, tokenizer or dependency — still fails the gate. Rewrite with --force-regen after a deliberate change.
"""

from __future__ import annotations

import pytest

from harness import scores
from harness.claims import BASELINE_ACCURACY_ATOL
RUNS = (("mmlu", "letter"), ("mmlu", "text"), ("mmlu", "cloze"), ("control", "letter"), ("control", "text"),
        ("control", "cloze"))


def test_model_accuracies_match_the_recorded_baseline(num_regression, profile, question_sets, option_runs):
    figures = {}
    for name, fmt in RUNS:
        if name not in question_sets:
            continue
        run = option_runs(name, fmt)
        acc = scores.letter_accuracy(run.letter_logits, run.answers) if fmt == "letter" else scores.text_accuracy(run.logprob, run.answers)
        figures[f"{name}_{fmt}_accuracy"] = acc.value
        figures[f"{name}_{fmt}_n"] = acc.n
    if not figures:
        pytest.skip("no question set loaded")
    tolerances = {k: {"atol": BASELINE_ACCURACY_ATOL if k.endswith("accuracy") else 0} for k in figures}
    num_regression.check(figures, basename=f"accuracies-{profile.name}", tolerances=tolerances)
