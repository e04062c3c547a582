"""Forward throughput (tokens/s) of each execution form at batch 8×128 on the default SmolLM2, beside transformers.

Same weights (the default GGUF), same random token ids, float32 on CPU for transformers; after one warm-up
call (whose time, compilation included, is printed too) the median of --runs timed calls is reported, with the
efficiency of harness.runs.efficiency (the definition bench_evaluation.py uses): XLA cost-analysis FLOPs of the forward
(counted on the unrolled form; every row does the same math) / median seconds, against a jitted f32 matmul
[batch x seq, d_model] @ [d_model, d_ffn] timed in the same run. JAX's persistent compilation cache is off.
Run: claims-harness bench-forward [--runs 3] [--batch 8] [--seq 128]
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


def bench_ours(checkpoint, tokens: np.ndarray, runs: int) -> dict[str, tuple[float, float]]:
    ctx = checkpoint.config.max_context
    scan = forms.build_model(checkpoint, form=Form.SCAN)
    out = {}
    for form in Form:
        model = forms.convert(scan, checkpoint.config, form)
        out[f"penzai {form.value}"] = timed(lambda: capture.logits(model, tokens, max_context=ctx), runs)
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
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(None)
    tokens = np.random.default_rng(0).integers(0, checkpoint.config.vocab_size, size=(args.batch, args.seq))
    with compile_cache.disabled():
        results = bench_ours(checkpoint, tokens, args.runs) | bench_transformers(tokens, args.runs)
    flops = forward_flops(checkpoint, tokens)
    cfg, n_tokens = checkpoint.config, args.batch * args.seq
    peak = efficiency.matmul_flops_per_s(n_tokens, cfg.d_model, cfg.d_ffn)
    print(f"\nforward of {args.batch}x{args.seq} tokens, SmolLM2-135M-Instruct (float32), {jax.devices()[0].platform}, "
          f"median of {args.runs} after warm-up; {flops / 1e9:.1f} GFLOP per forward (XLA cost analysis); "
          f"jitted f32 matmul [{n_tokens},{cfg.d_model}]@[{cfg.d_model},{cfg.d_ffn}]: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'implementation':<48} {'tokens/s':>10} {'median s':>10} {'first call s':>13} {'efficiency':>11}")
    for name, (first, median) in results.items():
        e = efficiency.Efficiency(flops=flops, seconds=median, matmul_shape=(n_tokens, cfg.d_model, cfg.d_ffn),
                           matmul_flops_per_s=peak)
        print(f"{name:<48} {n_tokens / median:>10.0f} {median:>10.3f} {first:>13.2f} {e.fraction:>11.0%}")
    return 0


def forward_flops(checkpoint, tokens: np.ndarray) -> float:
    """XLA cost-analysis FLOPs of one full-logits forward on `tokens`, counted on the unrolled form (no while loop)."""
    unrolled = forms.build_model(checkpoint, form=Form.UNROLLED)
    return efficiency.lowered_flops(capture._logits.lower(pz.freeze_params(unrolled), np.asarray(tokens, np.int32)))


if __name__ == "__main__":
    raise SystemExit(main())
