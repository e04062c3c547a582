"""The SAE forward pass on directly built parameters, against numpy, plus its input checks.

References are written here from the formulas in harness/sae/sae.py's docstring (BRIEF §4), in
float64 numpy; axis order x [..., d_model], f [..., d_sae].
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.errors import InputError
from harness.sae.sae import (
    SAEMeta,
    SAEParams,
    check_compatible,
    check_params,
    decode,
    decoder_projection,
    encode,
    pre_activations,
    reconstruct,
)

D_MODEL, D_SAE = 16, 64
TOL = dict(rtol=1e-4, atol=1e-4)


def _weights(seed):
    rng = np.random.default_rng(seed)
    return dict(
        W_enc=rng.normal(size=(D_MODEL, D_SAE)) / 4, b_enc=rng.normal(scale=0.3, size=D_SAE),
        W_dec=rng.normal(size=(D_SAE, D_MODEL)) / 8, b_dec=rng.normal(scale=0.3, size=D_MODEL),
        threshold=rng.uniform(0, 0.5, size=D_SAE), mag_scale=rng.uniform(0.5, 2.0, size=D_SAE),
        b_mag=rng.normal(scale=0.3, size=D_SAE),
    )


def _params(w, architecture, **settings):
    keep = {"relu": (), "jumprelu": ("threshold",), "gated": ("mag_scale", "b_mag"), "topk": ()}[architecture]
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in w.items()
              if k in ("W_enc", "b_enc", "W_dec", "b_dec") or k in keep}
    return check_params(SAEParams(architecture=architecture, **arrays, **settings), source="test")


def _reference(w, architecture, x, *, k=None, norm_factor=1.0, out_norm_factor=1.0, apply_b_dec_to_input=False):
    xin = x * norm_factor - (w["b_dec"] if apply_b_dec_to_input else 0.0)
    pre = xin @ w["W_enc"] + w["b_enc"]
    if architecture == "relu":
        f = np.maximum(pre, 0)
    elif architecture == "jumprelu":
        f = np.maximum(pre, 0) * (pre > w["threshold"])
    elif architecture == "gated":
        f = (pre > 0) * np.maximum(xin @ w["W_enc"] * w["mag_scale"] + w["b_mag"], 0)
    else:
        f = np.zeros_like(pre)
        for index in np.ndindex(pre.shape[:-1]):
            top = np.argsort(pre[index])[::-1][:k]
            f[index][top] = np.maximum(pre[index][top], 0)
    return f, (f @ w["W_dec"] + w["b_dec"]) / out_norm_factor


CASES = [
    ("relu", {}),
    ("jumprelu", {"apply_b_dec_to_input": True}),
    ("gated", {"norm_factor": 1.7, "out_norm_factor": 1.3}),
    ("topk", {"k": 6, "apply_b_dec_to_input": True, "norm_factor": 0.8, "out_norm_factor": 0.8}),
]


@pytest.mark.parametrize("architecture,settings", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_numpy(architecture, settings):
    w = _weights(0)
    params = _params(w, architecture, **settings)
    x = np.random.default_rng(1).normal(scale=2.0, size=(3, 5, D_MODEL))  # [batch, position, d_model]
    f, x_hat = _reference(w, architecture, x, **settings)
    got = np.asarray(encode(params, x))
    assert got.shape == (3, 5, D_SAE)
    np.testing.assert_allclose(got, f, **TOL)
    assert 0 < (got != 0).mean() < 1
    np.testing.assert_allclose(np.asarray(decode(params, f)), x_hat, **TOL)
    np.testing.assert_allclose(np.asarray(reconstruct(params, x)), x_hat, **TOL)
    # the reading ignores normalisation, biases and the nonlinearity
    np.testing.assert_allclose(np.asarray(decoder_projection(params, x)), x @ w["W_dec"].T, **TOL)


def test_topk_keeps_exactly_k_and_works_under_jit():
    params = _params(_weights(2), "topk", k=4)
    x = np.random.default_rng(3).normal(size=(50, D_MODEL)) + 5 * np.asarray(params.W_enc).mean(axis=1)
    f = np.asarray(jax.jit(encode)(params, x))
    assert ((f != 0).sum(axis=-1) <= 4).all() and ((f != 0).sum(axis=-1) == 4).mean() > 0.5
    np.testing.assert_allclose(f, np.asarray(encode(params, x)), **TOL)


def test_feature_index_out_of_range():
    params = _params(_weights(4), "relu")
    x = np.ones((2, D_MODEL))
    with pytest.raises(InputError, match=r"^feature index 64 out of range for an SAE of 64 features$"):
        decoder_projection(params, x, [3, 64])
    with pytest.raises(InputError, match="feature index -1 out of range"):
        decoder_projection(params, x, -1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_activations_are_named(bad):
    params = _params(_weights(5), "gated")
    x = np.ones((4, D_MODEL))
    x[2, 7] = bad
    with pytest.raises(InputError, match=r"^resid_pre_20: 1 NaN/inf values in the input activations"):
        encode(params, x, name="resid_pre_20")
    with pytest.raises(InputError, match=r"^x: 1 NaN/inf"):
        decoder_projection(params, x)


def test_wrong_input_width():
    params = _params(_weights(6), "relu")
    with pytest.raises(InputError, match=r"x: shape \(2, 15\), expected last axis d_model=16"):
        encode(params, np.ones((2, 15)))


def test_nan_in_weights_and_missing_architecture_field():
    w = _weights(7)
    w["b_enc"][10] = np.nan
    with pytest.raises(InputError, match=r"^test: tensor b_enc has 1 NaN/inf values"):
        _params(w, "relu")
    with pytest.raises(InputError, match="tensor threshold missing, required by a jumprelu SAE"):
        check_params(SAEParams(architecture="jumprelu", **{k: jnp.asarray(v) for k, v in _weights(7).items()
                                                           if k.startswith(("W_", "b_e", "b_d"))}), source="test")


def test_check_compatible():
    meta = SAEMeta(d_model=3072, d_sae=49152, source="l20.safetensors", model_name="phi-3-mini", layer=20, hook="resid_pre")
    check_compatible(meta, d_model=3072, layer=20, hook="resid_pre", model_name="phi-3-mini")
    with pytest.raises(InputError, match=r"^l20\.safetensors: SAE width d_model=3072 does not match the model's d_model=576$"):
        check_compatible(meta, d_model=576, layer=20, hook="resid_pre")
    with pytest.raises(InputError, match=r"^l20\.safetensors: SAE was trained on layer 20, asked to read layer 21$"):
        check_compatible(meta, d_model=3072, layer=21, hook="resid_pre")
    with pytest.raises(InputError, match="reads hook 'resid_pre', asked to read 'resid_post'"):
        check_compatible(meta, d_model=3072, layer=20, hook="resid_post")
    with pytest.raises(InputError, match="trained on model 'phi-3-mini'"):
        check_compatible(meta, d_model=3072, layer=20, hook="resid_pre", model_name="smollm2-135m")


def test_params_are_a_pytree():
    params = _params(_weights(8), "topk", k=3, norm_factor=math.sqrt(2))
    leaves, tree = jax.tree_util.tree_flatten(params)
    assert len(leaves) == 4
    again = jax.tree_util.tree_unflatten(tree, leaves)
    assert (again.k, again.norm_factor, again.architecture) == (3, math.sqrt(2), "topk")


@pytest.mark.parametrize("architecture,settings", CASES, ids=[c[0] for c in CASES])
def test_a_bfloat16_residual_is_read_in_float32(architecture, settings):
    """A model run in bfloat16 hands over a bf16 residual: every function widens it first, so the result is the float32
    computation on the widened values, bit for bit, and float32 however the residual came."""
    params = _params(_weights(9), architecture, **settings)
    x16 = jnp.asarray(np.random.default_rng(10).normal(scale=2.0, size=(3, 5, D_MODEL)), jnp.bfloat16)
    x32 = x16.astype(jnp.float32)
    for fn in (encode, pre_activations, reconstruct, decoder_projection):
        got, want = fn(params, x16), fn(params, x32)
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    f16 = encode(params, x32).astype(jnp.bfloat16)
    assert decode(params, f16).dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(decode(params, f16)), np.asarray(decode(params, f16.astype(jnp.float32))))


def test_the_finiteness_checks_see_every_non_finite_value_and_pass_large_finite_ones():
    for bad in (np.nan, np.inf, -np.inf):
        w = _weights(11)
        w["W_dec"][63, 15] = bad
        with pytest.raises(InputError, match=r"^test: tensor W_dec has 1 NaN/inf values"):
            _params(w, "relu")
        x = np.ones((2, D_MODEL))
        x[1, 15] = bad
        with pytest.raises(InputError, match=r"^x: 1 NaN/inf"):
            encode(_params(_weights(11), "relu"), jnp.asarray(x, jnp.bfloat16))
    w = _weights(11)
    w["W_enc"][0, 0] = np.finfo(np.float32).max  # large but finite (x·0 is still 0 in the fused check)
    _params(w, "relu")
