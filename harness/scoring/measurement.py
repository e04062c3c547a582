"""A measured figure: value, n, confidence interval and the statistic that gave it — what a study hands to the gate.

Defined here, below the studies and the claims, so that both use one record and nothing imports upward.
"""

from __future__ import annotations

import dataclasses

from harness.errors import InputError

EXACT = "exact"  # the statistic of a deterministic figure (a count, a computation on fixed inputs): its CI is [v, v]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
    """A measured figure with its sample size, confidence interval and the statistic that gave the interval.

    `statistic` names how `ci` (or `p_value`) was obtained, e.g. "Wilson 95%", "bootstrap over questions 95%",
    "permutation null (1,000 features) 95th percentile"; a comparative claim is decided on `ci`, never on `value`.
    """

    value: float
    n: int | None = None
    ci: tuple[float, float] | None = None
    statistic: str = ""
    p_value: float | None = None
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def undecidable(self) -> bool:
        """The study could not measure the figure at all (e.g. the feature never fires): an inconclusive outcome."""
        return self.ci is None and self.statistic.startswith("undecidable")

    def interval(self) -> tuple[float, float]:
        """The CI, or [value, value] for an exact figure (statistic "exact")."""
        if self.ci is not None:
            return float(self.ci[0]), float(self.ci[1])
        if self.statistic == EXACT:
            return float(self.value), float(self.value)
        raise InputError(f"measurement {self.value!r}: no confidence interval and statistic {self.statistic!r} is not "
                         f"{EXACT!r}; a comparative claim needs its interval")

    def describe(self) -> str:
        text = f"{self.value:.4g}"
        if self.ci is not None:
            text += f" [{self.ci[0]:.3g}, {self.ci[1]:.3g}]"
        if self.p_value is not None:
            text += f" p={self.p_value:.3g}"
        if self.n is not None:
            text += f" (n={self.n})"
        return text
