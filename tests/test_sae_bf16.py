"""The SAE's contractions in bfloat16 (SAEParams.compute_dtype): bf16 x bf16 -> float32 dots in the lowered program,
results within the bf16 rounding bound of float32, and the float32 path unchanged, bit for bit.

The stated tolerance is the rounding bound of a dot whose two operands are rounded to bf16 (unit roundoff u = 2^-8)
and accumulated in float32: |a·w − bf16(a)·bf16(w)| <= (2u + u²)·(|a|·|w|), plus float32 accumulation noise.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.errors import InputError
from harness.sae import readings
from harness.sae.sae import (
    ARCHITECTURES,
    check_params,
    decode,
    decoder_projection,
    encode,
    pre_activations,
    reconstruct,
)
from test_sae import CASES, D_MODEL, D_SAE, _params, _weights

U = 2.0 ** -8  # bf16's unit roundoff (8 significant bits)
BOUND = 2 * U + U * U  # relative error of one product of two bf16-rounded operands
ACCUMULATION = 1e-5  # float32 accumulation over <= 64 terms of O(1) values, far above its real size


def _bf16(params):
    return dataclasses.replace(params, compute_dtype="bfloat16")


def _dots(text: str) -> list[tuple[str, str, str]]:
    """(lhs, rhs, result) tensor types of every dot_general in a lowered module (as tests/test_real_size.py reads them)."""
    return re.findall(r"stablehlo\.dot_general[^\n]*contracting_dims = \[\d[^\n]*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> "
                      r"(tensor<[^>]*>)", text)


def test_the_cases_cover_every_architecture():
    assert sorted(c[0] for c in CASES) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("architecture,settings", CASES, ids=[c[0] for c in CASES])
def test_bfloat16_encode_and_decode_lower_to_bf16_dots_with_float32_results(architecture, settings):
    params = _bf16(_params(_weights(20), architecture, **settings))
    x = np.zeros((3, 5, D_MODEL), np.float32)
    f = np.zeros((3, 5, D_SAE), np.float32)
    programs = {  # function -> (its arguments, the dots it holds)
        "encode": (encode, (params, x), 1),
        "pre_activations": (pre_activations, (params, x), 1),
        "decode": (decode, (params, f), 1),
        "reconstruct": (reconstruct, (params, x), 2),
        "decoder_projection": (decoder_projection, (params, x), 1),
        "decoder_projection of 3 features": (lambda p, x: decoder_projection(p, x, [3, 1, 40]), (params, x), 1),
    }
    for name, (fn, args, count) in programs.items():
        dots = _dots(jax.jit(fn).lower(*args).as_text())
        assert len(dots) == count, (name, dots)
        for lhs, rhs, out in dots:
            assert lhs.endswith("xbf16>") and rhs.endswith("xbf16>") and out.endswith("xf32>"), (name, lhs, rhs, out)
        assert jax.eval_shape(fn, *args).dtype == jnp.float32, name
    # float32 (the default) lowers to float32 dots
    for lhs, rhs, out in _dots(jax.jit(reconstruct).lower(_params(_weights(20), architecture, **settings), x).as_text()):
        assert lhs.endswith("xf32>") and rhs.endswith("xf32>") and out.endswith("xf32>"), (lhs, rhs, out)


def _input(params, x):
    """x' as the SAE forms it (float32), for the bound."""
    xin = x * params.norm_factor
    return xin - np.asarray(params.b_dec) if params.apply_b_dec_to_input else xin


@pytest.mark.parametrize("architecture,settings", CASES, ids=[c[0] for c in CASES])
def test_bfloat16_results_are_within_the_rounding_bound_of_float32(architecture, settings):
    p32 = _params(_weights(21), architecture, **settings)
    p16 = _bf16(p32)
    x = np.random.default_rng(22).normal(scale=2.0, size=(64, D_MODEL)).astype(np.float32)
    W_enc, W_dec = np.abs(np.asarray(p32.W_enc)), np.abs(np.asarray(p32.W_dec))
    scale = np.abs(_input(p32, x)) @ W_enc  # |x'|·|W_enc| per entry
    bound = BOUND * scale + ACCUMULATION

    pre32, pre16 = np.asarray(pre_activations(p32, x)), np.asarray(pre_activations(p16, x))
    assert pre16.dtype == np.float32
    assert np.all(np.abs(pre16 - pre32) <= bound)
    assert not np.array_equal(pre16, pre32)  # the bf16 path is taken

    f32, f16 = np.asarray(encode(p32, x)), np.asarray(encode(p16, x))
    assert f16.dtype == np.float32
    sign_clear = np.abs(pre32) > bound  # where bf16 cannot move the pre-activation across 0
    if architecture == "relu":  # 1-Lipschitz: every entry within the bound
        clear = np.ones_like(f32, bool)
    elif architecture == "jumprelu":  # entries whose float32 decision is clear by more than the bound
        clear = (np.abs(pre32 - np.asarray(p32.threshold)) > bound) & (np.abs(pre32) > bound)
    elif architecture == "gated":
        clear = np.abs(pre32) > bound
        bound = BOUND * scale * np.asarray(p32.mag_scale) + ACCUMULATION  # the magnitude's dot, rescaled
        magnitude = (pre32 - np.asarray(p32.b_enc)) * np.asarray(p32.mag_scale) + np.asarray(p32.b_mag)
        sign_clear &= np.abs(magnitude) > bound
    else:  # topk: rows whose top k stay above the rest whatever the rounding (lowest top-k - bound > highest rest + bound)
        top = np.argsort(-pre32, axis=-1)[:, :p32.k]
        in_top = np.zeros_like(pre32, bool)
        np.put_along_axis(in_top, top, True, axis=-1)
        kept = np.min(np.where(in_top, pre32 - bound, np.inf), axis=-1) > np.max(np.where(in_top, -np.inf, pre32 + bound),
                                                                                  axis=-1)
        clear = np.broadcast_to(kept[:, None], f32.shape)
    assert clear.mean() > 0.5, clear.mean()  # most entries are tested
    assert np.all(np.abs(f16 - f32)[clear] <= bound[clear])
    assert np.array_equal((f16 != 0)[clear & sign_clear], (f32 != 0)[clear & sign_clear])

    f = f32
    decode_bound = (BOUND * (np.abs(f) @ W_dec) + ACCUMULATION) / p32.out_norm_factor
    assert np.all(np.abs(np.asarray(decode(p16, f)) - np.asarray(decode(p32, f))) <= decode_bound)
    proj_bound = BOUND * (np.abs(x) @ W_dec.T) + ACCUMULATION
    assert np.all(np.abs(np.asarray(decoder_projection(p16, x)) - np.asarray(decoder_projection(p32, x))) <= proj_bound)

    # the feature readings go through the same functions: the decoder and pre-activation readings within the bound
    r = x.reshape(16, 4, D_MODEL)
    for reading, limit in (("preact", bound if architecture != "gated" else BOUND * scale + ACCUMULATION),
                           ("decoder", proj_bound)):
        got = readings.feature_readings(r, p16, reading=reading).reshape(64, D_SAE)
        want = readings.feature_readings(r, p32, reading=reading).reshape(64, D_SAE)
        assert np.all(np.abs(got - want) <= limit), reading


@pytest.mark.parametrize("architecture,settings", CASES, ids=[c[0] for c in CASES])
def test_float32_is_the_plain_float32_formula_bit_for_bit(architecture, settings):
    """The default compute dtype is float32 and computes today's figures: the plain jnp matmuls, bit for bit."""
    params = _params(_weights(23), architecture, **settings)
    assert params.compute_dtype == "float32"
    x = np.random.default_rng(24).normal(scale=2.0, size=(6, D_MODEL)).astype(np.float32)
    xin = jnp.asarray(x) * params.norm_factor
    if params.apply_b_dec_to_input:
        xin = xin - params.b_dec
    np.testing.assert_array_equal(np.asarray(pre_activations(params, x)), np.asarray(xin @ params.W_enc + params.b_enc))
    f = encode(params, x)
    np.testing.assert_array_equal(np.asarray(decode(params, f)),
                                  np.asarray((f @ params.W_dec + params.b_dec) / params.out_norm_factor))
    np.testing.assert_array_equal(np.asarray(decoder_projection(params, x)), np.asarray(jnp.asarray(x) @ params.W_dec.T))
    if architecture == "relu":
        np.testing.assert_array_equal(np.asarray(f), np.asarray(jax.nn.relu(xin @ params.W_enc + params.b_enc)))


def test_an_unknown_compute_dtype_is_refused():
    w = {k: jnp.asarray(v, jnp.float32) for k, v in _weights(25).items() if k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    from harness.sae.sae import SAEParams
    with pytest.raises(InputError, match=r"compute_dtype 'float16', expected one of \('float32', 'bfloat16'\)"):
        check_params(SAEParams(**w, compute_dtype="float16"), source="test")
