"""The report's "Intervention claims: dose-response" section: written from a dose-response result's details (one PNG
per behaviour, one table per claim with the curve's numbers), and absent from a run without such a result."""

from __future__ import annotations

import json

import pytest

from harness.claims.plugin import Run
from harness.claims.profiles import PROFILES
from harness.claims.registry import Claim
from harness.claims.report import write_report
from harness.claims.verdicts import evaluate
from harness.scoring.measurement import Measurement

HEADING = "## Intervention claims: dose-response"
CURVE = [  # deliberately unsorted: the table reads by alpha
    {"alpha": 4, "effect": 0.1234, "lo": 0.0567, "hi": 0.2001, "p": 0.62, "wrong_way_share": 0.125},
    {"alpha": -4, "effect": -0.0876, "lo": -0.1502, "hi": -0.0311, "p": 0.41, "wrong_way_share": 0.375},
    {"alpha": 0, "effect": 0.0, "lo": 0.0, "hi": 0.0, "p": 0.5, "wrong_way_share": 0.0},
]


def _claim(claim_id: str, measure: str, args: dict) -> Claim:
    return Claim(id=claim_id, sentence="s", profile="any", measure=measure, args=args,
                 statistic="paired bootstrap over held-out pairs 95% (2,000 resamples)", op=">=", expected=0.0,
                 source="a public source")


def _dose_response_result(readout: str = "letter"):
    claim = _claim(f"I-test-dose-response-{readout}", "steering_dose_response",
                   {"behaviour": "sycophancy", "readout": readout, "vector": "caa", "alphas": [-4, 0, 4]})
    m = Measurement(value=0.3, n=40, ci=(0.1, 0.5), statistic="paired bootstrap", details={
        "dose_response": CURVE, "readout": readout, "pairs_that_never_move": 0, "n_build": 100, "n_heldout": 40,
        "layer": 15, "vectors": {"caa": {"method": "CAA", "norm": 11.4}}})
    return evaluate(claim, "smollm2-default", m)


def _plain_result():
    claim = _claim("I-test-steers", "steering_effect", {"behaviour": "sycophancy", "readout": "letter"})
    return evaluate(claim, "smollm2-default", Measurement(value=0.05, n=40, ci=(0.01, 0.09), statistic="paired"))


def _run(*results) -> Run:
    run = Run(profile=PROFILES["smollm2-default"], profiles=PROFILES, registry_path=None,
              claims=tuple(r.claim for r in results))
    run.results = {r.claim.id: r for r in results}
    return run


def test_the_dose_response_section_embeds_its_figure_and_tables_the_curve(tmp_path):
    letter, cloze = _dose_response_result("letter"), _dose_response_result("cloze")
    readme = write_report(_run(letter, cloze, _plain_result()), tmp_path, title="t").read_text()
    assert readme.count(HEADING) == 1
    section = readme[readme.index(HEADING):]
    png = tmp_path / "dose-response-sycophancy.png"  # one figure per behaviour, a panel per claim
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "![dose-response sycophancy](dose-response-sycophancy.png)" in section
    for readout in ("letter", "cloze"):
        assert f"**I-test-dose-response-{readout}: {readout}, caa, n=40**" in section
    assert "| alpha | mean effect [lo, hi] | wrong-way share |" in section
    table = section[section.index("**I-test-dose-response-letter"):section.index("**I-test-dose-response-cloze")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "alpha" not in line]
    assert rows == ["| -4 | -0.0876 [-0.15, -0.0311] | 0.375 |", "| 0 | 0 [0, 0] | 0 |",
                    "| 4 | 0.1234 [0.0567, 0.2] | 0.125 |"]
    assert "I-test-steers" not in section.split("## What was run")[0]  # no curve, no table
    curve = next(e for e in json.loads((tmp_path / "claims.json").read_text())["results"]
                 if e["claim"] == "I-test-dose-response-letter")["details"]["dose_response"]
    assert curve == CURVE  # the figures come from the details as stored


def test_a_run_without_dose_response_results_has_no_such_section(tmp_path):
    readme = write_report(_run(_plain_result()), tmp_path, title="t").read_text()
    assert HEADING not in readme
    assert not list(tmp_path.glob("dose-response-*.png"))


def test_a_curve_with_one_panel_draws(tmp_path):
    from harness.reporting import plots

    entry = {"claim": "I-x", "args": {"vector": "sae-k2"}, "n": 12,
             "details": {"readout": "cloze", "dose_response": CURVE[:1]}}
    assert plots.dose_response_title(entry) == "I-x: cloze, sae-k2, n=12"
    assert plots.dose_response_curves([entry], tmp_path / "one.png").is_file()
    with pytest.raises(Exception, match="no dose-response"):
        plots.dose_response_curves([], tmp_path / "none.png")
