"""Claims as data: a registry of (sentence, profile, quantity, expected value or bound, tolerance).

A claim is checked against one `Measurement`; the verdict is a pure function of the two. A claim
known not to hold on a profile carries `expect_holds = false` and is gated by that verdict, so a
change in either direction is noticed (evals turn it into a strict xfail carrying the figures).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import tomllib
from typing import Literal

from harness.errors import InputError

Op = Literal[">=", "<=", "==", "within"]
OPS: tuple[str, ...] = (">=", "<=", "==", "within")
ANY_PROFILE = "any"
# Baselines (evals/test_baselines.py): recorded accuracies must be matched within this. Deterministic on one
# machine; 0.02 leaves room for float differences between machines and is below what a swapped chat
# template moves (SmolLM2, control cloze 0.72 → 0.65).
BASELINE_ACCURACY_ATOL = 0.02


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """One research claim on one profile: `quantity` `op` `expected` (± `tolerance` for "within").

    `source` says where the expected value comes from (paper figure, measurement, design target).
    """

    id: str
    sentence: str
    profile: str
    quantity: str
    op: Op
    expected: float
    tolerance: float = 0.0
    expect_holds: bool = True
    source: str = ""
    note: str = ""

    def __post_init__(self):
        if self.op not in OPS:
            raise InputError(f"claim {self.id}: op {self.op!r}, expected one of {OPS}")
        if self.tolerance < 0:
            raise InputError(f"claim {self.id}: tolerance {self.tolerance} must be >= 0")

    def applies_to(self, profile: str) -> bool:
        return self.profile in (profile, ANY_PROFILE)

    @property
    def expectation(self) -> str:
        """The expected value as a reader sees it, e.g. '>= 0.5' or '0.561 ± 0.03'."""
        if self.op == "within":
            return f"{self.expected:g} ± {self.tolerance:g}"
        return f"{self.op} {self.expected:g}"

    def __str__(self) -> str:  # pytest ids
        return self.id


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
    """A measured figure with its sample size and confidence interval (when it has them)."""

    value: float
    n: int | None = None
    ci: tuple[float, float] | None = None
    details: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        text = f"{self.value:.4g}"
        if self.ci is not None:
            text += f" [{self.ci[0]:.3g}, {self.ci[1]:.3g}]"
        if self.n is not None:
            text += f" (n={self.n})"
        return text


def holds(claim: Claim, m: Measurement) -> bool:
    """Whether the measured value satisfies the claim (NaN never does)."""
    v = m.value
    if math.isnan(v):
        return False
    if claim.op == ">=":
        return v >= claim.expected
    if claim.op == "<=":
        return v <= claim.expected
    if claim.op == "==":
        return v == claim.expected
    return abs(v - claim.expected) <= claim.tolerance


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """A claim, what was measured, and the verdict; what the report reads."""

    claim: Claim
    profile: str
    measurement: Measurement
    holds: bool

    @property
    def verdict(self) -> str:
        if self.holds:
            return "holds" if self.claim.expect_holds else "HOLDS (recorded as false)"
        return "fails (known)" if not self.claim.expect_holds else "FAILS"


def evaluate(claim: Claim, profile: str, m: Measurement) -> Result:
    return Result(claim=claim, profile=profile, measurement=m, holds=holds(claim, m))


_FIELDS = {f.name for f in dataclasses.fields(Claim)}


def load_registry(path: str | pathlib.Path) -> tuple[Claim, ...]:
    """Claims from a TOML file of `[[claim]]` tables; ids must be unique."""
    path = pathlib.Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: claim registry not found") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    claims = []
    for i, table in enumerate(raw.get("claim", [])):
        unknown = set(table) - _FIELDS
        if unknown:
            raise InputError(f"{path}: claim #{i + 1} has unknown field {sorted(unknown)[0]!r}")
        try:
            claims.append(Claim(**table))
        except TypeError as e:
            raise InputError(f"{path}: claim #{i + 1} ({table.get('id', '?')}): {e}") from None
    ids = [c.id for c in claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"{path}: claim id {dup[0]!r} appears more than once")
    return tuple(claims)


def select(claims: tuple[Claim, ...], *, prefix: str, profile: str) -> list[Claim]:
    """Claims whose id starts with `prefix` that apply to `profile`, in registry order."""
    return [c for c in claims if c.id.startswith(prefix) and c.applies_to(profile)]
