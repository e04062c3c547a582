"""compile_timing and compile_report: abstract builds, while-loop counting, fresh timings, ratios, the plot."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.errors import InputError
from harness.model.forms import LAYER_AXIS, Form
from harness.reporting import compile_report
from harness.studies import compile_timing

TINY = compile_timing.dataclasses.replace(
    compile_timing.SMOLLM2_SHAPE, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ffn=48, vocab_size=61, n_layers=3
)


def test_shapes_are_the_published_ones():
    phi = compile_timing.shape_named("phi3-mini", n_layers=32)
    assert (phi.d_model, phi.n_heads, phi.n_kv_heads, phi.head_dim, phi.d_ffn, phi.vocab_size) == (3072, 32, 32, 96, 8192, 32064)
    smol = compile_timing.shape_named("smollm2-135m", n_layers=30)
    assert (smol.d_model, smol.n_heads, smol.n_kv_heads, smol.head_dim, smol.d_ffn, smol.vocab_size) == (576, 9, 3, 64, 1536, 49152)
    with pytest.raises(InputError, match="model shape 'gpt2'"):
        compile_timing.shape_named("gpt2", n_layers=2)
    with pytest.raises(InputError, match="n_layers=0"):
        compile_timing.shape_named("phi3-mini", n_layers=0)


def test_abstract_params_hold_no_arrays_and_match_the_config():
    config = compile_timing.shape_named("phi3-mini", n_layers=120)  # ~54 GB in float32 if it were materialised
    global_params, blocks = compile_timing.abstract_params(config)
    leaves = jax.tree_util.tree_leaves((global_params, blocks))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert blocks["mlp/gating_linear.weights"].named_shape == {LAYER_AXIS: 120, "embedding": 3072, "neurons": 8192}
    assert global_params["embedder.embeddings"].named_shape == {"vocabulary": 32064, "embedding": 3072}
    n_params = sum(int(np.prod(x.shape)) for x in leaves)
    expected = config.vocab_size * config.d_model * 2 + config.d_model + config.n_layers * (
        2 * config.d_model + 4 * config.d_model * config.n_heads * config.head_dim + 3 * config.d_model * config.d_ffn
    )
    assert n_params == expected


@pytest.mark.parametrize("form", list(Form))
def test_abstract_model_lowers_and_counts_its_while_loops(form):
    model = compile_timing.model_in_form(TINY, compile_timing.abstract_params(TINY), form)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(model))
    lowered, took = compile_timing.lower_fresh(model, compile_timing.token_spec(batch=2, seq=5))
    assert took.wall > 0 and took.cpu >= 0
    assert compile_timing.count_while_loops(lowered.as_text()) == (1 if form is Form.SCAN else 0)
    assert lowered.out_info.shape == (2, 5, TINY.vocab_size)


@pytest.mark.slow  # three / two compiles: ~5-15 s on a shared 2-core machine
def test_random_weights_give_the_same_logits_in_every_form():
    params = compile_timing.random_params(TINY, seed=3)
    tokens = compile_timing.random_tokens(TINY, batch=2, seq=7)
    out = {f: np.asarray(jax.jit(compile_timing.forward)(compile_timing.model_in_form(TINY, params, f), tokens)) for f in Form}
    assert out[Form.UNROLLED].shape == (2, 7, TINY.vocab_size)
    assert np.abs(out[Form.UNROLLED]).max() > 1e-3
    for form in (Form.LAYERSTACK, Form.SCAN):
        np.testing.assert_allclose(out[form], out[Form.UNROLLED], rtol=1e-5, atol=1e-6)


def test_random_params_are_seeded_and_scaled():
    a, b, c = (compile_timing.random_params(TINY, seed=s) for s in (0, 0, 1))
    wa, wb, wc = (p[1]["mlp/out_linear.weights"].data_array for p in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)
    assert abs(float(jnp.std(a[0]["embedder.embeddings"].data_array)) - 0.02) < 0.002
    np.testing.assert_array_equal(a[1]["pre_ffw_norm/scale.weights"].data_array, 1.0)


def _loops(n: int):
    def f(x):
        for i in range(n):
            x = jax.lax.fori_loop(0, 3 + i, lambda _, y: y * 2.0, x)
        return x

    return jax.jit(f).lower(jnp.ones(3)).as_text()


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_count_while_loops_counts_each_loop(n):
    assert compile_timing.count_while_loops(_loops(n)) == n


def test_count_while_loops_ignores_look_alike_names():
    assert compile_timing.count_while_loops('%0 = "stablehlo.while"(%a) stablehlo.while(%b) stablehlo.while_like foo.while') == 2


def test_compile_is_fresh_each_time_and_the_cache_is_off():
    model = compile_timing.model_in_form(TINY, compile_timing.abstract_params(TINY), Form.SCAN)
    tokens = compile_timing.token_spec(batch=1, seq=4)
    first, _ = compile_timing.lower_fresh(model, tokens)
    second, _ = compile_timing.lower_fresh(model, tokens)
    assert first is not second
    with compile_timing.compilation_cache_off():
        assert jax.config.jax_enable_compilation_cache is False
    compiled_a, _ = compile_timing.compile_lowered(first)
    compiled_b, _ = compile_timing.compile_lowered(second)
    assert compiled_a is not compiled_b


@pytest.mark.slow  # three / two compiles: ~5-15 s on a shared 2-core machine
def test_time_compile_keeps_the_best_round_and_the_executable_runs():
    params = compile_timing.random_params(TINY, seed=0)
    model = compile_timing.model_in_form(TINY, params, Form.SCAN)
    tokens = compile_timing.random_tokens(TINY, batch=1, seq=4)
    timing, compiled = compile_timing.time_compile(model, tokens, shape="tiny", form="scan", n_layers=3, repeats=2)
    assert timing.form is Form.SCAN and timing.repeats == 2 and timing.while_loops == 1
    assert timing.total.cpu == pytest.approx(timing.lower.cpu + timing.compile.cpu)
    np.testing.assert_allclose(np.asarray(compiled(model, tokens)), np.asarray(jax.jit(compile_timing.forward)(model, tokens)), rtol=1e-6)
    assert compile_timing.steady_forward(compiled, model, tokens, repeats=2).wall > 0
    with pytest.raises(InputError, match="repeats=0"):
        compile_timing.time_compile(model, tokens, shape="tiny", form="scan", n_layers=3, repeats=0)


def _timing(form, n, total, shape="s"):
    half = compile_timing.Seconds(wall=total, cpu=total / 2)
    return compile_timing.CompileTiming(shape=shape, form=Form(form), n_layers=n, batch=4, seq=128, lower=half, compile=half, while_loops=0)


def test_growth_and_speedup_are_ratios_of_totals():
    timings = [_timing("scan", 8, 2.0), _timing("scan", 120, 2.5), _timing("unrolled", 8, 3.0), _timing("unrolled", 120, 30.0)]
    assert compile_timing.growth(timings, shape="s", form="scan", few=8, many=120) == pytest.approx(1.25)
    assert compile_timing.speedup(timings, shape="s", n_layers=120, slow="unrolled", fast="scan") == pytest.approx(12.0)
    with pytest.raises(InputError, match="form=layerstack"):
        compile_timing.growth(timings, shape="s", form="layerstack", few=8, many=120)


def test_report_writes_plot_json_table_and_ratios(tmp_path):
    timings = [_timing(f, n, t * n, shape=s) for s in ("a", "b") for f, t in (("scan", 0.01), ("unrolled", 0.1), ("layerstack", 0.2)) for n in (8, 30)]
    plot, data = compile_report.write_compile_report(timings, tmp_path)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(data.read_text())) == len(timings)
    table = compile_report.text_table(timings)
    assert len(table.splitlines()) == len(timings) + 1
    lines = compile_report.ratio_lines(timings)
    assert "a: scan lower+compile grows 3.75x from 8 to 30 layers (cpu)" in lines
    assert "b: at 30 layers scan lower+compiles 10.00x as fast as unrolled (cpu)" in lines
