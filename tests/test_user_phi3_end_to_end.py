"""A Phi-3 user's run, end to end: `pytest evals/ --profile phi3-mini --model ... --sae ... --dataset hendrycks:...`
on faithful miniature stand-ins (tests/standins.py) of the three model layouts and both saex SAE layouts.

Every phi3 claim must produce an outcome (no crash, no unexpected skip), the report must name its inputs, and the
user's own mistakes must end the run with one line and a non-zero exit. The C5 compile-time claims are profile-free
(they time SmolLM2-shaped models) and are left out here; evals/ runs them on the default profile.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from harness.claims.registry import load_registry, of_profile
from harness.runs import compile_cache
from standins import user_files

pytest_plugins = ["pytester"]
REPO = pathlib.Path(__file__).resolve().parent.parent
PHI3_CLAIMS = sorted(c.id for c in of_profile(load_registry(REPO / "evals" / "claims.toml"), "phi3-mini")
                     if not c.id.startswith("C5-"))
# The intervention claims (I-*) read the model and SAE like the others once loaded: the first layout runs them, the
# other two test the loading paths without them (a minute each on 2 cores).
FULL_LAYOUT = "hf-folder+saex-file"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return user_files(tmp_path_factory.mktemp("user"), n_per_subject=6)


@pytest.fixture(autouse=True)
def no_user_hub(monkeypatch, tmp_path):
    """The machine's own HF cache never answers for the user's model id: an empty one unless a test sets it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("HF_HOME", raising=False)


def _compile_cache_of_this_session() -> str:
    """The persistent compile cache this session uses ('off' if it is off): every run below compiles the same tiny
    Phi-3, so the layouts after the first load its programs instead of compiling them again (its own activation
    cache, report and baselines stay fresh per run)."""
    settings = compile_cache.current()
    return settings.directory if settings.enabled and settings.directory else "off"


def _run(pytester, files, *args, model, sae, dataset=None, env_hub=False, select="not C5"):
    out = pytester.path
    if env_hub:
        import os

        os.environ["HF_HUB_CACHE"] = str(files.hub_cache)  # restored by no_user_hub's monkeypatch
    return pytester.runpytest_subprocess(
        str(REPO / "evals"), "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "--profile", "phi3-mini", "--model", str(model), "--sae", str(sae),
        "--dataset", f"hendrycks:{dataset or files.data_val}", "--reports-dir", str(out / "reports"),
        "--cache-dir", str(out / "cache"), "--compile-cache", _compile_cache_of_this_session(),
        "--baselines-dir", str(out / "baselines"), "--regen-all",
        "-k", select, *args, timeout=600)


LAYOUTS = {
    "hf-folder+saex-file": lambda f: dict(model=f.hf_folder, sae=f.sae_file),
    "hub-id+saex-hub": lambda f: dict(model=f.repo_id, sae=f.sae_hub, env_hub=True),
    "f16-gguf+saex-hub": lambda f: dict(model=f.gguf, sae=f.sae_hub),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_phi3_claim_gets_an_outcome_and_the_report_names_the_inputs(pytester, files, layout):
    kwargs = LAYOUTS[layout](files)
    full = layout == FULL_LAYOUT
    result = _run(pytester, files, "--quirks", "original", **kwargs, select="not C5" if full else "not C5 and not I-")
    report = json.loads((pytester.path / "reports" / "phi3-mini" / "claims.json").read_text())
    outcomes = {e["claim"]: e["outcome"] for e in report["results"]}
    expected = [c for c in PHI3_CLAIMS if full or not c.startswith("I-")]
    assert any(c.startswith("I-") for c in PHI3_CLAIMS)
    assert sorted(outcomes) == expected, result.stdout.str()[-3000:]  # one result per claim: none crashed or skipped
    assert report["not_measured"] == {}, report["not_measured"]
    # failures are only claims whose outcome differs from the recorded one (a random model is no Phi-3): no errors
    assert result.parseoutcomes().get("errors", 0) == 0, result.stdout.str()[-3000:]
    prov = report["provenance"]
    assert str(kwargs["model"]) in prov["model"] or pathlib.Path(prov["model"].split(" (")[0]).exists()
    assert "saex" in prov["sae"] and "49152 features" in prov["sae"] and "layer 20" in prov["sae"]
    assert "layer from name" in prov["sae"]  # saex files store no layer: it came from l20-... and the report says so
    assert any("hendrycks" in s for s in prov["question sets"])
    readme = (pytester.path / "reports" / "phi3-mini" / "README.md").read_text()
    assert "The original's quirks, feature 45142" in readme


def _one_error_line(result) -> str:
    lines = [line for line in (result.stdout.lines + result.stderr.lines) if line.startswith(("ERROR:", "!!", "Exit:"))]
    return "\n".join(lines)


@pytest.mark.slow
def test_the_users_own_mistakes_end_the_run_with_one_line(pytester, files, tmp_path):
    """Wrong SAE layer, wrong width, a nonexistent model, an id not cached, a missing SAE, a 5-column CSV row."""
    from standins import saex_sae_hub

    wrong_layer = saex_sae_hub(tmp_path / "layer12", 64, 512, name="l12-test-run-5-7.00E-06")
    wrong_width = saex_sae_hub(tmp_path / "width", 32, 512)
    cases = {
        "layer 12": (dict(model=files.hf_folder, sae=wrong_layer), "layer"),
        "width": (dict(model=files.hf_folder, sae=wrong_width), "d_model"),
        "no model": (dict(model=tmp_path / "no-such-model", sae=files.sae_file), "no such file"),
        "not cached": (dict(model="nobody/not-cached", sae=files.sae_file), "not in the local Hugging Face cache"),
        "no sae": (dict(model=files.hf_folder, sae=tmp_path / "no-such-sae"), "no such file"),
    }
    for name, (kwargs, words) in cases.items():
        result = _run(pytester, files, **kwargs)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, (name, result.stdout.str()[-2000:])
        assert words in (result.stdout.str() + result.stderr.str()), name
    bad = tmp_path / "val"
    bad.mkdir()
    good = sorted(files.data_val.glob("*_val.csv"))[0]
    (bad / good.name).write_text(good.read_text() + 'Which is five?,a,b,c,d\n')
    lenient = _run(pytester, files, "-k", "C2-letter", model=files.hf_folder, sae=files.sae_file, dataset=bad)
    lenient.stdout.fnmatch_lines(["*1 bad rows*"])  # counted and shown, not dropped silently
    strict = _run(pytester, files, "--strict-data", "-k", "C2-letter", model=files.hf_folder, sae=files.sae_file,
                  dataset=bad)
    assert strict.ret == pytest.ExitCode.USAGE_ERROR
    assert "5" in _one_error_line(strict) or "column" in strict.stdout.str() + strict.stderr.str()
