"""The compile-time report: a plot of lower+compile time vs layers (three forms, each shape), a table, JSON.

It only formats `compile_timing.CompileTiming`s measured elsewhere; ratios come from compile_timing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

from matplotlib.figure import Figure

from harness.model.forms import Form
from harness.studies.compile_timing import CompileTiming, growth, speedup

PLOT_NAME = "compile_time.png"
JSON_NAME = "compile_time.json"


def text_table(timings: Sequence[CompileTiming]) -> str:
    """One line per (shape, form, layers): lower, compile and total seconds (CPU and wall), while loops."""
    header = f"{'shape':<14}{'form':<12}{'layers':>7}{'lower cpu':>11}{'compile cpu':>13}{'total cpu':>11}{'total wall':>12}{'whiles':>8}"
    lines = [header]
    for t in sorted(timings, key=lambda t: (t.shape, t.form.value, t.n_layers)):
        lines.append(
            f"{t.shape:<14}{t.form.value:<12}{t.n_layers:>7}{t.lower.cpu:>11.2f}{t.compile.cpu:>13.2f}"
            f"{t.total.cpu:>11.2f}{t.total.wall:>12.2f}{t.while_loops:>8}"
        )
    return "\n".join(lines)


def ratio_lines(timings: Sequence[CompileTiming], *, few: int = 8, clock: str = "cpu") -> list[str]:
    """Per shape: each form's lower+compile growth from `few` to the most layers measured, and how many
    times faster the true scan and LayerStack compile than unrolled at about 30 layers (the layer count
    closest to 30 measured for all three forms)."""
    lines = []
    for shape in sorted({t.shape for t in timings}):
        mine = [t for t in timings if t.shape == shape]
        for form in Form:
            layers = sorted(t.n_layers for t in mine if t.form is form)
            if few in layers and layers[-1] > few:
                ratio = growth(mine, shape=shape, form=form, few=few, many=layers[-1], clock=clock)
                lines.append(f"{shape}: {form.value} lower+compile grows {ratio:.2f}x from {few} to {layers[-1]} layers ({clock})")
        common = set.intersection(*({t.n_layers for t in mine if t.form is f} for f in Form))
        if common:
            n = min(common, key=lambda n: abs(n - 30))
            for fast in (Form.SCAN, Form.LAYERSTACK):
                ratio = speedup(mine, shape=shape, n_layers=n, slow=Form.UNROLLED, fast=fast, clock=clock)
                lines.append(f"{shape}: at {n} layers {fast.value} lower+compiles {ratio:.2f}x as fast as unrolled ({clock})")
    return lines


def to_json(timings: Sequence[CompileTiming]) -> list[dict]:
    return [
        {**dataclasses.asdict(t), "form": t.form.value, "total": dataclasses.asdict(t.total)} for t in timings
    ]


def plot_compile_times(timings: Sequence[CompileTiming], path: str | pathlib.Path, *, clock: str = "cpu") -> pathlib.Path:
    """Lower+compile seconds vs number of layers, one panel per model shape, one line per form (PNG)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = sorted({t.shape for t in timings})
    fig = Figure(figsize=(5.5 * max(len(shapes), 1), 4))  # not pyplot: no global backend, nothing to close
    axes = fig.subplots(1, max(len(shapes), 1), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for form in Form:
            points = sorted((t.n_layers, getattr(t.total, clock)) for t in timings if t.shape == shape and t.form is form)
            if points:
                ax.plot(*zip(*points), marker="o", label=form.value)
        batch_seq = {(t.batch, t.seq) for t in timings if t.shape == shape}
        ax.set_title(f"{shape}, tokens " + ", ".join(f"{b}×{s}" for b, s in sorted(batch_seq)))
        ax.set_xlabel("decoder layers")
        ax.set_ylabel(f"lower + compile, {clock} seconds")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_compile_report(timings: Sequence[CompileTiming], directory: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Write compile_time.png and compile_time.json to `directory` (e.g. reports/<profile>/)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / JSON_NAME
    json_path.write_text(json.dumps(to_json(timings), indent=2))
    return plot_compile_times(timings, directory / PLOT_NAME), json_path
