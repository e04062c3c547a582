"""A seeded subset of questions stratified by subject, for runs that cannot afford the whole set.

Rule (deterministic): each subject's quota is n·size/total; it gets floor(quota), raised to 1 when n is at
least the number of subjects; then seats are taken back from the subjects furthest above their quota (never
below 1) or handed out by largest remainder (never above the subject's size) until the total is n; ties go to
the subject name first in sorted order. Questions within a subject are drawn with numpy's default_rng(seed).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

from harness.data.records import MCQuestion
from harness.errors import InputError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubsetNote:
    """What a stratified subset holds: n, seed and (subject, chosen, available) per subject, sorted by subject."""

    n: int
    seed: int
    per_subject: tuple[tuple[str, int, int], ...]

    def counts(self) -> dict[str, int]:
        """Chosen questions per subject."""
        return {s: k for s, k, _ in self.per_subject}


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Seats per subject summing to n: proportional, largest remainder, at least one each when n >= #subjects."""
    total = sum(sizes.values())
    if not 0 <= n <= total:
        raise InputError(f"subset size n={n}: expected 0 <= n <= {total} (the number of questions)")
    names = sorted(sizes)
    quota = {s: n * sizes[s] / total for s in names}
    floor_one = n >= len(names)
    alloc = {s: max(math.floor(quota[s]), 1 if floor_one else 0) for s in names}
    alloc = {s: min(alloc[s], sizes[s]) for s in names}
    minimum = 1 if floor_one else 0
    while sum(alloc.values()) > n:
        s = max((s for s in names if alloc[s] > minimum), key=lambda s: (alloc[s] - quota[s], -names.index(s)))
        alloc[s] -= 1
    while sum(alloc.values()) < n:
        s = max((s for s in names if alloc[s] < sizes[s]), key=lambda s: (quota[s] - alloc[s], -names.index(s)))
        alloc[s] += 1
    return alloc


def stratified_subset(questions: tuple[MCQuestion, ...], n: int, *, seed: int) -> tuple[tuple[MCQuestion, ...], SubsetNote]:
    """n questions stratified by subject (see the module rule), returned in their original order, with a note."""
    by_subject: dict[str, list[int]] = collections.defaultdict(list)
    for i, q in enumerate(questions):
        by_subject[q.subject].append(i)
    alloc = allocate({s: len(ix) for s, ix in by_subject.items()}, n)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for subject in sorted(by_subject):
        pool = by_subject[subject]
        chosen.extend(pool[j] for j in rng.choice(len(pool), size=alloc[subject], replace=False))
    note = SubsetNote(n=n, seed=seed, per_subject=tuple((s, alloc[s], len(by_subject[s])) for s in sorted(by_subject)))
    return tuple(questions[i] for i in sorted(chosen)), note
