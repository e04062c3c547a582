"""C5: running the layers as a true `jax.lax.scan` cuts compile time; penzai's LayerStack does not.

Claims run on the SmolLM2 shape (random weights or abstract params, batch 4×128), each compile once per
session. The benchmark grid (2..120 layers × three forms × SmolLM2 and Phi-3-mini shapes) runs only
with `-m benchmark --benchmark-enable`; it prints the ratios and writes reports/<profile>/compile_time.png.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from harness import compile_report
from harness import compile_timing as ct
from harness.claims import Measurement
from harness.model.forms import Form

SHAPE = "smollm2-135m"
BATCH, SEQ = 4, 128


class _Measured:
    """Compile timings and steady forwards of the SmolLM2 shape, each measured once per session."""

    def __init__(self):
        self._timings: dict[tuple[Form, int], ct.CompileTiming] = {}
        self._forward: dict[tuple[Form, int], ct.Seconds] = {}

    def timing(self, form: Form, n_layers: int, *, repeats: int = 1) -> ct.CompileTiming:
        key = (form, n_layers)
        if key not in self._timings:
            config = ct.shape_named(SHAPE, n_layers=n_layers)
            model = ct.model_in_form(config, ct.abstract_params(config), form)
            self._timings[key], _ = ct.time_compile(
                model, ct.token_spec(batch=BATCH, seq=SEQ), shape=SHAPE, form=form, n_layers=n_layers, repeats=repeats
            )
        return self._timings[key]

    def forward(self, form: Form, n_layers: int) -> ct.Seconds:
        key = (form, n_layers)
        if key not in self._forward:
            config = ct.shape_named(SHAPE, n_layers=n_layers)
            model = ct.model_in_form(config, ct.random_params(config, seed=0), form)
            tokens = ct.random_tokens(config, batch=BATCH, seq=SEQ)
            _, compiled = ct.time_compile(model, tokens, shape=SHAPE, form=form, n_layers=n_layers)
            self._forward[key] = ct.steady_forward(compiled, model, tokens, repeats=2)
        return self._forward[key]


@pytest.fixture(scope="module")
def measured():
    return _Measured()


def _details(*timings: ct.CompileTiming) -> dict:
    return {
        f"{t.form.value}@{t.n_layers}": {
            "lower_cpu_s": round(t.lower.cpu, 3), "compile_cpu_s": round(t.compile.cpu, 3),
            "total_wall_s": round(t.total.wall, 3), "while_loops": t.while_loops, "repeats": t.repeats,
        }
        for t in timings
    }


@pytest.mark.claims("C5-scan-equals-unrolled")
def test_true_scan_gives_the_unrolled_logits(claim, check_claim):
    config = ct.shape_named(SHAPE, n_layers=4)
    params = ct.random_params(config, seed=0)
    tokens = ct.random_tokens(config, batch=2, seq=32, seed=1)
    logits = {}
    for form in (Form.UNROLLED, Form.SCAN):
        _, compiled = ct.time_compile(ct.model_in_form(config, params, form), tokens, shape=SHAPE, form=form, n_layers=4)
        logits[form] = np.asarray(compiled(ct.model_in_form(config, params, form), tokens))
    scale = float(np.abs(logits[Form.UNROLLED]).max())
    diff = float(np.abs(logits[Form.SCAN] - logits[Form.UNROLLED]).max())
    check_claim(claim, Measurement(value=diff / scale, details={"max_abs_diff": diff, "max_abs_logit": scale}))


@pytest.mark.claims("C5-scan-one-while-loop")
def test_true_scan_lowers_to_one_while_loop(claim, check_claim, measured):
    scan = measured.timing(Form.SCAN, 8, repeats=3)
    check_claim(claim, Measurement(value=scan.while_loops, details=_details(scan)))


@pytest.mark.claims("C5-scan-compile-growth")
def test_true_scan_compile_time_barely_grows_with_layers(claim, check_claim, measured):
    few, many = measured.timing(Form.SCAN, 8, repeats=3), measured.timing(Form.SCAN, 120, repeats=3)
    ratio = ct.growth([few, many], shape=SHAPE, form=Form.SCAN, few=8, many=120)
    check_claim(claim, Measurement(value=ratio, details=_details(few, many)))


@pytest.mark.claims("C5-scan-compile-speedup")
def test_true_scan_compiles_at_least_twice_as_fast_as_unrolled(claim, check_claim, measured):
    scan, unrolled = measured.timing(Form.SCAN, 30, repeats=3), measured.timing(Form.UNROLLED, 30, repeats=2)
    ratio = ct.speedup([scan, unrolled], shape=SHAPE, n_layers=30, slow=Form.UNROLLED, fast=Form.SCAN)
    check_claim(claim, Measurement(value=ratio, details=_details(scan, unrolled)))


@pytest.mark.claims("C5-scan-forward-overhead")
def test_true_scan_forward_is_at_most_15_percent_slower(claim, check_claim, measured):
    scan, unrolled = measured.forward(Form.SCAN, 30), measured.forward(Form.UNROLLED, 30)
    details = {f"{n}_forward": {"cpu_s": round(s.cpu, 3), "wall_s": round(s.wall, 3)} for n, s in (("scan", scan), ("unrolled", unrolled))}
    check_claim(claim, Measurement(value=scan.cpu / unrolled.cpu, details=details))


@pytest.mark.claims("C5-layerstack-compile-growth")
def test_penzai_layerstack_compile_time_barely_grows_with_layers(claim, check_claim, measured):
    few, many = measured.timing(Form.LAYERSTACK, 8), measured.timing(Form.LAYERSTACK, 120)
    ratio = ct.growth([few, many], shape=SHAPE, form=Form.LAYERSTACK, few=8, many=120)
    check_claim(claim, Measurement(value=ratio, details=_details(few, many)))


# ---- the benchmark grid: -m benchmark --benchmark-enable -------------------------------------------

GRID_LAYERS = {"smollm2-135m": (2, 8, 16, 30, 60, 120), "phi3-mini": (2, 8, 16, 32, 60, 120)}
GRID = [(shape, n, form) for shape, layers in GRID_LAYERS.items() for n in layers for form in Form]
FORWARD_GRID = [(SHAPE, n, form) for n in GRID_LAYERS[SHAPE] for form in Form]


def _rounds(n_layers: int) -> int:
    """Fresh lowers/compiles per case: fewer for deep models, whose single compile takes up to a minute."""
    return 3 if n_layers <= 16 else 2 if n_layers <= 32 else 1


def _case_id(case) -> str:
    shape, n, form = case
    return f"{shape}-{form.value}-{n}"


class _Grid:
    """What the benchmark cases measured (the least-CPU round of each), for the ratios and the plot."""

    def __init__(self):
        self.lower: dict[tuple, list[ct.Seconds]] = {}
        self.compile: dict[tuple, list[ct.Seconds]] = {}
        self.while_loops: dict[tuple, int] = {}
        self.compiled: dict[tuple, object] = {}
        self._abstract: dict[tuple, object] = {}

    def abstract_model(self, shape: str, n: int, form: Form):
        key = (shape, n, form)
        if key not in self._abstract:
            config = ct.shape_named(shape, n_layers=n)
            self._abstract[key] = ct.model_in_form(config, ct.abstract_params(config), form)
        return self._abstract[key]

    def timings(self) -> list[ct.CompileTiming]:
        return [
            ct.CompileTiming(
                shape=key[0], n_layers=key[1], form=key[2], batch=BATCH, seq=SEQ,
                lower=min(self.lower[key], key=lambda s: s.cpu), compile=min(self.compile[key], key=lambda s: s.cpu),
                while_loops=self.while_loops[key], repeats=len(self.compile[key]),
            )
            for key in self.lower
            if key in self.compile
        ]


@pytest.fixture(scope="module")
def grid(request, profile):
    measured = _Grid()
    yield measured
    timings = measured.timings()
    if not timings:
        return
    directory = pathlib.Path(request.config.getoption("--reports-dir")) / profile.name
    plot, data = compile_report.write_compile_report(timings, directory)
    lines = [compile_report.text_table(timings), "", *compile_report.ratio_lines(timings), f"plot: {plot}", f"figures: {data}"]
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.write_sep("-", "C5 compile time: lower + compile, least-CPU round")
        for line in lines:
            reporter.write_line(line)


@pytest.mark.benchmark
@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_lower_time(benchmark, grid, case):
    shape, n, form = case
    benchmark.group = f"{shape}: lower"
    model = grid.abstract_model(shape, n, form)
    took = grid.lower.setdefault(case, [])

    def lower():
        lowered, seconds = ct.lower_fresh(model, ct.token_spec(batch=BATCH, seq=SEQ))
        took.append(seconds)
        return lowered

    lowered = benchmark.pedantic(lower, rounds=_rounds(n), iterations=1)
    grid.while_loops[case] = ct.count_while_loops(lowered.as_text())
    assert grid.while_loops[case] == (1 if form is Form.SCAN else 0)


@pytest.mark.benchmark
@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_compile_time(benchmark, grid, case):
    shape, n, form = case
    benchmark.group = f"{shape}: compile"
    model = grid.abstract_model(shape, n, form)
    took = grid.compile.setdefault(case, [])
    grid.lower.setdefault(case, [])

    def fresh_lowering():
        lowered, seconds = ct.lower_fresh(model, ct.token_spec(batch=BATCH, seq=SEQ))
        if case not in grid.while_loops:
            grid.while_loops[case] = ct.count_while_loops(lowered.as_text())
            grid.lower[case].append(seconds)
        return (lowered,), {}

    def compile_(lowered):
        compiled, seconds = ct.compile_lowered(lowered)
        took.append(seconds)
        return compiled

    compiled = benchmark.pedantic(compile_, setup=fresh_lowering, rounds=_rounds(n), iterations=1)
    if shape == SHAPE:
        grid.compiled[case] = compiled


@pytest.mark.benchmark
@pytest.mark.parametrize("case", FORWARD_GRID, ids=_case_id)
def test_steady_forward_time(benchmark, grid, case):
    shape, n, form = case
    benchmark.group = f"{shape}: steady forward"
    config = ct.shape_named(shape, n_layers=n)
    model = ct.model_in_form(config, ct.random_params(config, seed=0), form)
    tokens = ct.random_tokens(config, batch=BATCH, seq=SEQ)
    compiled = grid.compiled.pop(case, None)
    if compiled is None:  # this case ran without its compile case
        _, compiled = ct.time_compile(model, tokens, shape=shape, form=form, n_layers=n)
    def run():  # dispatch is asynchronous: time until the logits exist
        return jax.block_until_ready(compiled(model, tokens))

    logits = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert np.isfinite(np.asarray(logits)).all()
