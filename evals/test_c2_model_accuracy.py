"""C2, the model's own accuracy: letter (argmax over the 4 letter tokens after "Answer: ("), text (summed and
per-character log-prob of the answer after "Answer:"), cloze (the answer as the assistant's reply), letter picks.

Each claim's set role, format and reading are its registry args; every accuracy carries n and its Wilson interval.
"""

import pytest

from harness.claims.measures import measure


@pytest.mark.measure("model_accuracy")
def test_model_accuracy_in_each_format(claim, check_claim, option_runs):
    check_claim(claim, measure(claim, option_runs))


@pytest.mark.measure("letter_pick_share")
def test_model_picks_mostly_one_letter(claim, check_claim, option_runs):
    check_claim(claim, measure(claim, option_runs))
