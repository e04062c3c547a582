"""Claims as data and the gate that checks them: registry, profiles, verdicts, figure baselines, pytest plugin.

May import every lower stage (data, model, sae, scores, studies); nothing below imports it except through
`Measurement`, the record a study hands to the gate.
"""

from harness.claims.registry import (
    Claim,
    Measurement,
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

__all__ = [
    "Claim", "ClaimDoesNotHold", "ClaimInconclusive", "ClaimVerdict", "Measurement", "Outcome", "Result",
    "decide", "evaluate", "load_registry",
]
