"""The claims gate as a pytest plugin (entry point `pytest11`): options, profiles, the registry collected as tests,
verdicts, figure baselines, the every-claim-one-result check, the claims table and the report.

The registry file is collected as a test module: for each measure its profile's claims name, a test `test_<measure>`
parametrized over those claims, given the measure's inputs as fixtures (the plugin's own, in `harness.claims.fixtures`
and `harness.claims.inputs`, or a conftest's). A test of the folder marked `@pytest.mark.measure("name")` that takes
the `claim` fixture measures that measure's claims instead, and calls `check_claim(claim, measurement)`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import pathlib
import time
import types
from typing import Callable, Iterable, Mapping

import pytest

from harness.claims import baselines, report
from harness.claims.profiles import Profile, check_files, describe, get_profile, known_profiles
from harness.claims.registry import Claim, Outcome, load_registry, of_profile
from harness.claims.verdicts import EXCEPTIONS, Result, evaluate, raise_outcome
from harness.errors import InputError

pytest_plugins = ("harness.claims.fixtures", "harness.claims.inputs")  # the fixtures measures take, shipped here
MEASURE_ENTRY_POINTS = "claims_harness.measures"  # installed packages' modules (or functions) of @registered measures


@dataclasses.dataclass(kw_only=True)
class Run:
    """What one pytest session of the gate holds: profile, registry, results, outcomes, provenance, report parts."""

    profile: Profile
    profiles: Mapping[str, Profile]  # every profile found: built-in and the registry's
    registry_path: pathlib.Path
    claims: tuple[Claim, ...] = ()
    results: dict[str, Result] = dataclasses.field(default_factory=dict)
    outcomes: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # claim id -> (status, reason)
    provenance: dict = dataclasses.field(default_factory=dict)
    sections: list[str] = dataclasses.field(default_factory=list)
    data_notes: list[str] = dataclasses.field(default_factory=list)
    picks: dict[str, dict] = dataclasses.field(default_factory=dict)  # "set/format" -> {"questions", "picks"} of each run
    active: bool = False  # some collected test takes `claim`

    def claim(self, claim_id: str) -> Claim:
        return next(c for c in self.claims if c.id == claim_id)


RUN = pytest.StashKey[Run]()


def pytest_addoption(parser):
    group = parser.getgroup("claims harness")
    group.addoption("--profile", default="smollm2-default", help="model profile of the claims: smollm2-default, phi3-mini (built-in) or a [[profile]] of the registry; the header lists those found")
    group.addoption("--model", default=None, help="model: a .gguf file, a Hugging Face directory, a model id in the local HF cache, or a built-in name (gemma3-270m)")
    group.addoption("--sae", default=None, help="SAE: a saex .safetensors file or folder, a SAELens folder, a Gemma Scope params.npz or a harness SAE folder")
    group.addoption("--sae-layer", default=None, type=int, help="the layer a saex SAE reads (saex files store none; else taken from a name like l20-...)")
    group.addoption("--dataset", default=None, help="comma-separated question sets: mmlu, control, truthfulqa, hendrycks:<dir or data.tar>[:val|test|dev], jsonl:<file>[:mmlu]")
    group.addoption("--limit", default=None, help="questions per run (a seeded stratified subset) instead of the profile's budget; 'all' for every question")
    group.addoption("--strict-data", action="store_true", help="any bad data row is an error instead of being counted and shown")
    group.addoption("--quirks", default=None, choices=("original",), help="also measure the original work's quirks and their ablation table")
    group.addoption("--reports-dir", default=None, help="where the claims report is written (default: reports/ in the rootdir)")
    group.addoption("--cache-dir", default=".cache/activations", help="the on-disk activation cache")
    group.addoption("--clear-cache", action="store_true", help="empty the activation cache before the run")
    group.addoption("--compile-cache", default=".cache/jax", help="JAX's persistent compilation cache ('off' to compile afresh)")
    group.addoption("--baselines-dir", default=None, help="per-profile figure baselines (default: baselines/ beside the registry)")
    group.addoption("--layer", default=None, type=int, help="the layer the SAE reads, instead of the profile's (e.g. a shallower stand-in of the model)")
    group.addoption("--dtype", default=None, choices=("float32", "bfloat16"), help="parameters' dtype (default: the profile's, float32); bfloat16 halves the weights' memory and runs every contraction bf16 x bf16 -> float32; its baselines and report are kept apart (<profile>-bfloat16)")
    group.addoption("--mesh", default=None, help="split the run over the devices: data=N,model=M (batch N ways, parameters M ways by heads / neurons / vocabulary; N x M = the device count)")
    parser.addini("claims_registry", "the claims registry (TOML), relative to the rootdir", default="evals/claims.toml")


def _check_given_inputs(config) -> None:
    """Inputs the user named must exist: a usage error (exit 4, one line, no test run) otherwise."""
    from harness.data import specs
    from harness.model.sources import locate_checkpoint

    try:
        model = config.getoption("--model")
        if model is not None and not locate_checkpoint(model).exists():  # an id is looked up in the HF cache
            raise InputError(f"--model {model}: no such file or folder")
        sae = config.getoption("--sae")
        if sae is not None and not pathlib.Path(sae).exists():
            raise InputError(f"--sae {sae}: no such file or folder")
        raw = config.getoption("--dataset")
        if raw is not None:
            for spec in specs.parse_all(raw):
                specs.check_exists(spec)
        limit_of(config)
        mesh = config.getoption("--mesh")
        if mesh is not None:
            from harness.model.parallel import parse_mesh

            parse_mesh(mesh)
    except InputError as e:
        raise pytest.UsageError(str(e)) from None


def limit_of(config) -> int | None | str:
    """--limit as an int, None ('all'), or "profile" when not given (InputError when malformed)."""
    raw = config.getoption("--limit")
    if raw is None:
        return "profile"
    if str(raw).strip().lower() == "all":
        return None
    try:
        limit = int(raw)
    except ValueError:
        raise InputError(f"--limit {raw!r}: expected a positive integer or 'all'") from None
    if limit < 1:
        raise InputError(f"--limit {raw!r}: expected a positive integer or 'all'")
    return limit


def _load_entry_point_measures() -> None:
    """Register the measures installed packages declare: each `claims_harness.measures` entry point names a module
    whose @registered measures register on import, or a measure function (registered under its own name)."""
    found = importlib.metadata.entry_points(group=MEASURE_ENTRY_POINTS)
    if not found:
        return
    from harness.claims.measures import MEASURES, registered

    for ep in found:
        try:
            obj = ep.load()
        except Exception as e:  # a broken package: one line naming its entry point, not a traceback at start-up
            raise InputError(f"entry point {ep.name} = {ep.value!r} ({MEASURE_ENTRY_POINTS}): cannot be loaded "
                             f"({type(e).__name__}: {e})") from None
        if inspect.isfunction(obj) and MEASURES.get(obj.__name__) is not obj:
            registered(obj)


def _rootdir_note(config, registry: pathlib.Path) -> str:
    """Why a user's own registry may not have been read, when that is likely: pytest fixes the rootdir (where
    claims_registry is looked up) before this plugin's options exist, so the value of an option written with a space
    (`--model PATH`, `--cache-dir DIR`) counts as a path argument and can move the rootdir off the folder pytest runs in."""
    here, root = pathlib.Path(config.invocation_params.dir), pathlib.Path(config.rootpath)
    if registry.is_file() and here.is_relative_to(root):
        return ""
    return (f" (registry {registry}{'' if registry.is_file() else ': no such file'}, rootdir {root}: pytest takes the "
            f"rootdir from the paths on the command line, an option's value too when written '--model PATH'; write "
            f"'--model=PATH', or pass --rootdir)")


def pytest_configure(config):
    config.addinivalue_line("markers", "measure(name): a claims test for the registry claims whose measure is `name`")
    config.addinivalue_line("markers", "claim: a research claim from the registry, checked on a model profile")
    _check_given_inputs(config)
    registry = pathlib.Path(config.rootpath) / config.getini("claims_registry")
    try:
        known = known_profiles(registry)
        try:
            profile = get_profile(config.getoption("--profile"), known, model=config.getoption("--model"),
                                  sae=config.getoption("--sae"), dtype=config.getoption("--dtype"),
                                  layer=config.getoption("--layer"))
        except InputError as e:
            raise InputError(f"{e}{_rootdir_note(config, registry)}") from None
        if not profile.builtin:  # a user's profile names its own files: they must exist (built-in defaults skip)
            check_files(profile)
        _load_entry_point_measures()
    except InputError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[RUN] = Run(profile=profile, profiles=known, registry_path=registry)
    if config.getoption("--compile-cache") != "off":  # a second process compiles nothing the first one compiled
        from harness.runs import compile_cache

        compile_cache.enable(config.getoption("--compile-cache"))


def run_of(config) -> Run:
    return config.stash[RUN]


def pytest_report_header(config):
    run = config.stash.get(RUN, None)
    if run is not None and run.registry_path.is_file():
        return (f"claims: registry {run.registry_path}, profile {run.profile.label}; "
                f"profiles found: {describe(run.profiles)}")
    return None


def _claims(config) -> tuple[Claim, ...]:
    run = run_of(config)
    if not run.claims:
        try:
            run.claims = load_registry(run.registry_path)
        except InputError as e:
            raise pytest.UsageError(str(e)) from None
    return run.claims


def profile_claims(config) -> list[Claim]:
    """The registry's claims that apply to this run's profile, each with the outcome recorded for the run's label."""
    profile = run_of(config).profile
    return of_profile(_claims(config), profile.name, profile.label)


def claim_test(name: str) -> Callable:
    """`test_<name>`, the test generated for a registered measure: it takes `claim`, `check_claim` and the measure's
    inputs (its positional parameters) as fixtures, so pytest resolves and checks them like any test's."""
    from harness.claims.measures import MEASURES, measure, measure_inputs

    inputs = measure_inputs(MEASURES[name])

    def test(claim, check_claim, **given):
        check_claim(claim, measure(claim, *(given[n] for n in inputs)))

    keyword = inspect.Parameter.KEYWORD_ONLY
    test.__signature__ = inspect.Signature([inspect.Parameter(n, keyword) for n in ("claim", "check_claim", *inputs)])
    test.__name__ = test.__qualname__ = f"test_{name}"
    test.__doc__ = MEASURES[name].__doc__
    return pytest.mark.measure(name)(test)


class RegistryFile(pytest.Module):
    """The claims registry collected as a test module (pytest's pattern for non-Python test files): one generated
    test per measure that its profile's claims name, in registry order."""

    def _getobj(self):
        module = types.ModuleType(f"claims registry {self.path.name}")
        module.__file__ = str(self.path)
        for c in profile_claims(self.config):
            if not hasattr(module, f"test_{c.measure}"):
                setattr(module, f"test_{c.measure}", claim_test(c.measure))
        return module

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, (InputError, pytest.UsageError)):  # a bad registry: its one line
            return str(excinfo.value)
        return super().repr_failure(excinfo)


def _generated(item) -> bool:
    """Whether `item` is a test the plugin generated from the registry (not one of the folder's own)."""
    return isinstance(item.parent, RegistryFile)


def pytest_collect_file(file_path, parent):
    run = parent.config.stash.get(RUN, None)
    if run is not None and file_path.resolve() == run.registry_path.resolve():
        return RegistryFile.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc):
    if "claim" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("measure")
    if marker is None or not marker.args:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: a test taking `claim` needs @pytest.mark.measure(name)")
    run = run_of(metafunc.config)
    names = set(marker.args)
    selected = [c for c in profile_claims(metafunc.config) if c.measure in names]
    params = []
    for c in selected:
        marks = [pytest.mark.claim]
        if c.recorded is not Outcome.HOLDS:  # only the claim's own exception is the expected failure
            marks.append(pytest.mark.xfail(raises=EXCEPTIONS[c.recorded], strict=True,
                                           reason=f"recorded as {c.recorded.value} on {run.profile.label}"))
        params.append(pytest.param(c, id=c.id, marks=marks))
    metafunc.parametrize("claim", params)


def _measure_tests(items: Iterable) -> dict[str, set[str]]:
    """measure name -> the test functions (module::name) that take it."""
    out: dict[str, set[str]] = {}
    for item in items:
        marker = item.get_closest_marker("measure")
        if marker is not None and "claim" in getattr(item, "fixturenames", ()):
            for name in marker.args:
                out.setdefault(name, set()).add(f"{item.path.name}::{item.originalname}")
    return out


def _covers_registry(config) -> bool:
    """Whether this session collects the registry file or the whole folder it sits in (then every claim must map to
    exactly one test)."""
    registry = run_of(config).registry_path.resolve()
    for arg in config.args:
        path = pathlib.Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if "::" not in arg and (path == registry or registry.parent.is_relative_to(path)):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    claim_items = [i for i in items if "claim" in getattr(i, "fixturenames", ())]
    if not claim_items:
        return
    run = run_of(config)
    run.active = True
    # a measure with no claim on this profile gives pytest's "empty parameter set" item; a measure that a test of
    # the folder takes is measured there, not by the registry's generated test: both deselected, counted
    empty = [i for i in claim_items if not isinstance(getattr(getattr(i, "callspec", None), "params", {}).get("claim"), Claim)]
    own = _measure_tests(i for i in claim_items if not _generated(i))
    replaced = [i for i in claim_items if _generated(i) and i.get_closest_marker("measure").args[0] in own]
    if empty or replaced:
        config.hook.pytest_deselected(items=empty + replaced)
        items[:] = [i for i in items if i not in empty and i not in replaced]
        claim_items = [i for i in claim_items if i not in empty and i not in replaced]
    for item in filter(_generated, claim_items):
        # every fixture a generated test needs must exist (the closure pytest resolved; `_fixtureinfo` is pytest's)
        missing = [n for n in item.fixturenames if n != "request" and n not in item._fixtureinfo.name2fixturedefs]
        if missing:
            c = item.callspec.params["claim"]
            raise pytest.UsageError(
                f"claim {c.id} ({run.registry_path.name}): measure {c.measure!r} needs the fixture {missing[0]!r}, "
                f"which no fixture provides (a measure's positional parameters name the fixtures it is given)")
    if _covers_registry(config):
        tests = _measure_tests(claim_items)
        for c in profile_claims(config):
            found = sorted(tests.get(c.measure, ()))
            if len(found) != 1:
                raise pytest.UsageError(
                    f"claim {c.id} ({run.registry_path.name}): measure {c.measure!r} is taken by "
                    f"{len(found)} tests {found or ''}; expected exactly one test marked @pytest.mark.measure({c.measure!r})")


@pytest.fixture(scope="session")
def profile(pytestconfig) -> Profile:
    """The chosen profile with --model / --sae applied."""
    return run_of(pytestconfig).profile


@pytest.fixture(scope="session")
def report_sections(pytestconfig) -> list[str]:
    """Markdown sections (plots, dashboards, tables) that studies add to reports/<profile>/README.md."""
    return run_of(pytestconfig).sections


def reports_dir_of(config) -> pathlib.Path:
    """--reports-dir, else reports/ in the rootdir: beside the user's registry, never inside the installed package."""
    given = config.getoption("--reports-dir")
    return pathlib.Path(given) if given is not None else pathlib.Path(config.rootpath) / "reports"


@pytest.fixture(scope="session")
def reports_dir(pytestconfig) -> pathlib.Path:
    """Where the claims report goes (reports_dir / profile label / README.md, claims.json) and the studies' pages."""
    return reports_dir_of(pytestconfig)


@pytest.fixture(scope="session")
def provenance(pytestconfig) -> dict:
    """What the run measured: fixtures add the model, SAE and question sets (path, SHA-256, n) for the report."""
    return run_of(pytestconfig).provenance


def _baselines_dir(config) -> pathlib.Path:
    given = config.getoption("--baselines-dir")
    return pathlib.Path(given) if given else run_of(config).registry_path.parent / "baselines"


@pytest.fixture
def check_claim(request, profile):
    """check_claim(claim, measurement): decide the outcome, keep it, compare its figures with the baseline, and
    raise the outcome's exception unless it holds (a recorded-false claim's xfail expects exactly that one)."""

    def check(claim: Claim, measurement) -> Result:
        run = run_of(request.config)
        if claim.id in run.results:
            raise InputError(f"claim {claim.id}: checked twice in one run")
        result = evaluate(claim, profile.label, measurement)
        run.results[claim.id] = result
        baselines.check(request.getfixturevalue("num_regression"), result, _baselines_dir(request.config))
        raise_outcome(result)
        return result

    return check


def progress_line(config):
    """A callback that writes one progress line through the terminal reporter (outside output capture)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    last = [0.0]

    def write(text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if reporter is None or (not force and now - last[0] < 5.0):
            return
        last[0] = now
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)

    return write


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    claim = getattr(getattr(item, "callspec", None), "params", {}).get("claim")
    if not isinstance(claim, Claim):
        return
    run = run_of(item.config)
    if rep.when == "call" and not rep.skipped and not rep.failed and claim.id not in run.results:
        rep.outcome = "failed"  # a claim test must produce its result: one that returns without checking is a bug
        rep.longrepr = f"claim {claim.id}: the test ended without check_claim(...) — no result was produced"
    if rep.skipped and claim.id not in run.results and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        run.outcomes[claim.id] = ("skipped", reason.removeprefix("Skipped: "))
    elif rep.failed:
        status = "error" if rep.when != "call" else "failed"
        text = str(rep.longrepr).strip().splitlines()
        run.outcomes[claim.id] = (status, text[-1][:300] if text else "")
    elif rep.when == "call" and claim.id not in run.outcomes:
        run.outcomes[claim.id] = ("checked", "")


def pytest_terminal_summary(terminalreporter, config):
    run = config.stash.get(RUN, None)
    if run is None or not run.active or not (run.results or run.outcomes):
        return
    terminalreporter.section("claims")
    terminalreporter.write_line(report.text_table(run.results.values()))
    others = {k: v for k, v in run.outcomes.items() if v[0] in ("skipped", "error", "failed") and k not in run.results}
    for claim_id, (status, reason) in others.items():
        terminalreporter.write_line(f"{claim_id}: {status} — {reason}")
    for note in run.data_notes:
        terminalreporter.write_line(note)
    directory = reports_dir_of(config) / run.profile.label
    path = report.write_report(run, directory, title=f"Claims on {run.profile.label}: {run.profile.description}")
    terminalreporter.write_line(f"report written to {path}")
