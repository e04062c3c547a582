"""The claims gate cannot be green by accident: crashes, flips, ties, noise, drift, orphan claims and missing inputs
each fail a pytester run of the plugin (harness.claims.plugin) on a tiny registry of synthetic measurements."""

from __future__ import annotations

import json
import pathlib

import pytest

import harness.claims.measures  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import numpy)
from harness.claims import ClaimDoesNotHold, ClaimInconclusive, Measurement, Outcome, decide
from harness.claims.registry import Claim
from harness.errors import InputError

pytest_plugins = ["pytester"]


def _claim(**kw) -> Claim:
    base = dict(id="X", sentence="s", profile="any", measure="sae_gate", args={"metric": "fvu"},
                statistic="Wilson 95%", op=">=", expected=0.25, source="a public source")
    return Claim(**{**base, **kw})


# ---- decide(): three outcomes on the interval, never on the point ----------------------------------------------

@pytest.mark.parametrize("ci, outcome", [((0.30, 0.40), Outcome.HOLDS), ((0.10, 0.20), Outcome.DOES_NOT_HOLD),
                                         ((0.20, 0.30), Outcome.INCONCLUSIVE), ((0.25, 0.30), Outcome.INCONCLUSIVE)])
def test_a_comparative_claim_is_decided_on_its_interval(ci, outcome):
    assert decide(_claim(), Measurement(value=0.35, n=50, ci=ci)) is outcome


def test_a_tie_is_inconclusive_not_holds():
    """C3 measured 0.24 - 0.24 = 0 against '>= 0' and held on the point estimate: on its interval it cannot."""
    tie = Measurement(value=0.0, n=50, ci=(-0.12, 0.12), statistic="bootstrap")
    assert decide(_claim(expected=0.0), tie) is Outcome.INCONCLUSIVE
    noise = Measurement(value=0.02, n=50, ci=(-0.06, 0.10))  # C4 'raises': +0.02 on 50 questions
    assert decide(_claim(expected=0.0), noise) is Outcome.INCONCLUSIVE


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_non_finite_figure_is_an_error_not_a_verdict(value):
    with pytest.raises(InputError, match="finite"):
        decide(_claim(op=">=", expected=1.0, statistic="exact"), Measurement(value=value, statistic="exact"))


def test_within_is_equivalence_and_reproduces_needs_precision():
    band = _claim(op="within", expected=0.25, tolerance=0.10)
    assert decide(band, Measurement(value=0.25, ci=(0.2, 0.3))) is Outcome.HOLDS
    assert decide(band, Measurement(value=0.21, ci=(0.14, 0.30))) is Outcome.INCONCLUSIVE
    assert decide(band, Measurement(value=0.6, ci=(0.5, 0.7))) is Outcome.DOES_NOT_HOLD
    rep = _claim(op="reproduces", expected=0.561, tolerance=0.03)
    assert decide(rep, Measurement(value=0.55, ci=(0.53, 0.57))) is Outcome.HOLDS
    assert decide(rep, Measurement(value=0.55, ci=(0.45, 0.65))) is Outcome.INCONCLUSIVE  # too few questions
    assert decide(rep, Measurement(value=0.40, ci=(0.38, 0.42))) is Outcome.DOES_NOT_HOLD


def test_a_comparative_claim_without_an_interval_is_an_error():
    with pytest.raises(InputError, match="no interval"):
        decide(_claim(), Measurement(value=0.9, n=10))


def test_a_test_claim_is_decided_on_its_p_value():
    claim = _claim(op="not rejected", alpha=0.01, statistic="chi-square")
    assert decide(claim, Measurement(value=3.0, p_value=0.2)) is Outcome.HOLDS
    assert decide(claim, Measurement(value=300.0, p_value=1e-9)) is Outcome.DOES_NOT_HOLD


def test_the_outcome_exceptions_are_distinct_assertion_errors():
    assert issubclass(ClaimDoesNotHold, AssertionError) and issubclass(ClaimInconclusive, AssertionError)
    assert not issubclass(ClaimInconclusive, ClaimDoesNotHold) and not issubclass(ClaimDoesNotHold, ClaimInconclusive)


# ---- the plugin, end to end with pytester ----------------------------------------------------------------------

REGISTRY = """
[[claim]]
id = "T-holds"
sentence = "a figure above 0.25"
profile = "any"
measure = "sae_gate"
args = {{ metric = "fvu" }}
statistic = "Wilson 95%"
op = ">="
expected = 0.25
source = "test"

[[claim]]
id = "T-false"
sentence = "a figure above 0.9"
profile = "any"
measure = "sae_gate"
args = {{ metric = "mean_l0" }}
statistic = "Wilson 95%"
op = ">="
expected = 0.9
recorded = "{false_recorded}"
source = "test"
"""

TEST_MODULE = """
import json, os, pathlib
import pytest
from harness.claims import Measurement

FIGURES = json.loads(pathlib.Path(os.environ["GATE_FIGURES"]).read_text())

@pytest.mark.measure("sae_gate")
def test_gate(claim, check_claim):
    f = FIGURES[claim.id]
    if f == "crash":
        raise KeyError("a bug in the measurement")
    if f == "no result":
        return
    check_claim(claim, Measurement(value=f[0], n=50, ci=(f[1], f[2]), statistic="Wilson 95%"))
"""


@pytest.fixture
def gate(pytester, monkeypatch):
    """run(figures, registry=..., extra args) -> RunResult of a claims run in a fresh pytester folder."""
    figures_file = pytester.path / "figures.json"
    monkeypatch.setenv("GATE_FIGURES", str(figures_file))
    pytester.makeini("[pytest]\nclaims_registry = evals/claims.toml\n")
    evals = pytester.mkdir("evals")
    (evals / "test_gate.py").write_text(TEST_MODULE)

    def run(figures: dict, *args, false_recorded: str = "does not hold", registry: str | None = None):
        (evals / "claims.toml").write_text(registry or REGISTRY.format(false_recorded=false_recorded))
        figures_file.write_text(json.dumps(figures))
        return pytester.runpytest_inprocess("evals", "-p", "no:cacheprovider", "--reports-dir", str(pytester.path / "reports"), *args)

    return run


FIRST = {"T-holds": [0.4, 0.3, 0.5], "T-false": [0.5, 0.4, 0.6]}


def test_recorded_outcomes_pass_and_the_report_lists_them(gate, pytester):
    gate(FIRST, "--regen-all").assert_outcomes(passed=1, xfailed=1)
    result = gate(FIRST)
    result.assert_outcomes(passed=1, xfailed=1)
    report = json.loads((pytester.path / "reports" / "smollm2-default" / "claims.json").read_text())
    assert report["schema_version"] == 2 and {e["claim"]: e["outcome"] for e in report["results"]} == {
        "T-holds": "holds", "T-false": "does not hold"}
    assert "git" in report["provenance"] and "packages" in report["provenance"]


def test_a_crash_under_a_recorded_false_claim_fails_the_run(gate):
    gate(FIRST, "--regen-all")
    result = gate({**FIRST, "T-false": "crash"})
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret != 0


@pytest.mark.parametrize("figures, recorded", [
    ({**FIRST, "T-false": [0.95, 0.92, 0.98]}, "does not hold"),  # false -> holds
    ({**FIRST, "T-holds": [0.1, 0.05, 0.15]}, "does not hold"),   # holds -> false
    ({**FIRST, "T-holds": [0.26, 0.2, 0.32]}, "does not hold"),   # holds -> inconclusive
    (FIRST, "inconclusive"),                                       # recorded inconclusive, measured false
])
def test_a_flip_in_any_direction_fails_the_run(gate, figures, recorded):
    gate(FIRST, "--regen-all", false_recorded=recorded)
    result = gate(figures, false_recorded=recorded)
    assert result.ret != 0
    assert result.parseoutcomes().get("failed", 0) == 1


def test_figure_drift_beyond_the_interval_fails_without_a_flip(gate):
    gate(FIRST, "--regen-all")
    gate({**FIRST, "T-holds": [0.44, 0.34, 0.54]}).assert_outcomes(passed=1, xfailed=1)  # within the half-width 0.1
    result = gate({**FIRST, "T-holds": [0.7, 0.6, 0.8]})  # still holds, but moved 0.3
    result.assert_outcomes(failed=1, xfailed=1)


def test_a_claim_test_that_produces_no_result_fails(gate):
    gate(FIRST, "--regen-all")
    result = gate({**FIRST, "T-holds": "no result"})
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*T-holds*no result was produced*"])


def test_an_orphan_claim_is_a_collection_error(gate, pytester):
    """Every registered measure gets a generated test, so an orphan is a claim whose measure needs an input (a
    positional parameter) that no fixture gives: named at collection, before anything runs."""
    pytester.makeconftest("""
from harness.claims.measures import registered

@registered
def needs_what_nobody_gives(no_such_input, *, x: int):
    raise AssertionError("never measured")
""")
    orphan = REGISTRY.format(false_recorded="does not hold") + """
[[claim]]
id = "T-orphan"
sentence = "no fixture gives this measure its input"
profile = "any"
measure = "needs_what_nobody_gives"
args = { x = 1 }
statistic = "Wilson 95%"
op = ">="
expected = 0.5
source = "test"
"""
    result = gate(FIRST, registry=orphan)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*T-orphan*needs_what_nobody_gives*no_such_input*no fixture provides*"])


def test_a_measure_two_tests_take_is_a_collection_error(gate, pytester):
    (pytester.path / "evals" / "test_again.py").write_text(TEST_MODULE)
    result = gate(FIRST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*T-holds*sae_gate*2 tests*"])


def test_an_unknown_measure_or_argument_in_the_registry_is_an_error(gate):
    bad = REGISTRY.format(false_recorded="does not hold").replace('metric = "fvu"', 'metrik = "fvu"')
    result = gate(FIRST, registry=bad)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*T-holds*takes no argument 'metrik'*"])


@pytest.mark.parametrize("option", ["--model=/no/such/dir", "--sae=/no/such/sae", "--dataset=hendrycks:/no/such/folder",
                                    "--model=nobody/not-a-cached-model", "--mesh=data=0,model=2"])
def test_an_input_the_user_named_that_does_not_exist_is_a_usage_error(gate, option, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    result = gate(FIRST, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert len([line for line in result.stderr.lines if line.startswith("ERROR:")]) == 1  # one line, no test run
    assert "passed" not in result.stdout.str() and "xfailed" not in result.stdout.str()


def test_a_partial_run_merges_into_the_report_by_claim_id(gate, pytester):
    gate(FIRST, "--regen-all")
    gate({**FIRST, "T-holds": [0.41, 0.31, 0.51]}, "-k", "T-holds").assert_outcomes(passed=1)
    report = json.loads((pytester.path / "reports" / "smollm2-default" / "claims.json").read_text())
    values = {e["claim"]: e["value"] for e in report["results"]}
    assert values == {"T-holds": 0.41, "T-false": 0.5}  # T-false kept from the full run, T-holds replaced
    assert [sorted(r["claims"]) for r in report["runs"]][-2:] == [["T-false", "T-holds"], ["T-holds"]]


def test_a_skipped_claim_is_listed_with_its_reason(gate, pytester):
    gate(FIRST, "--regen-all")
    result = gate(FIRST, "--deselect", "evals/test_gate.py::test_gate[T-false]")
    result.assert_outcomes(passed=1)
    module = (pytester.path / "evals" / "test_gate.py")
    module.write_text(module.read_text().replace("    f = FIGURES[claim.id]", "    pytest.skip('input not given')\n    f = FIGURES[claim.id]"))
    gate(FIRST).assert_outcomes(skipped=2)
    report = json.loads((pytester.path / "reports" / "smollm2-default" / "claims.json").read_text())
    assert report["not_measured"]["T-holds"]["status"] == "skipped"
    assert report["not_measured"]["T-holds"]["reason"] == "input not given"


def test_a_bfloat16_run_keeps_its_own_baselines_and_reports_beside_float32(gate, pytester):
    gate(FIRST, "--regen-all").assert_outcomes(passed=1, xfailed=1)
    moved = {"T-holds": [0.45, 0.35, 0.55], "T-false": [0.5, 0.4, 0.6]}
    gate(moved, "--dtype", "bfloat16", "--regen-all").assert_outcomes(passed=1, xfailed=1)  # its own baselines
    gate(moved, "--dtype", "bfloat16").assert_outcomes(passed=1, xfailed=1)
    gate(FIRST).assert_outcomes(passed=1, xfailed=1)  # the float32 baselines did not move
    assert (pytester.path / "evals" / "baselines" / "smollm2-default-bfloat16" / "T-holds.csv").exists()
    report = json.loads((pytester.path / "reports" / "smollm2-default-bfloat16" / "claims.json").read_text())
    assert report["dtype"] == "bfloat16"
    both = report["against_float32"]["claims"]["T-holds"]
    assert both["float32"]["value"] == 0.4 and both["this"]["value"] == 0.45
    assert "bfloat16 against float32" in (pytester.path / "reports" / "smollm2-default-bfloat16" / "README.md").read_text()


def test_picks_changed_are_counted_over_the_questions_both_runs_scored():
    from harness.claims.report import against_float32

    reference = {"picks": {"mmlu/letter": {"questions": ["a", "b", "c", "d"], "picks": [0, 1, 2, 3]}},
                 "results": [{"claim": "X", "value": 0.5, "ci": [0.4, 0.6], "n": 4, "outcome": "holds"}]}
    picks = {"mmlu/letter": {"questions": ["b", "c", "d", "e"], "picks": [1, 0, 3, 2]},
             "mmlu/text": {"questions": ["a"], "picks": [0]}}  # no float32 run of text: not compared
    results = {"X": {"value": 0.25, "ci": [0.1, 0.4], "n": 4, "outcome": "does not hold"}}
    got = against_float32(results, picks, reference)
    assert got["runs"] == {"mmlu/letter": {"n": 3, "changed": 1, "share": 1 / 3}}
    assert got["claims"]["X"]["float32"]["outcome"] == "holds" and got["claims"]["X"]["this"]["value"] == 0.25


def test_a_bfloat16_run_expects_the_outcome_recorded_for_its_label(gate, pytester):
    registry = REGISTRY.format(false_recorded="does not hold").replace(
        'recorded = "does not hold"', 'recorded = "does not hold"\nrecorded_on = { "smollm2-default-bfloat16" = "holds" }')
    both = {"T-holds": [0.4, 0.3, 0.5], "T-false": [0.95, 0.92, 0.98]}
    gate(FIRST, "--regen-all", registry=registry).assert_outcomes(passed=1, xfailed=1)  # float32: recorded
    gate(both, "--dtype", "bfloat16", "--regen-all", registry=registry).assert_outcomes(passed=2)  # its label: holds
    gate(both, "--dtype", "bfloat16", registry=registry).assert_outcomes(passed=2)
    result = gate(FIRST, "--dtype", "bfloat16", registry=registry)  # a bf16 run that does not hold fails its gate
    assert result.ret != 0 and "T-false" in result.stdout.str()


ANY_CLAIM = """
[[claim]]
id = "C-any"
sentence = "A claim on every profile."
profile = "any"
measure = "while_loops"
args = {{ form = "scan", n_layers = 2 }}
statistic = "exact"
op = "=="
expected = 1
recorded = "inconclusive"
{recorded_on}
source = "a test"
"""


def test_an_any_claim_records_its_outcome_per_profile(tmp_path):
    from harness.claims.registry import load_registry, of_profile

    path = tmp_path / "claims.toml"
    path.write_text(ANY_CLAIM.format(recorded_on='recorded_on = { "gemma3-270m" = "holds" }'))
    claims = load_registry(path)
    assert of_profile(claims, "gemma3-270m")[0].recorded is Outcome.HOLDS
    assert of_profile(claims, "smollm2-default")[0].recorded is Outcome.INCONCLUSIVE


def test_a_run_label_outcome_wins_over_its_profile_outcome(tmp_path):
    from harness.claims.registry import load_registry, of_profile

    path = tmp_path / "claims.toml"
    path.write_text(ANY_CLAIM.format(recorded_on='recorded_on = { "smollm2-default-bfloat16" = "holds", '
                                                  '"gemma3-270m" = "does not hold", "gemma3-270m-bfloat16" = "holds" }'))
    claims = load_registry(path)
    assert of_profile(claims, "smollm2-default", "smollm2-default-bfloat16")[0].recorded is Outcome.HOLDS
    assert of_profile(claims, "smollm2-default", "smollm2-default")[0].recorded is Outcome.INCONCLUSIVE  # float32
    assert of_profile(claims, "smollm2-default")[0].recorded is Outcome.INCONCLUSIVE
    assert of_profile(claims, "gemma3-270m", "gemma3-270m-bfloat16")[0].recorded is Outcome.HOLDS
    assert of_profile(claims, "gemma3-270m", "gemma3-270m")[0].recorded is Outcome.DOES_NOT_HOLD
    assert of_profile(claims, "phi3-mini", "phi3-mini-bfloat16")[0].recorded is Outcome.INCONCLUSIVE  # neither: recorded


def test_the_real_registry_records_the_bf16_outcomes():
    """With the SAE's contractions in bf16 too (SAEParams.compute_dtype), C4 holds in bf16 as in float32, the C3
    feature-null claim does not hold (float32: inconclusive) and the letter refusal ablation sits at its bound."""
    from harness.claims.registry import load_registry, of_profile

    claims = load_registry(pathlib.Path(__file__).parents[1] / "evals" / "claims.toml", check_measures=False)
    bf16 = {c.id: c.recorded for c in of_profile(claims, "smollm2-default", "smollm2-default-bfloat16")}
    f32 = {c.id: c.recorded for c in of_profile(claims, "smollm2-default", "smollm2-default")}
    assert (f32["C4-smollm2-raises-text"], bf16["C4-smollm2-raises-text"]) == (Outcome.HOLDS, Outcome.HOLDS)
    assert (f32["C3-smollm2-mmlu-above-feature-null"], bf16["C3-smollm2-mmlu-above-feature-null"]) == (
        Outcome.INCONCLUSIVE, Outcome.DOES_NOT_HOLD)
    assert (f32["C2-letter-smollm2-control-at-chance"], bf16["C2-letter-smollm2-control-at-chance"]) == (
        Outcome.INCONCLUSIVE, Outcome.HOLDS)
    assert {k for k, v in bf16.items() if v is not f32[k]} == {"C3-smollm2-mmlu-above-feature-null",
                                                               "C2-letter-smollm2-control-at-chance",
                                                               "I-refusal-ablation-lowers-letter"}


@pytest.mark.parametrize(("recorded_on", "message"), [
    ('recorded_on = { "gemma3-270m" = "maybe" }', "recorded_on.gemma3-270m 'maybe', expected one of"),
    ('recorded_on = "holds"', "field 'recorded_on' must be a table of profile = outcome"),
    ('recorded_on = { "gemma3-270m-float32" = "holds" }', "a float32 run's label is its profile name 'gemma3-270m'"),
])
def test_a_bad_per_profile_outcome_is_one_line(tmp_path, recorded_on, message):
    from harness.claims.registry import load_registry

    path = tmp_path / "claims.toml"
    path.write_text(ANY_CLAIM.format(recorded_on=recorded_on))
    with pytest.raises(InputError, match=message):
        load_registry(path)
