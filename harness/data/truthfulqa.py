"""TruthfulQA mc1 as four-option questions, from the local Hugging Face cache only.

Each question keeps its one correct answer plus 3 wrong ones drawn with a seeded RNG, then the 4 are
shuffled with the same RNG (seeded per question, so a question's options do not depend on its neighbours).
Questions with fewer than 3 wrong answers are skipped and counted in the LoadReport.
"""

from __future__ import annotations

import numpy as np

from harness.data.mmlu import hub_snapshot, read_rows
from harness.data.records import LoadReport, MCQuestion, SkipRow, collect_questions
from harness.errors import InputError

SOURCE = "truthfulqa/mc1"
REPO_IDS = ("truthfulqa/truthful_qa", "truthful_qa")
CONFIG = "multiple_choice"
N_WRONG = 3


def mc1_question(index: int, row: dict, *, seed: int) -> MCQuestion:
    """One TruthfulQA multiple_choice row -> MCQuestion (correct + 3 seeded wrong answers, seeded shuffle)."""
    targets = row.get("mc1_targets")
    if not isinstance(targets, dict) or not isinstance(targets.get("choices"), list) or not isinstance(targets.get("labels"), list):
        raise InputError(f"{SOURCE} row {index}: mc1_targets must hold lists 'choices' and 'labels', got {targets!r:.80}")
    choices, labels = targets["choices"], targets["labels"]
    if len(choices) != len(labels):
        raise InputError(f"{SOURCE} row {index}: mc1_targets has {len(choices)} choices but {len(labels)} labels")
    correct = [c for c, lab in zip(choices, labels) if lab == 1]
    wrong = [c for c, lab in zip(choices, labels) if lab == 0]
    if len(correct) != 1 or len(correct) + len(wrong) != len(labels):
        raise InputError(f"{SOURCE} row {index}: mc1 labels must be 0/1 with exactly one 1, got {labels!r:.80}")
    if len(wrong) < N_WRONG:
        raise SkipRow(f"only {len(wrong)} wrong answers (need {N_WRONG})")
    rng = np.random.default_rng([seed, index])
    picked = [wrong[i] for i in sorted(rng.choice(len(wrong), size=N_WRONG, replace=False))]
    options = [correct[0], *picked]
    order = rng.permutation(len(options))  # order[j] = which option lands at position j
    return MCQuestion(question=row.get("question"), choices=tuple(options[j] for j in order),
                      answer=int(np.flatnonzero(order == 0)[0]), subject="truthfulqa", source=SOURCE, qid=f"{SOURCE}:{index}")


def mc1_questions(rows, *, seed: int, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """Convert in-memory TruthfulQA rows (index = position) to questions with a report of bad and skipped rows."""
    return collect_questions(enumerate(rows), lambda i, r: mc1_question(i, r, seed=seed), source=SOURCE, strict=strict)


def load_truthfulqa_mc1(*, seed: int = 0, cache_dir=None, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """TruthfulQA mc1 (validation split, 817 questions) from the local hub cache; InputError when not cached."""
    snapshot = hub_snapshot(REPO_IDS, cache_dir=cache_dir)
    files = sorted((snapshot / CONFIG).glob("validation-*.parquet"))
    if not files:
        raise InputError(f"{snapshot / CONFIG}: no validation-*.parquet in the cached TruthfulQA snapshot")
    return mc1_questions(read_rows("parquet", files), seed=seed, strict=strict)
