"""What an alpha grid costs: `interventions.steer_grid` (the plain residual up to resid_pre L once, then the N - L later
blocks per alpha) against G separate steered forwards (`capture.logits(intervene(model, Steer(...)))` per alpha).

On the default model (SmolLM2-135M, scan form, float32), a batch of random token ids (default 8 x 128, seeded), one
random steering vector (seeded, norm --norm) and G alphas evenly spread over [-4, 4] at the profile's layer (15 of
30). Both sides are warm: one untimed call per shape first (the separate runs' models differ only in alpha, a pytree
leaf, so they share one compiled forward). Each side is timed --rounds times, blocking until its logits exist; the
least wall time and the least process CPU time (all threads) of the rounds are printed, with the ratio
separate / grid, beside the predicted cost in full forwards (`SteerGrid.forwards` = (L + G (N - L)) / N against
`SteerGrid.separate_forwards` = G). The unembedding is outside that prediction and inside the timings (both ways run
it G times), so the measured ratio sits below it; a second prediction counts the unembedding as U blocks (U = its
multiply-adds per token over a block's: vocab x d over the block's weights, 8.0 on SmolLM2-135M):
(G (N + U)) / (L + G (N - L + U)). The logits of the two ways are compared alpha by alpha (max |diff|).

Measured on the 2-core shared CPU machine (jax 0.10.2, 8 x 128 tokens, L = 15 of 30, least of 2 rounds, other jobs
running): G = 5: grid 19.8 s, separate 28.5 s wall (11.3 / 16.6 s CPU), ratio 1.44x wall / 1.47x CPU against 1.67x
predicted in blocks and 1.46x with the unembedding; G = 9: 41.7 / 63.3 s wall (19.7 / 31.0 s CPU), 1.52x / 1.57x
against 1.80x and 1.54x. The logits agreed bit for bit (max |diff| 0) at every alpha.

Run: python benchmarks/steer_grid.py [--grids 5 9] [--batch 8] [--seq 128] [--layer 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _timed(fn, rounds: int) -> tuple[float, float, object]:
    """(least wall seconds, least process CPU seconds, last output) of `rounds` calls of fn()."""
    walls, cpus, out = [], [], None
    for _ in range(rounds):
        out = None  # let the previous round's logits go before the next round allocates its own
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[5, 9], help="grid sizes G to time")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layer", type=int, default=15, help="resid_pre layer steered (the smollm2-default profile's)")
    ap.add_argument("--norm", type=float, default=8.0, help="the steering vector's norm")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per side (the least is printed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    from harness.model import capture, sources
    from harness.model.forms import Form, build_model
    from harness.model.interventions import Steer, SteerGrid, intervene, steer_grid

    ck = sources.read_checkpoint(None)
    model = build_model(ck, form=Form.SCAN)
    c = ck.config
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, c.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    v = rng.normal(size=c.d_model)
    vector = (v / np.linalg.norm(v) * args.norm).astype(np.float32)
    n = capture.n_layers(model)
    block = (2 * c.d_model * c.n_heads * c.head_dim + 2 * c.d_model * c.n_kv_heads * c.head_dim
             + (3 if c.mlp in ("swiglu", "geglu_tanh") else 2) * c.d_model * c.d_ffn)  # a block's weights = MACs per token
    unembed = c.vocab_size * c.d_model / block  # the unembedding in blocks
    print(f"model: {c.d_model} wide, {n} blocks, vocab {c.vocab_size}; tokens {args.batch} x {args.seq}; "
          f"steering at resid_pre {args.layer}; vector norm {args.norm:g}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; least of {args.rounds} rounds")

    def grid(alphas):
        g = steer_grid(model, tokens, vector=vector, alphas=alphas, layer=args.layer, max_context=args.seq)
        jax.block_until_ready(g.logits)
        return g

    def separate(alphas):
        out = []
        for a in alphas:
            out.append(capture.logits(intervene(model, Steer(vector=vector, alpha=a, layer=args.layer)), tokens,
                                      max_context=args.seq))
            out[-1].block_until_ready()
        return out

    grid([1.0]), separate([1.0])  # warm-up: compiles both ways for this shape (alpha values share a compile)
    for G in args.grids:
        alphas = [float(a) for a in np.linspace(-4.0, 4.0, G)]
        g_wall, g_cpu, g = _timed(lambda alphas=alphas: grid(alphas), args.rounds)
        s_wall, s_cpu, sep = _timed(lambda alphas=alphas: separate(alphas), args.rounds)
        diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(g.logits, sep))
        assert isinstance(g, SteerGrid)
        print(f"\nG = {G} alphas {[round(a, 3) for a in alphas]}")
        print(f"  steer_grid       wall {g_wall:7.2f} s   cpu {g_cpu:7.2f} s   predicted {g.forwards:.3f} forwards "
              f"({g.blocks_run} blocks)")
        print(f"  separate runs    wall {s_wall:7.2f} s   cpu {s_cpu:7.2f} s   predicted {g.separate_forwards} forwards "
              f"({g.separate_forwards * n} blocks)")
        with_unembed = G * (n + unembed) / (args.layer + G * (n - args.layer + unembed))
        print(f"  ratio separate/grid: wall {s_wall / g_wall:.2f}x, cpu {s_cpu / g_cpu:.2f}x; predicted "
              f"{g.separate_forwards / g.forwards:.2f}x in blocks, {with_unembed:.2f}x with the unembedding as "
              f"{unembed:.1f} blocks")
        print(f"  logits max |grid - separate| over {G} alphas: {diff:.3g}")
        del g, sep


if __name__ == "__main__":
    main()
