"""C5's benchmark grid, beside the C5 claims (a true `jax.lax.scan` cuts compile time; penzai's LayerStack does not),
which the tests the claims plugin generates from the registry measure on its `compile_timings` (SmolLM2 shape, random
weights or abstract params, batch 4x128). The grid (2..120 layers x three forms x SmolLM2 and Phi-3-mini shapes) runs
only with `-m benchmark --benchmark-enable`; it prints the ratios and writes reports/<profile>/compile_time.png.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from harness.claims.inputs import COMPILE_BATCH as BATCH, COMPILE_SEQ as SEQ, COMPILE_SHAPE as SHAPE
from harness.model.forms import Form
from harness.reporting import compile_report
from harness.studies import compile_timing


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
        self.lower: dict[tuple, list[compile_timing.Seconds]] = {}
        self.compile: dict[tuple, list[compile_timing.Seconds]] = {}
        self.while_loops: dict[tuple, int] = {}
        self.compiled: dict[tuple, object] = {}
        self._abstract: dict[tuple, object] = {}

    def abstract_model(self, shape: str, n: int, form: Form):
        key = (shape, n, form)
        if key not in self._abstract:
            config = compile_timing.shape_named(shape, n_layers=n)
            self._abstract[key] = compile_timing.model_in_form(config, compile_timing.abstract_params(config), form)
        return self._abstract[key]

    def timings(self) -> list[compile_timing.CompileTiming]:
        return [
            compile_timing.CompileTiming(
                shape=key[0], n_layers=key[1], form=key[2], batch=BATCH, seq=SEQ,
                lower=min(self.lower[key], key=lambda s: s.cpu), compile=min(self.compile[key], key=lambda s: s.cpu),
                while_loops=self.while_loops[key], repeats=len(self.compile[key]),
            )
            for key in self.lower
            if key in self.compile
        ]


@pytest.fixture(scope="module")
def grid(request, profile, reports_dir):
    measured = _Grid()
    yield measured
    timings = measured.timings()
    if not timings:
        return
    directory = reports_dir / profile.name
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
        lowered, seconds = compile_timing.lower_fresh(model, compile_timing.token_spec(batch=BATCH, seq=SEQ))
        took.append(seconds)
        return lowered

    lowered = benchmark.pedantic(lower, rounds=_rounds(n), iterations=1)
    grid.while_loops[case] = compile_timing.count_while_loops(lowered.as_text())
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
        lowered, seconds = compile_timing.lower_fresh(model, compile_timing.token_spec(batch=BATCH, seq=SEQ))
        if case not in grid.while_loops:
            grid.while_loops[case] = compile_timing.count_while_loops(lowered.as_text())
            grid.lower[case].append(seconds)
        return (lowered,), {}

    def compile_(lowered):
        compiled, seconds = compile_timing.compile_lowered(lowered)
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
    config = compile_timing.shape_named(shape, n_layers=n)
    model = compile_timing.model_in_form(config, compile_timing.random_params(config, seed=0), form)
    tokens = compile_timing.random_tokens(config, batch=BATCH, seq=SEQ)
    compiled = grid.compiled.pop(case, None)
    if compiled is None:  # this case ran without its compile case
        _, compiled = compile_timing.time_compile(model, tokens, shape=shape, form=form, n_layers=n)
    def run():  # dispatch is asynchronous: time until the logits exist
        return jax.block_until_ready(compiled(model, tokens))

    logits = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert np.isfinite(np.asarray(logits)).all()
