"""A researcher's own folder: a claims.toml with [[profile]] tables, measures registered in a conftest.py or through an
entry point, the plugin's generated tests and fixtures, and `claims-harness init`'s starter files (pytester runs on a
JSON-lines question set, so no model is built)."""

from __future__ import annotations

import json
import re

import pytest

import harness.claims.measures  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import numpy)
from harness.claims.profiles import profiles_in
from harness.claims.registry import load_registry
from harness.cli import init

pytest_plugins = ["pytester"]

QUESTIONS = [{"question": f"Which is number {i}?", "answer_a": f"{i}", "answer_b": f"{i + 1}", "answer_c": f"{i + 2}",
              "answer_d": f"{i + 3}", "correct_answer": "AB"[i % 2], "topic": "numbers"} for i in range(12)]

MEASURE = '''
from harness.claims import Measurement
from harness.claims.measures import registered
from harness.scoring.stats import wilson


@registered
def share_keyed_{name}(question_sets, *, set: str) -> Measurement:
    """Share of a set's questions whose correct answer is A."""
    questions, _ = question_sets[set]
    k, n = sum(q.answer == 0 for q in questions), len(questions)
    return Measurement(value=k / n, n=n, ci=wilson(k, n), statistic="Wilson 95%")
'''

PROFILE = """
[[profile]]
name = "mine"
layer = 3
datasets = ["jsonl:questions.jsonl"]
"""

CLAIM = """
[[claim]]
id = "{id}"
sentence = "About half of my questions are keyed A."
profile = "{profile}"
measure = "{measure}"
args = {{ set = "other" }}
statistic = "Wilson 95%"
op = "within"
expected = 0.5
tolerance = 0.4
source = "my own count"
"""


@pytest.fixture
def own(pytester):
    """run(registry, *args) -> RunResult of `pytest` in a folder like a user's: pytest.ini, evals/claims.toml,
    evals/questions.jsonl and a conftest.py registering `share_keyed_a`."""
    pytester.makeini("[pytest]\nclaims_registry = evals/claims.toml\ntestpaths = evals\n")
    evals = pytester.mkdir("evals")
    (evals / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (evals / "conftest.py").write_text(MEASURE.format(name="a"))

    def run(registry: str, *args):
        (evals / "claims.toml").write_text(registry)
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--compile-cache", "off", *args)

    return run


def test_a_folder_with_only_claims_and_a_conftest_measure_is_gated(own, pytester):
    registry = PROFILE + CLAIM.format(id="own-share", profile="mine", measure="share_keyed_a")
    first = own(registry, "--profile", "mine", "--regen-all")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["claims: registry *claims.toml, profile mine; profiles found: smollm2-default "
                                "(built-in), phi3-mini (built-in), gemma3-270m (built-in), mine (*claims.toml)",
                                "*own-share*0.5*holds*"])
    baseline = pytester.path / "evals" / "baselines" / "mine" / "own-share.csv"
    assert baseline.exists() and (pytester.path / "reports" / "mine" / "claims.json").exists()
    own(registry, "--profile", "mine").assert_outcomes(passed=1)
    baseline.write_text(baseline.read_text().replace("\n0,0.5,", "\n0,0.1,"))  # an edited figure
    own(registry, "--profile", "mine").assert_outcomes(failed=1)


def test_a_test_of_the_folder_takes_its_measure_from_the_generated_one(own, pytester):
    (pytester.path / "evals" / "test_mine.py").write_text(
        "import pytest\nfrom harness.claims.measures import measure\n\n"
        "@pytest.mark.measure('share_keyed_a')\ndef test_my_way(claim, check_claim, question_sets):\n"
        "    check_claim(claim, measure(claim, question_sets))\n")
    result = own(PROFILE + CLAIM.format(id="own-share", profile="mine", measure="share_keyed_a"),
                 "--profile", "mine", "--regen-all", "-v")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*test_mine.py::test_my_way?own-share? PASSED*"])


def test_a_measure_from_an_entry_point_is_registered(own, pytester):
    site = pytester.mkdir("site")
    (site / "my_measures.py").write_text(MEASURE.format(name="b"))
    dist = site / "my_measures-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-measures\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[claims_harness.measures]\nmine = my_measures\n")
    pytester.syspathinsert(site)
    result = own(PROFILE + CLAIM.format(id="ep-share", profile="mine", measure="share_keyed_b"),
                 "--profile", "mine", "--regen-all")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("table, words", [
    ('layer = "3"', "profile #1 (mine): field layer = '3' (str): Input should be a valid integer"),
    ("layer = 3\nlyaer = 3", "profile #1 (mine): field lyaer = 3 (int): Extra inputs are not permitted"),
    ('layer = 3\ndtype = "int8"', "field dtype = 'int8' (str): Input should be 'float32' or 'bfloat16'"),
    ('layer = 3\nbudget = { "other/essay" = 4 }',
     "field budget = {'other/essay': 4} (dict): Value error, key 'other/essay'"),
    ('layer = 3\nsae = "no-such-sae"', "profile mine: field sae = '*no-such-sae': no such file or folder"),
])
def test_a_bad_profile_is_one_line_naming_the_field(own, table, words):
    """`table` replaces the profile's `layer = 3` line."""
    result = own(PROFILE.replace("layer = 3", table) + CLAIM.format(id="x", profile="mine", measure="share_keyed_a"),
                 "--profile", "mine")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and re.search(re.escape(words).replace(r"\*", ".*"), errors[0]), result.stderr.lines


def test_an_unknown_or_clashing_profile_lists_those_found(own):
    result = own(PROFILE + CLAIM.format(id="x", profile="mine", measure="share_keyed_a"), "--profile", "theirs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --profile 'theirs': expected one of smollm2-default (built-in), phi3-mini "
                                 "(built-in), gemma3-270m (built-in), mine (*claims.toml)*"])
    clash = own(PROFILE.replace('"mine"', '"phi3-mini"'))
    assert clash.ret == pytest.ExitCode.USAGE_ERROR
    clash.stderr.fnmatch_lines(["ERROR: *claims.toml: profile 'phi3-mini' is a built-in profile*another name"])


def test_a_path_value_written_with_a_space_says_why_the_registry_was_missed(own, tmp_path_factory):
    """pytest fixes its rootdir before the plugin's options exist: `--cache-dir DIR` counts DIR as a path argument
    and moves the rootdir; the one-line error says so and how to write it (`--cache-dir=DIR` works)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    registry = PROFILE + CLAIM.format(id="x", profile="mine", measure="share_keyed_a")
    moved = own(registry, "--profile", "mine", "--cache-dir", str(elsewhere))
    assert moved.ret == pytest.ExitCode.USAGE_ERROR
    words = ("ERROR: --profile 'mine': expected one of * (registry *, rootdir *: pytest takes the rootdir from the "
             "paths on the command line, *write '--model=PATH', or pass --rootdir)")
    moved.stderr.fnmatch_lines([words])
    kept = own(registry, "--profile", "mine", f"--cache-dir={elsewhere}", "--collect-only")
    assert kept.ret == pytest.ExitCode.OK


def _uncommented(text: str) -> str:
    """The starter with its commented-out TOML lines (`#` then no space) switched on; prose comments stay."""
    return "\n".join(line[1:] if re.match(r"#[^\s#]", line) else line for line in text.splitlines())


def test_init_writes_a_starter_whose_every_example_loads_and_overwrites_nothing(tmp_path, capsys):
    assert init.main([str(tmp_path)]) == 0
    registry = tmp_path / "evals" / "claims.toml"
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} == set(init.FILES.values())
    active = load_registry(registry)
    assert [c.measure for c in active] == ["model_accuracy"]
    registry.write_text(_uncommented(registry.read_text()))
    examples = load_registry(registry)  # every example's measure exists and takes its args
    assert len({c.measure for c in examples}) == len(examples) == 9
    assert list(profiles_in(registry)) == ["my-model"]
    assert init.main([str(tmp_path)]) == 2
    assert "already exists; claims-harness init writes only new files" in capsys.readouterr().err


def test_init_leaves_existing_pytest_settings_alone(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    assert init.main([str(tmp_path)]) == 0
    assert not (tmp_path / "pytest.ini").exists() and (tmp_path / "evals" / "claims.toml").exists()
    assert "pytest.ini not written: pytest takes its settings from pyproject.toml" in capsys.readouterr().out
