"""harness.runs.efficiency: FLOPs come from XLA's cost analysis of a loop-free program (a scanned one is refused, since
XLA counts a loop body once), and the efficiency figure is the forward's FLOP/s over the same-run matmul's.
harness.runs.profile: the dots of a compiled module read and timed alone; the CPU's bf16 matrix units from cpuinfo."""

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


# ---- harness.runs.profile: the dots of a compiled module, timed alone; the CPU's bf16 matrix units ------------------

HLO = """HloModule jit__logits, entry_computation_layout={(bf16[16,64]{1,0}, bf16[96,64]{1,0})->f32[16,96]{1,0}}

%fused_computation.3 (param_0.5: bf16[2,2,16,8], param_1.5: bf16[2,2,8,16]) -> f32[2,2,16,16] {
  %param_0.5 = bf16[2,2,16,8]{3,2,1,0} parameter(0)
  %param_1.5 = bf16[2,2,8,16]{3,2,1,0} parameter(1)
  ROOT %dot.49 = f32[2,2,16,16]{3,2,1,0} dot(%param_0.5, %param_1.5), lhs_batch_dims={0,1}, lhs_contracting_dims={3}, rhs_batch_dims={0,1}, rhs_contracting_dims={2}, metadata={op_name="jit(_logits)/dot_general"}
}

ENTRY %main.9 (Arg_0.1: bf16[16,64], Arg_1.2: bf16[96,64]) -> f32[16,96] {
  %Arg_0.1 = bf16[16,64]{1,0} parameter(0)
  %Arg_1.2 = bf16[96,64]{1,0} parameter(1)
  %ynn_fusion.3 = f32[2,2,16,16]{3,2,1,0} fusion(%Arg_0.1, %Arg_1.2), kind=kCustom, calls=%fused_computation.3, backend_config={"fusion_config":{"kind":"__ynn_fusion"},"outer_dimension_partitions":[]}
  %dot.7 = f32[16,96]{1,0} dot(bf16[16,64]{1,0} %Arg_0.1, bf16[96,64]{1,0} %Arg_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={1}
  ROOT %dot.8 = f32[16,96]{1,0} dot(%Arg_0.1, %Arg_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}
"""


def test_the_dots_of_an_hlo_module_are_read_with_their_dtypes_dims_and_kernel():
    from harness.runs import profile

    batched, inline, plain = profile.dots_of(HLO)
    assert batched == profile.Dot(lhs=(2, 2, 16, 8), rhs=(2, 2, 8, 16), lhs_dtype="bfloat16", rhs_dtype="bfloat16",
                                  result_dtype="float32", lhs_contracting=(3,), rhs_contracting=(2,), lhs_batch=(0, 1),
                                  rhs_batch=(0, 1), kernel="__ynn_fusion")
    assert batched.flops == 2 * 4 * 16 * 16 * 8
    assert inline == plain and plain.kernel == "dot"  # operand types inline or by name: the same
    assert (plain.lhs, plain.rhs, plain.lhs_contracting, plain.rhs_contracting) == ((16, 64), (96, 64), (1,), (1,))
    assert plain.flops == 2 * 16 * 96 * 64
    assert plain.shape() == "bf16[16,64] x bf16[96,64] -> f32, contract 1x1"
    with pytest.raises(InputError, match="while loop"):
        profile.dots_of(HLO + "  %w = (s32[]) while(%t), condition=%c, body=%b\n")


def test_a_compiled_bf16_dot_is_profiled_alone_against_the_program():
    from harness.runs import profile

    x, w = jnp.ones((64, 32), jnp.bfloat16), jnp.ones((48, 32), jnp.bfloat16)
    f = jax.jit(lambda x, w: jnp.tanh(jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)))
    dots = profile.dots_of(f.lower(x, w).compile().as_text())
    assert [(d.lhs, d.rhs, d.lhs_dtype, d.result_dtype) for d in dots] == [((64, 32), (48, 32), "bfloat16", "float32")]
    times = profile.profile_dots(dots * 3, repeats=2)
    assert len(times) == 1 and times[0].count == 3 and times[0].seconds > 0 and times[0].flops_per_s > 0
    assert profile.non_dot_share(4 * times[0].total, times) == pytest.approx(0.75)
    with pytest.raises(InputError, match="forward_seconds"):
        profile.non_dot_share(0.0, times)


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu vme avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: another
flags\t\t: amx_bf16 amx_tile
"""


def test_the_cpu_bf16_matrix_units_are_read_from_cpuinfo():
    from harness.runs import profile

    units = profile.cpu_matrix_units(CPUINFO)
    assert units == {"model": "AMD EPYC 9B14", "amx_bf16": False, "amx_tile": False, "avx512_bf16": True}
    assert profile.describe_matrix_units(units) == ("CPU AMD EPYC 9B14: amx_bf16 absent, amx_tile absent, "
                                                    "avx512_bf16 present")
    xeon = profile.cpu_matrix_units("model name : Xeon\nflags : amx_bf16 amx_tile avx512_bf16\n")
    assert xeon["amx_bf16"] and xeon["amx_tile"] and xeon["avx512_bf16"]
    assert profile.describe_matrix_units({}).endswith("unknown (no /proc/cpuinfo)")


def test_bench_forward_profiles_a_tiny_model(tmp_path, capsys):
    from checkpoints import tiny_gguf

    from harness.cli import bench_forward

    path = tmp_path / "tiny.gguf"
    tiny_gguf(path, n_layers=2)
    assert bench_forward.main(["--model", str(path), "--runs", "1", "--batch", "2", "--seq", "16", "--forms", "scan",
                               "--profile"]) == 0
    out = capsys.readouterr().out
    assert "amx_bf16" in out and "avx512_bf16" in out
    assert "float32   scan" in out and "bfloat16  scan" in out and "19 dots, " in out
    assert "bf16/f32" in out and "all dots alone: float32" in out


@pytest.mark.slow
def test_the_xla_sweep_runs_each_candidate_in_its_own_process(tmp_path, capsys):
    from checkpoints import tiny_gguf

    from harness.cli import bench_forward

    path = tmp_path / "tiny.gguf"
    tiny_gguf(path, n_layers=2)
    args = bench_forward.argparse.Namespace(model=str(path), runs=1, batch=2, seq=16, dtypes="float32,bfloat16")
    assert bench_forward.xla_sweep(args, ("", "--xla_cpu_enable_fast_math=false", "--xla_no_such_flag=1")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("(baseline: none)") and lines[-3].endswith("  y")
    assert lines[-2].startswith("--xla_cpu_enable_fast_math=false") and lines[-2].endswith("  y")
    assert lines[-1].startswith("--xla_no_such_flag=1") and lines[-1].endswith("flag unknown")
