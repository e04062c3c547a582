"""Forward throughput (tokens/s, FLOP/s) of each execution form in each dtype, against the same-run matmul of that
dtype at the model's own shapes (the ceiling), beside transformers (float32).

Same weights (the default GGUF, or --model), same random token ids; after one warm-up call (whose time, compilation
included, is printed too) the median of --runs timed calls is reported. FLOPs are XLA's cost analysis of the forward
(counted on the unrolled form; every row does the same math); the ceiling is a jitted [batch x seq, d_model] x
[d_ffn, d_model]^T dot in that dtype with a float32 result (harness.runs.efficiency), timed in the same run; the share is
forward FLOP/s / ceiling. JAX's persistent compilation cache is off. The header names the CPU's bf16 matrix units
(/proc/cpuinfo: AMX-BF16 tiles, AVX512-BF16), which bound what bfloat16 can buy.

--profile: which kernel or phase holds the forward back (harness.runs.profile): every dot of the compiled unrolled
forward, each distinct one timed alone (same shapes, operand dtypes, float32 result) times its count, against the
forward's seconds; the rest is the non-dot share. The top dot shapes print with their GFLOP/s and bf16/f32 ratio.
--xla-sweep: the true-scan forward in each dtype once per candidate XLA_FLAGS setting, each in its own process (XLA
reads its flags when it starts): tokens/s and whether every argmax of the logits equals the baseline's.
Run: claims-harness bench-forward [--runs 3] [--batch 8] [--seq 128] [--dtypes float32,bfloat16] [--model PATH]
     [--profile] [--xla-sweep]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from penzai import pz

from harness.model import capture, forms
from harness.model.forms import Form
from harness.model.sources import default_gguf_path, read_checkpoint
from harness.runs import compile_cache, efficiency, profile


def timed(call, runs: int) -> tuple[float, float]:
    """(seconds of the first call, compilation included; median seconds of `runs` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def bench_ours(checkpoint, tokens: np.ndarray, runs: int, dtype: str, which=tuple(Form)) -> dict[str, tuple[float, float]]:
    ctx = checkpoint.config.max_context
    scan = forms.build_model(checkpoint, form=Form.SCAN, dtype=dtype)
    out = {}
    for form in which:
        model = forms.convert(scan, checkpoint.config, form)
        out[f"penzai {form.value}, {dtype}"] = timed(lambda: capture.logits(model, tokens, max_context=ctx), runs)
    return out


def bench_transformers(tokens: np.ndarray, runs: int) -> dict[str, tuple[float, float]]:
    try:
        import torch
        import transformers
    except ImportError:
        print("transformers/torch not installed: skipping the reference row ([reference] extra)")
        return {}
    path = default_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor(tokens, dtype=torch.long)

    def call():
        with torch.no_grad():
            return model(ids).logits

    return {f"transformers (torch {torch.__version__}, {torch.get_num_threads()} threads)": timed(call, runs)}


def main(argv=None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="parameter dtypes to run (harness.model.config.DTYPES)")
    parser.add_argument("--model", default=None, help="a checkpoint instead of the default SmolLM2 (no transformers row)")
    parser.add_argument("--forms", default=",".join(f.value for f in Form), help="execution forms to run (each holds its own copy of the weights)")
    parser.add_argument("--profile", action="store_true", help="time each dot of the forward alone: the non-dot share and the top dot shapes")
    parser.add_argument("--xla-sweep", action="store_true", help="only the true-scan forward, once per candidate XLA_FLAGS setting (a process each)")
    parser.add_argument("--sweep-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sweep_child:
        return sweep_child(args)
    print(profile.describe_matrix_units(profile.cpu_matrix_units()))
    if args.xla_sweep:
        return xla_sweep(args)
    checkpoint = read_checkpoint(args.model)
    cfg, n_tokens = checkpoint.config, args.batch * args.seq
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(args.batch, args.seq))
    flops = forward_flops(checkpoint, tokens)
    print(f"forward of {args.batch}x{args.seq} tokens, {checkpoint.source} ({cfg.n_layers} layers, d_model "
          f"{cfg.d_model}), {jax.devices()[0].platform}, median of {args.runs} after warm-up; {flops / 1e9:.1f} GFLOP "
          f"per forward (XLA cost analysis); ceiling: a jitted [{n_tokens},{cfg.d_model}]x[{cfg.d_ffn},{cfg.d_model}]^T "
          f"dot of the same dtype, float32 result, timed in this run")
    print(f"{'implementation':<56} {'tokens/s':>10} {'GFLOP/s':>8} {'median s':>9} {'first s':>8} {'ceiling':>8} {'share':>6}")
    medians = {}
    with compile_cache.disabled():
        for dtype in args.dtypes.split(","):
            results = bench_ours(checkpoint, tokens, args.runs, dtype, tuple(Form(f) for f in args.forms.split(",")))
            if dtype == "float32" and args.model is None:
                results |= bench_transformers(tokens, args.runs)
            peak = efficiency.matmul_flops_per_s(n_tokens, cfg.d_model, cfg.d_ffn, dtype=dtype)
            for name, (first, median) in results.items():
                medians[name] = median
                e = efficiency.Efficiency(flops=flops, seconds=median, matmul_shape=(n_tokens, cfg.d_model, cfg.d_ffn),
                                          matmul_flops_per_s=peak, dtype=dtype)
                print(f"{name:<56} {n_tokens / median:>10.0f} {e.flops_per_s / 1e9:>8.1f} {median:>9.3f} {first:>8.2f} "
                      f"{peak / 1e9:>8.1f} {e.fraction:>6.0%}")
    for form in Form:
        f32, bf16 = medians.get(f"penzai {form.value}, float32"), medians.get(f"penzai {form.value}, bfloat16")
        if f32 and bf16:
            print(f"bfloat16 / float32 forward speed, {form.value}: {f32 / bf16:.2f}x")
    if args.profile:
        with compile_cache.disabled():
            print_profile(checkpoint, tokens, args.dtypes.split(","), medians)
    return 0


def print_profile(checkpoint, tokens: np.ndarray, dtypes: list[str], medians: dict[str, float], *, top: int = 8) -> None:
    """Each dtype's dots alone against its forwards (harness.runs.profile), then the top dot shapes in every dtype."""
    times: dict[str, list[profile.DotTime]] = {}
    print("\nprofile: the dots of the compiled unrolled forward, each distinct one timed alone (jitted dot_general, same "
          "operand dtypes, float32 result) x its count")
    print(f"{'dtype':<9} {'form':<10} {'forward s':>9} {'dots s':>7} {'non-dot':>7}  dots")
    for dtype in dtypes:
        model = pz.freeze_params(forms.build_model(checkpoint, form=Form.UNROLLED, dtype=dtype))
        text = capture._logits.lower(model, np.asarray(tokens, np.int32)).compile().as_text()
        del model
        dots = profile.dots_of(text)
        times[dtype] = profile.profile_dots(dots)
        dot_s = sum(t.total for t in times[dtype])
        kernels = sorted({d.kernel for d in dots})
        described = f"{len(dots)} dots, {len(times[dtype])} shapes, kernel {', '.join(kernels)}"
        for form in Form:
            forward = medians.get(f"penzai {form.value}, {dtype}")
            if forward:
                print(f"{dtype:<9} {form.value:<10} {forward:>9.3f} {dot_s:>7.3f} "
                      f"{profile.non_dot_share(forward, times[dtype]):>7.0%}  {described}")
    if not times:
        return
    print(f"\n{'top dot shapes by ' + dtypes[0] + ' time (one call alone)':<72} {'count':>5}" +
          "".join(f"  {_SHORT.get(d, d) + ' ms':>7} {_SHORT.get(d, d) + ' GFLOP/s':>12}" for d in dtypes) + ("  bf16/f32" if len(dtypes) > 1 else ""))
    by_shape = {d: {_shape_key(t.dot): t for t in ts} for d, ts in times.items()}
    for t in times[dtypes[0]][:top]:
        row = f"{t.dot.shape():<72} {t.count:>5}"
        others = [by_shape[d].get(_shape_key(t.dot)) for d in dtypes]
        for o in others:
            row += f"  {o.seconds * 1e3:>7.2f} {o.flops_per_s / 1e9:>12.1f}" if o else f"  {'-':>7} {'-':>12}"
        f32, bf16 = by_shape.get("float32", {}).get(_shape_key(t.dot)), by_shape.get("bfloat16", {}).get(_shape_key(t.dot))
        if f32 and bf16:
            row += f"  {f32.seconds / bf16.seconds:>7.2f}x"
        print(row)
    if "float32" in times and "bfloat16" in times:
        f32_s, bf16_s = (sum(t.total for t in times[d]) for d in ("float32", "bfloat16"))
        print(f"all dots alone: float32 {f32_s:.3f} s, bfloat16 {bf16_s:.3f} s: bf16/f32 {f32_s / bf16_s:.2f}x (the most a "
              f"bf16 forward could gain if nothing but its dots took time)")


_SHORT = {"float32": "f32", "bfloat16": "bf16"}


def _shape_key(dot: profile.Dot) -> tuple:
    """A dot's shape without its dtypes: the same contraction in float32 and bfloat16."""
    return (dot.lhs, dot.rhs, dot.lhs_contracting, dot.rhs_contracting, dot.lhs_batch, dot.rhs_batch)


XLA_CANDIDATES: tuple[str, ...] = (  # BRIEF §10's candidates; "" is the baseline (XLA_FLAGS as given)
    "",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_prefer_vector_width=512",
)
_SWEEP_MARK = "SWEEP-RESULT "


def sweep_child(args) -> int:
    """One sweep candidate (XLA_FLAGS already in this process's environment): the true-scan forward per dtype,
    tokens/s and the argmax of the logits, as one JSON line."""
    checkpoint = read_checkpoint(args.model)
    tokens = np.random.default_rng(0).integers(0, checkpoint.config.vocab_size, size=(args.batch, args.seq))
    out = {}
    with compile_cache.disabled():
        for dtype in args.dtypes.split(","):
            call = functools.partial(capture.logits, forms.build_model(checkpoint, form=Form.SCAN, dtype=dtype), tokens,
                                     max_context=checkpoint.config.max_context)
            _, median = timed(call, args.runs)
            out[dtype] = {"tokens_per_s": tokens.size / median, "argmax": np.asarray(call()).argmax(-1).ravel().tolist()}
    print(_SWEEP_MARK + json.dumps(out), flush=True)
    return 0


def xla_sweep(args, candidates: tuple[str, ...] = XLA_CANDIDATES) -> int:
    """Each candidate's XLA_FLAGS in a fresh process; a line per candidate: tokens/s per dtype, picks equal."""
    dtypes = args.dtypes.split(",")
    print(f"XLA_FLAGS sweep: true-scan forward of {args.batch}x{args.seq} tokens, median of {args.runs} after warm-up, "
          f"each candidate in its own process; picks = argmax of the logits at every position against the baseline's")
    print(f"{'XLA_FLAGS':<74} " + " ".join(f"{d + ' tok/s':>15}" for d in dtypes) + "  picks equal")
    base_flags = os.environ.get("XLA_FLAGS", "").strip()
    baseline: dict | None = None
    for flags in candidates:
        env = dict(os.environ, XLA_FLAGS=f"{base_flags} {flags}".strip())
        command = [sys.executable, "-m", "harness.cli.bench_forward", "--sweep-child", "--runs", str(args.runs),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--dtypes", args.dtypes]
        command += ["--model", args.model] if args.model else []
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        label = flags or "(baseline: none)"
        lines = [line for line in done.stdout.splitlines() if line.startswith(_SWEEP_MARK)]
        if done.returncode != 0 or not lines:
            err = done.stderr.strip().splitlines()
            why = "flag unknown" if "Unknown flag" in done.stderr else f"failed (exit {done.returncode}): {err[-1] if err else ''}"
            print(f"{label:<74} {why}")
            continue
        result = json.loads(lines[-1].removeprefix(_SWEEP_MARK))
        baseline = baseline or result
        agree = []
        for d in dtypes:
            differ = int(np.sum(np.asarray(result[d]["argmax"]) != np.asarray(baseline[d]["argmax"])))
            agree.append("y" if differ == 0 else f"n ({d}: {differ} of {len(result[d]['argmax'])} differ)")
        equal = "y" if all(a == "y" for a in agree) else "; ".join(a for a in agree if a != "y")
        print(f"{label:<74} " + " ".join(f"{result[d]['tokens_per_s']:>15.0f}" for d in dtypes) + f"  {equal}", flush=True)
    return 0


def forward_flops(checkpoint, tokens: np.ndarray) -> float:
    """XLA cost-analysis FLOPs of one full-logits forward on `tokens`, counted on the unrolled form (no while loop)."""
    unrolled = forms.build_model(checkpoint, form=Form.UNROLLED)
    return efficiency.lowered_flops(capture._logits.lower(pz.freeze_params(unrolled), np.asarray(tokens, np.int32)))


if __name__ == "__main__":
    raise SystemExit(main())
