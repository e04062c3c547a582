"""Feature readings [question, option, feature] against numpy, chunked equal to unchunked, per-feature scores."""

import jax.numpy as jnp
import numpy as np
import pytest

from harness.errors import InputError
from harness.sae import readings
from harness.sae.readings import feature_readings, reading_chunks, score_features
from harness.sae.sae import SAEParams, check_params
from harness.scoring import scores

D_MODEL, D_SAE, N_Q = 8, 40, 7


def _params(architecture, seed=0, **settings):
    rng = np.random.default_rng(seed)
    w = dict(W_enc=rng.normal(size=(D_MODEL, D_SAE)) / 3, b_enc=rng.normal(scale=0.3, size=D_SAE),
             W_dec=rng.normal(size=(D_SAE, D_MODEL)) / 5, b_dec=rng.normal(scale=0.3, size=D_MODEL))
    if architecture == "gated":
        w.update(mag_scale=rng.uniform(0.5, 2, size=D_SAE), b_mag=rng.normal(scale=0.3, size=D_SAE))
    if architecture == "jumprelu":
        w.update(threshold=rng.uniform(0, 0.5, size=D_SAE))
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}
    return check_params(SAEParams(architecture=architecture, **arrays, **settings), source="test"), w


def _numpy_reading(w, architecture, reading, x, *, k=None, norm_factor=1.0, apply_b_dec=False):
    """Independent float64 reference of the three readings (formulas of harness/sae/sae.py's docstring)."""
    x = x.astype(np.float64)
    if reading == "decoder":
        return x @ w["W_dec"].T
    xin = x * norm_factor - (w["b_dec"] if apply_b_dec else 0.0)
    pre = xin @ w["W_enc"] + w["b_enc"]
    if reading == "preact":
        return pre
    if architecture == "relu":
        return np.maximum(pre, 0)
    if architecture == "jumprelu":
        return np.where((pre > w["threshold"]) & (pre > 0), pre, 0)
    if architecture == "gated":
        return (pre > 0) * np.maximum(xin @ w["W_enc"] * w["mag_scale"] + w["b_mag"], 0)
    kth = np.sort(pre, axis=-1)[..., -k][..., None]
    return np.where(pre >= kth, np.maximum(pre, 0), 0)


def _resid(seed=1, n_q=N_Q):
    return np.random.default_rng(seed).normal(size=(n_q, 4, D_MODEL)).astype(np.float32)


CASES = [("relu", {}), ("jumprelu", {}), ("gated", {}), ("topk", {"k": 5}),
         ("relu", {"norm_factor": 1.7, "apply_b_dec_to_input": True})]


@pytest.mark.parametrize("architecture,settings", CASES)
@pytest.mark.parametrize("reading", readings.READINGS)
def test_readings_match_numpy_and_chunking_changes_nothing(architecture, settings, reading):
    params, w = _params(architecture, **settings)
    x = _resid()
    ref = _numpy_reading(w, architecture, reading, x, k=settings.get("k"), norm_factor=settings.get("norm_factor", 1.0),
                         apply_b_dec=settings.get("apply_b_dec_to_input", False))
    whole = feature_readings(x, params, reading=reading)
    assert whole.shape == (N_Q, 4, D_SAE)
    np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-4)
    pieces = list(reading_chunks(x, params, reading=reading, chunk=7))
    assert [sl.start for sl, _ in pieces] == list(range(0, D_SAE, 7))
    np.testing.assert_allclose(np.concatenate([b for _, b in pieces], axis=2), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture", ["topk", "gated"])
@pytest.mark.parametrize("reading", readings.READINGS)
def test_selected_features_come_back_in_the_order_asked(architecture, reading):
    params, _ = _params(architecture, **({"k": 5} if architecture == "topk" else {}))
    x = _resid()
    pick = [33, 2, 17, 2]
    np.testing.assert_allclose(feature_readings(x, params, reading=reading, features=pick),
                               feature_readings(x, params, reading=reading)[:, :, pick], rtol=1e-5, atol=1e-6)


def test_score_features_matches_the_score_functions_and_chunks(monkeypatch):
    params, w = _params("relu")
    x, a = _resid(n_q=30), np.random.default_rng(3).integers(0, 4, size=30)
    full = _numpy_reading(w, "relu", "encoder", x)
    monkeypatch.setattr(readings, "CHUNK_CELLS", 30 * 4 * 6)  # 6 features per chunk
    got = score_features(x, a, params, reading="encoder")
    np.testing.assert_allclose(got.share, scores.argmax_accuracy(full, a, ties="share"))
    np.testing.assert_allclose(got.first, scores.argmax_accuracy(full, a, ties="first"))
    np.testing.assert_allclose(got.argmin_first, scores.argmin_accuracy(full, a, ties="first"))
    np.testing.assert_allclose(got.auc, scores.option_auc(full, a))
    np.testing.assert_allclose(got.logprob, scores.correct_logprob(full, a), rtol=1e-5)
    np.testing.assert_allclose(got.better_first, np.maximum(got.first, got.argmin_first))
    assert got.n == 30 and got.reading == "encoder"


def test_score_features_applies_the_tie_rule_to_the_tie_aware_figures_only():
    params, w = _params("relu")
    x = _resid(n_q=20)
    x[:, 1] = x[:, 0]  # options A and B identical: every reading ties them exactly...
    x[:, 1, 0] += 1e-6  # ...except for float noise on one coordinate
    a = np.zeros(20, dtype=np.int64)
    groups = np.tile([0, 0, 2, 3], (20, 1))
    full = _numpy_reading(w, "relu", "decoder", x)
    got = score_features(x, a, params, reading="decoder", identical=groups)
    np.testing.assert_allclose(got.share, scores.argmax_accuracy(full, a, identical=groups))
    raw = feature_readings(x, params, reading="decoder")  # float32, as scored
    np.testing.assert_allclose(got.first, scores.argmax_accuracy(raw, a, ties="first"))  # the original's rule, raw
    assert np.all(got.share <= 0.5 + 1e-12)  # A never gets full credit: B is its twin


def test_bad_inputs_raise_one_line_errors():
    params, _ = _params("relu")
    for call in (lambda: feature_readings(np.zeros((3, 4, D_MODEL + 1)), params, reading="encoder"),
                 lambda: feature_readings(np.zeros((3, D_MODEL)), params, reading="encoder"),
                 lambda: feature_readings(np.full((3, 4, D_MODEL), np.nan), params, reading="decoder"),
                 lambda: feature_readings(np.zeros((3, 4, D_MODEL)), params, reading="logit"),
                 lambda: feature_readings(np.zeros((3, 4, D_MODEL)), params, reading="decoder", features=[D_SAE])):
        with pytest.raises(InputError) as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("architecture,settings", CASES[:4])
@pytest.mark.parametrize("reading", readings.READINGS)
def test_chunks_of_a_feature_subset_and_row_blocks_of_the_topk_support_change_nothing(monkeypatch, architecture,
                                                                                        settings, reading):
    """One reading loop for all features and for a subset: forced small feature chunks (and, for TopK, row blocks of
    its support) give the unchunked readings of the features asked, in their order, duplicates included."""
    params, _ = _params(architecture, **settings)
    x = _resid(n_q=11)
    whole = feature_readings(x, params, reading=reading)
    pick = np.array([33, 2, 17, 2, 39, 0, 5])
    monkeypatch.setattr(readings, "CHUNK_CELLS", D_SAE * 3)  # TopK support: 3 rows per block
    pieces = list(reading_chunks(x, params, reading=reading, features=pick, chunk=3))
    assert [(sl.start, sl.stop) for sl, _ in pieces] == [(0, 3), (3, 6), (6, 7)]
    got = np.concatenate([b for _, b in pieces], axis=2)
    np.testing.assert_allclose(got, whole[:, :, pick], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(readings.feature_subset(params, x, pick, reading=reading, chunk=2), whole[:, :, pick],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([b for _, b in reading_chunks(x, params, reading=reading)], axis=2), whole,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reading", readings.READINGS)
def test_a_bfloat16_residual_is_read_as_its_float32_values(reading):
    params, _ = _params("gated")
    x16 = jnp.asarray(_resid(), jnp.bfloat16)
    want = feature_readings(np.asarray(x16.astype(jnp.float32)), params, reading=reading)
    np.testing.assert_array_equal(feature_readings(x16, params, reading=reading), want)
    np.testing.assert_allclose(readings.feature_subset(params, x16[:, 0], [4, 1], reading=reading), want[:, 0, [4, 1]],
                               rtol=1e-6, atol=1e-6)  # other matmul shapes: float32 rounding only


@pytest.mark.parametrize("architecture,settings", CASES)
@pytest.mark.parametrize("reading", readings.READINGS)
def test_an_sae_that_reads_a_centred_residual_is_read_on_the_residual_minus_its_mean(architecture, settings, reading):
    """center_input (SAELens center_writing_weights on a LayerNorm model): every reading, the decoder projection too,
    is the numpy reading of x − mean_d(x); a residual with a large common offset shows it (uncentred, it moves)."""
    params, w = _params(architecture, center_input=True, **settings)
    x = _resid() + 3.0 + np.random.default_rng(4).normal(size=(N_Q, 4, 1)).astype(np.float32)
    x_c = x - x.mean(axis=-1, keepdims=True)
    ref = _numpy_reading(w, architecture, reading, x_c, k=settings.get("k"),
                         norm_factor=settings.get("norm_factor", 1.0),
                         apply_b_dec=settings.get("apply_b_dec_to_input", False))
    got = feature_readings(x, params, reading=reading)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(readings.feature_subset(params, x, [3, 0], reading=reading), ref[..., [3, 0]],
                               rtol=1e-4, atol=1e-4)
    plain = _numpy_reading(w, architecture, reading, x, k=settings.get("k"),
                           norm_factor=settings.get("norm_factor", 1.0),
                           apply_b_dec=settings.get("apply_b_dec_to_input", False))
    assert np.abs(plain - ref).max() > 0.1  # the offset matters: the test can tell centred from plain
