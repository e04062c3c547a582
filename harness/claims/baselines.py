"""Every measured figure kept and compared: value, CI and n of each claim in a per-profile baseline (pytest-regressions).

A figure that moves by more than its tolerance fails the gate even when the outcome does not flip. The tolerance
is the claim's `drift` when the registry states one, else the measured CI's half-width (an exact figure: 1e-6
relative, float noise only). Rewrite after a deliberate change with `--force-regen` (or `--regen-all`).
"""

from __future__ import annotations

import math
import pathlib

from harness.claims.verdicts import Result

EXACT_RTOL = 1e-6
# Accuracy baselines of the option runs (evals/test_baselines.py): deterministic on one machine; 0.02 leaves room
# for float differences between machines and is below what a swapped chat template moves (SmolLM2 control cloze
# 0.72 -> 0.65, tests/test_regressions.py).
ACCURACY_ATOL = 0.02


def figures(result: Result) -> dict[str, float]:
    """The figures of a result that the baseline keeps: value, ci_lo, ci_hi, p_value, n (those present)."""
    m = result.measurement
    out = {"value": float(m.value)} if math.isfinite(m.value) else {}  # an undecidable figure keeps its n only
    if m.ci is not None:
        out["ci_lo"], out["ci_hi"] = float(m.ci[0]), float(m.ci[1])
    if m.p_value is not None:
        out["p_value"] = float(m.p_value)
    if m.n is not None:
        out["n"] = int(m.n)
    return out


def tolerances(result: Result) -> dict[str, dict[str, float]]:
    """Per-figure tolerances: n exact; value and CI by the claim's drift or the CI half-width; p by its own scale."""
    m, claim = result.measurement, result.claim
    if claim.drift is not None:
        band = {"atol": float(claim.drift)}
    elif m.ci is not None and m.ci[1] > m.ci[0]:
        band = {"atol": (float(m.ci[1]) - float(m.ci[0])) / 2}
    else:
        band = {"atol": EXACT_RTOL * max(1.0, abs(float(m.value))) if math.isfinite(m.value) else 0.0}
    out = {k: band for k in ("value", "ci_lo", "ci_hi")}
    out["n"] = {"atol": 0}
    # a p-value moves over orders of magnitude; compare it on a relative scale around the claim's alpha
    out["p_value"] = {"atol": claim.alpha / 2, "rtol": 0.5}
    return out


def path_of(directory: pathlib.Path, result: Result) -> pathlib.Path:
    """evals/baselines/<profile>/<claim id>.csv"""
    return pathlib.Path(directory) / result.profile / f"{result.claim.id}.csv"


def check(num_regression, result: Result, directory: pathlib.Path) -> None:
    """Compare the result's figures with the stored baseline (a missing baseline is written and fails once)."""
    data = figures(result)
    tol = {k: v for k, v in tolerances(result).items() if k in data}
    num_regression.check(data, fullpath=path_of(directory, result), tolerances=tol)
