"""Claims as data and the gate that checks them: registry, profiles, verdicts, figure baselines, pytest plugin.

May import every lower stage (data, model, sae, scores, studies); nothing below imports it (studies hand the gate
`harness.scoring.measurement.Measurement`, re-exported here).
"""

from harness.claims.registry import (
    Claim,
    Outcome,
    load_registry,
)
from harness.claims.verdicts import (
    ClaimDoesNotHold,
    ClaimInconclusive,
    ClaimVerdict,
    Result,
    decide,
    evaluate,
)
from harness.scoring.measurement import Measurement

__all__ = [
    "Claim", "ClaimDoesNotHold", "ClaimInconclusive", "ClaimVerdict", "Measurement", "Outcome", "Result",
    "decide", "evaluate", "load_registry",
]
