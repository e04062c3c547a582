"""Accuracy baselines of every (set, format) run, beside the claims' own figure baselines: a change that moves a
run no claim reads (control-set text, say) still fails. Rewrite with --force-regen after a deliberate change.
"""

import pathlib

from harness.claims.baselines import ACCURACY_ATOL
from harness.claims.measures import run_readings

RUNS = (("mmlu", "letter"), ("mmlu", "text"), ("mmlu", "cloze"), ("control", "letter"), ("control", "text"),
        ("control", "cloze"))


def test_model_accuracies_match_the_recorded_baseline(num_regression, profile, question_sets, option_runs, pytestconfig):
    figures = {}
    for role, fmt in RUNS:
        if role in question_sets:
            acc = run_readings(option_runs(role, fmt))["letter" if fmt == "letter" else "sum"]
            figures[f"{role}_{fmt}_accuracy"], figures[f"{role}_{fmt}_n"] = acc.value, acc.n
    assert figures, f"no question set of {sorted(question_sets)} has a baseline run {RUNS}"
    tolerances = {k: {"atol": ACCURACY_ATOL if k.endswith("accuracy") else 0} for k in figures}
    directory = pathlib.Path(pytestconfig.getoption("--baselines-dir") or pathlib.Path(__file__).parent / "baselines")
    num_regression.check(figures, fullpath=directory / profile.label / "accuracies.csv", tolerances=tolerances)
