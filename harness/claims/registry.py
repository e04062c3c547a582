"""The claims registry: one `[[claim]]` TOML table per (claim, profile), read into keyword-only `Claim` records.

A claim names its measure (a function registered in `harness.claims.measures`) and that measure's arguments, the
statistic that gives its interval, the bound it is decided against, and the outcome recorded for its profile.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import pathlib
from typing import Any, Literal

from harness.errors import InputError
from harness.scoring.measurement import EXACT
from harness.validation import read_toml

ANY_PROFILE = "any"
Op = Literal[">=", "<=", "within", "reproduces", "==", "not rejected"]
OPS: tuple[str, ...] = (">=", "<=", "within", "reproduces", "==", "not rejected")


class Outcome(enum.Enum):
    """The three outcomes of a claim on a profile (issue 12): decided on the interval, never on the point."""

    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    INCONCLUSIVE = "inconclusive"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """One research claim on one profile: measure(**args) compared by `op` with `expected` (± `tolerance`).

    `recorded` is the outcome last accepted for this profile; a different outcome, or a figure that drifts more
    than `drift` (default: the measured CI's half-width) from its stored baseline, fails the gate. `recorded_on` records
    another outcome per run: its keys are profile names (a claim on "any" profile: a finding on one model is not a
    finding on another) or run labels, a profile name plus its non-float32 dtype (`Profile.label`, e.g.
    "smollm2-default-bfloat16": a bf16 run may land on the other side of a bound). A run's label wins over its
    profile's name, which wins over `recorded` (`of_profile`).
    """

    id: str
    sentence: str
    profile: str
    measure: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    statistic: str
    op: Op
    expected: float = 0.0
    tolerance: float = 0.0
    alpha: float = 0.05
    recorded: Outcome = Outcome.HOLDS
    recorded_on: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    drift: float | None = None
    quantity: str = ""
    source: str

    def __post_init__(self):
        if self.op not in OPS:
            raise InputError(f"claim {self.id}: op {self.op!r}, expected one of {OPS}")
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise InputError(f"claim {self.id}: tolerance {self.tolerance!r}, expected a finite number >= 0")
        if self.op in ("within", "reproduces") and self.tolerance <= 0:
            raise InputError(f"claim {self.id}: op {self.op!r} needs a tolerance > 0")
        if not 0 < self.alpha < 0.5:
            raise InputError(f"claim {self.id}: alpha {self.alpha!r}, expected a value in (0, 0.5)")
        if self.drift is not None and not self.drift >= 0:
            raise InputError(f"claim {self.id}: drift {self.drift!r}, expected a number >= 0")
        if self.op == "==" and self.statistic != EXACT:
            raise InputError(f"claim {self.id}: op '==' is only for exact figures (statistic {EXACT!r})")
        if not self.source.strip():
            raise InputError(f"claim {self.id}: source is empty; cite where the claim and its bound come from")

    def applies_to(self, profile: str) -> bool:
        return self.profile in (profile, ANY_PROFILE)

    @property
    def expectation(self) -> str:
        """The bound as a reader sees it, e.g. '>= 0.5', '0.25 ± 0.1', 'reproduces 0.561 (±0.05)'."""
        if self.op == "within":
            return f"{self.expected:g} ± {self.tolerance:g}"
        if self.op == "reproduces":
            return f"reproduces {self.expected:g} (CI half-width <= {self.tolerance:g})"
        if self.op == "not rejected":
            return f"not rejected at alpha {self.alpha:g}"
        return f"{self.op} {self.expected:g}"

    def __str__(self) -> str:  # pytest ids
        return self.id


_FIELDS = {f.name: f for f in dataclasses.fields(Claim)}
_REQUIRED = {n for n, f in _FIELDS.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _claim_of(path: pathlib.Path, i: int, table: dict) -> Claim:
    where = f"{path}: claim #{i + 1} ({table.get('id', '?')})"
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r}; expected fields {sorted(_FIELDS)}")
    missing = sorted(_REQUIRED - set(table))
    if missing:
        raise InputError(f"{where}: missing field {missing[0]!r}")
    for name in ("id", "sentence", "profile", "measure", "statistic", "op", "source", "quantity"):
        if name in table and not isinstance(table[name], str):
            raise InputError(f"{where}: field {name!r} must be a string, got {table[name]!r}")
    for name in ("expected", "tolerance", "alpha", "drift"):
        if name in table and (isinstance(table[name], bool) or not isinstance(table[name], (int, float))):
            raise InputError(f"{where}: field {name!r} must be a number, got {table[name]!r}")
    if not isinstance(table.get("args", {}), dict):
        raise InputError(f"{where}: field 'args' must be a table, got {table['args']!r}")
    values = dict(table)

    def outcome(value, field: str) -> Outcome:
        try:
            return Outcome(value)
        except ValueError:
            raise InputError(f"{where}: {field} {value!r}, expected one of {[o.value for o in Outcome]}") from None

    if "recorded" in values:
        values["recorded"] = outcome(values["recorded"], "recorded")
    if "recorded_on" in values:
        if not isinstance(values["recorded_on"], dict):
            raise InputError(f"{where}: field 'recorded_on' must be a table of profile = outcome, got "
                             f"{values['recorded_on']!r}")
        values["recorded_on"] = {k: outcome(v, f"recorded_on.{k}") for k, v in values["recorded_on"].items()}
        for key in values["recorded_on"]:
            if key.endswith("-float32"):  # Profile.label: float32 is the bare name, so this key would never be read
                raise InputError(f"{where}: recorded_on key {key!r}: a float32 run's label is its profile name "
                                 f"{key.removesuffix('-float32')!r}")
    return Claim(**values)


def check_measure(claim: Claim) -> None:
    """The claim's measure exists and its args bind to the measure's keyword-only parameters (else InputError)."""
    from harness.claims.measures import MEASURES  # measures import the studies; load them only when checking

    if claim.measure not in MEASURES:
        raise InputError(f"claim {claim.id}: measure {claim.measure!r} is not registered; known: {sorted(MEASURES)}")
    signature = inspect.signature(MEASURES[claim.measure])
    keyword = {n for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(claim.args) - keyword)
    if unknown:
        raise InputError(f"claim {claim.id}: measure {claim.measure!r} takes no argument {unknown[0]!r} "
                         f"(its arguments: {sorted(keyword)})")
    missing = sorted(n for n in keyword if signature.parameters[n].default is inspect.Parameter.empty and n not in claim.args)
    if missing:
        raise InputError(f"claim {claim.id}: measure {claim.measure!r} needs argument {missing[0]!r}")


def load_registry(path: str | pathlib.Path, *, check_measures: bool = True) -> tuple[Claim, ...]:
    """Claims from a TOML file of `[[claim]]` tables; ids unique, each measure registered and its args valid."""
    path = pathlib.Path(path)
    raw = read_toml(path, expected="a claim registry: a TOML file of [[claim]] tables")
    unknown = sorted(set(raw) - {"claim", "profile"})  # [[profile]] tables are read by harness.claims.profiles
    if unknown:
        raise InputError(f"{path}: unknown top-level key {unknown[0]!r}; expected only [[claim]] and [[profile]] tables")
    claims = tuple(_claim_of(path, i, t) for i, t in enumerate(raw.get("claim", [])))
    ids = [c.id for c in claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"{path}: claim id {dup[0]!r} appears more than once")
    if check_measures:
        for c in claims:
            check_measure(c)
    return claims


def of_profile(claims: tuple[Claim, ...], profile: str, label: str | None = None) -> list[Claim]:
    """The claims that apply to `profile`, in registry order, each with the outcome recorded for that run: the one
    recorded for its `label` (`Profile.label`, e.g. "smollm2-default-bfloat16"), else for `profile`, else `recorded`."""
    return [dataclasses.replace(c, recorded=c.recorded_on.get(label or profile, c.recorded_on.get(profile, c.recorded)))
            for c in claims if c.applies_to(profile)]
