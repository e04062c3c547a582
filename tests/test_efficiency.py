"""harness.runs.efficiency: FLOPs come from XLA's cost analysis of a loop-free program (a scanned one is refused, since
XLA counts a loop body once), and the efficiency figure is the forward's FLOP/s over the same-run matmul's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from harness.errors import InputError
from harness.runs import efficiency

M, K, LAYERS = 32, 16, 5


def _unrolled(x, w):
    for i in range(LAYERS):
        x = x @ w[i]
    return x


def _scanned(x, w):
    return jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]


def test_flops_are_counted_on_the_loop_free_program_and_a_scan_is_refused():
    x, w = jnp.ones((M, K)), jnp.ones((LAYERS, K, K))
    assert efficiency.lowered_flops(jax.jit(_unrolled).lower(x, w)) == pytest.approx(2 * M * K * K * LAYERS, rel=0.01)
    with pytest.raises(InputError, match="while loop"):
        efficiency.lowered_flops(jax.jit(_scanned).lower(x, w))


def test_efficiency_is_the_ratio_of_flop_rates():
    e = efficiency.efficiency(flops=1e9, seconds=0.5, tokens=64, d_model=32, d_ffn=48, repeats=2)
    assert e.matmul_shape == (64, 32, 48) and e.flops_per_s == 2e9
    assert e.fraction == pytest.approx(2e9 / e.matmul_flops_per_s) and e.matmul_flops_per_s > 0
    assert "of a jitted float32 matmul [64,32]x[48,32]^T" in e.summary()
    bf16 = efficiency.efficiency(flops=1e9, seconds=0.5, tokens=64, d_model=32, d_ffn=48, dtype="bfloat16", repeats=2)
    assert bf16.dtype == "bfloat16" and "jitted bfloat16 matmul" in bf16.summary() and bf16.matmul_flops_per_s > 0
    with pytest.raises(InputError, match="seconds=0"):
        efficiency.efficiency(flops=1.0, seconds=0, tokens=1, d_model=1, d_ffn=1)
