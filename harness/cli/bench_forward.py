"""Forward throughput (tokens/s, FLOP/s) of each execution form in each dtype, against the same-run matmul of that
dtype at the model's own shapes (the ceiling), beside transformers (float32).

Same weights (the default GGUF, or --model), same random token ids; after one warm-up call (whose time, compilation
included, is printed too) the median of --runs timed calls is reported. FLOPs are XLA's cost analysis of the forward
(counted on the unrolled form; every row does the same math); the ceiling is a jitted [batch x seq, d_model] x
[d_ffn, d_model]^T dot in that dtype with a float32 result (harness.runs.efficiency), timed in the same run; the share is
forward FLOP/s / ceiling. JAX's persistent compilation cache is off.
Run: claims-harness bench-forward [--runs 3] [--batch 8] [--seq 128] [--dtypes float32,bfloat16] [--model PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from penzai import pz

from harness.model import capture, forms
from harness.model.forms import Form
from harness.model.sources import default_gguf_path, read_checkpoint
from harness.runs import compile_cache, efficiency


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
    args = parser.parse_args(argv)
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
    return 0


def forward_flops(checkpoint, tokens: np.ndarray) -> float:
    """XLA cost-analysis FLOPs of one full-logits forward on `tokens`, counted on the unrolled form (no while loop)."""
    unrolled = forms.build_model(checkpoint, form=Form.UNROLLED)
    return efficiency.lowered_flops(capture._logits.lower(pz.freeze_params(unrolled), np.asarray(tokens, np.int32)))


if __name__ == "__main__":
    raise SystemExit(main())
