"""Verdicts: a claim's outcome decided on its measurement's interval or test, and the exceptions that report it.

holds = the interval lies on the claimed side of the bound; does not hold = on the other side; inconclusive =
it spans the bound. A recorded-false claim may fail only with its own exception type; anything else is a crash.
"""

from __future__ import annotations

import dataclasses
import math

from harness.claims.registry import Claim, Outcome
from harness.errors import InputError
from harness.scoring.measurement import Measurement


class ClaimVerdict(AssertionError):
    """A claim's measured outcome is not "holds" (the base of the two outcome exceptions)."""


class ClaimDoesNotHold(ClaimVerdict):
    """The measured interval lies on the wrong side of the claim's bound (or its test rejects it)."""


class ClaimInconclusive(ClaimVerdict):
    """The measured interval spans the claim's bound: the data cannot decide it at this n."""


EXCEPTIONS = {Outcome.DOES_NOT_HOLD: ClaimDoesNotHold, Outcome.INCONCLUSIVE: ClaimInconclusive}


def _finite(claim: Claim, name: str, value) -> float:
    if value is None or not math.isfinite(float(value)):
        raise InputError(f"claim {claim.id}: measurement {name} is {value!r}; a verdict needs a finite figure")
    return float(value)


def decide(claim: Claim, m: Measurement) -> Outcome:
    """The outcome of `claim` on measurement `m` (InputError when `m` lacks what the claim's op needs)."""
    if m.undecidable:  # no data to decide on is not a crash and not a pass
        return Outcome.INCONCLUSIVE
    if claim.op == "not rejected":  # the claim is a null hypothesis; its test's p-value decides
        p = _finite(claim, "p_value", m.p_value)
        return Outcome.DOES_NOT_HOLD if p < claim.alpha else Outcome.HOLDS
    if claim.statistic != "exact" and m.ci is None:
        raise InputError(f"claim {claim.id}: statistic {claim.statistic!r} but the measurement carries no interval")
    lo, hi = (_finite(claim, "CI bound", v) for v in m.interval())
    _finite(claim, "value", m.value)
    if lo > hi:
        raise InputError(f"claim {claim.id}: measurement CI [{lo}, {hi}] is reversed")
    e, t = claim.expected, claim.tolerance
    if claim.op == "==":
        return Outcome.HOLDS if lo == hi == e else Outcome.DOES_NOT_HOLD
    if claim.op == ">=":
        return Outcome.HOLDS if lo > e or (lo == hi == e) else Outcome.DOES_NOT_HOLD if hi < e else Outcome.INCONCLUSIVE
    if claim.op == "<=":
        return Outcome.HOLDS if hi < e or (lo == hi == e) else Outcome.DOES_NOT_HOLD if lo > e else Outcome.INCONCLUSIVE
    if claim.op == "within":  # equivalence: the whole interval inside the band
        if e - t <= lo and hi <= e + t:
            return Outcome.HOLDS
        return Outcome.DOES_NOT_HOLD if hi < e - t or lo > e + t else Outcome.INCONCLUSIVE
    # "reproduces": the interval holds the original figure and is precise enough to say so
    if not lo <= e <= hi:
        return Outcome.DOES_NOT_HOLD
    return Outcome.HOLDS if (hi - lo) / 2 <= t else Outcome.INCONCLUSIVE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """A claim, what was measured, and its outcome; what the baselines and the report read."""

    claim: Claim
    profile: str
    measurement: Measurement
    outcome: Outcome

    @property
    def as_recorded(self) -> bool:
        return self.outcome is self.claim.recorded

    @property
    def verdict(self) -> str:
        """The outcome as the table shows it: upper case when it differs from the recorded one."""
        if self.as_recorded:
            return self.outcome.value
        return f"{self.outcome.value.upper()} (recorded: {self.claim.recorded.value})"

    def message(self) -> str:
        m = self.measurement
        return (f"{self.claim.id} {self.outcome.value} on {self.profile}: measured {m.describe()} ({m.statistic or 'no statistic'}), "
                f"claimed {self.claim.expectation}, recorded {self.claim.recorded.value} — {self.claim.sentence}")


def evaluate(claim: Claim, profile: str, m: Measurement) -> Result:
    return Result(claim=claim, profile=profile, measurement=m, outcome=decide(claim, m))


def raise_outcome(result: Result) -> None:
    """Raise the outcome's own exception unless the claim holds (the test's xfail `raises=` names it when recorded)."""
    if result.outcome is not Outcome.HOLDS:
        raise EXCEPTIONS[result.outcome](result.message())
