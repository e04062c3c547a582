"""SAE quality metrics against direct numpy computations, plus their defining sanity cases."""

import numpy as np
import pytest

from harness.errors import InputError
from harness.sae import metrics
from harness.sae.sae import SAEParams, decode, encode
import jax.numpy as jnp


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, size=(200, 8))          # [token, d_model], non-zero mean on purpose
    x_hat = x + rng.normal(scale=0.5, size=x.shape)
    f = rng.exponential(size=(200, 32)) * (rng.random((200, 32)) < 0.05)
    f[:, 5] = 0.0                                   # a dead feature
    f[:, 6] = 1.0                                   # a feature on every token
    return x, x_hat, f


def test_variance_figures_match_numpy(sample):
    x, x_hat, _ = sample
    err = ((x - x_hat) ** 2).sum(axis=1).mean()
    var = (x**2).sum(axis=1).mean() - (x.mean(axis=0) ** 2).sum()   # SAEBench: E‖x‖² − ‖E x‖²
    assert metrics.mse(x, x_hat) == pytest.approx(err, rel=1e-12)
    assert metrics.fraction_of_variance_unexplained(x, x_hat) == pytest.approx(err / var, rel=1e-9)
    assert metrics.explained_variance(x, x_hat) == pytest.approx(1 - err / var, rel=1e-9)


def test_fvu_sanity():
    x = np.random.default_rng(1).normal(size=(100, 8))
    assert metrics.fraction_of_variance_unexplained(x, x.copy()) == 0.0
    mean = np.broadcast_to(x.mean(axis=0), x.shape)
    assert metrics.fraction_of_variance_unexplained(x, mean) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(InputError, match="zero variance"):
        metrics.fraction_of_variance_unexplained(np.ones((5, 8)), np.ones((5, 8)))


def test_cosine_and_bias_match_numpy(sample):
    x, x_hat, _ = sample
    cos = np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(x, x_hat)])
    assert metrics.cosine_similarity(x, x_hat) == pytest.approx(cos, rel=1e-12)
    assert metrics.relative_reconstruction_bias(x, 0.8 * x) == pytest.approx(0.8, rel=1e-12)  # shrinkage shows as γ < 1
    gamma = np.mean([b @ b for b in x_hat]) / np.mean([a @ b for a, b in zip(x, x_hat)])
    assert metrics.relative_reconstruction_bias(x, x_hat) == pytest.approx(gamma, rel=1e-12)


def test_sparsity_figures_match_numpy(sample):
    _, _, f = sample
    freq = np.array([np.count_nonzero(f[:, j]) / f.shape[0] for j in range(f.shape[1])])
    assert metrics.mean_l0(f) == pytest.approx(np.mean([np.count_nonzero(row) for row in f]))
    assert metrics.mean_l1(f) == pytest.approx(np.abs(f).sum() / f.shape[0])
    assert metrics.dead_fraction(f) == pytest.approx((freq == 0).sum() / f.shape[1])
    assert metrics.dead_fraction(f) >= 1 / 32
    assert metrics.dense_fraction(f, above=0.01) == pytest.approx((freq > 0.01).sum() / 32)
    assert metrics.dense_fraction(f, above=0.1) == pytest.approx((freq > 0.1).sum() / 32)
    assert metrics.dense_fraction(f, above=0.1) >= 1 / 32


def test_ce_loss_recovered():
    assert metrics.ce_loss_recovered(2.0, 2.0, 10.0) == 1.0
    assert metrics.ce_loss_recovered(2.0, 10.0, 10.0) == 0.0
    assert metrics.ce_loss_recovered(2.0, 3.0, 6.0) == pytest.approx((6 - 3) / (6 - 2))
    with pytest.raises(InputError, match="ce_zero_ablate == ce_clean"):
        metrics.ce_loss_recovered(2.0, 3.0, 2.0)
    with pytest.raises(InputError, match="ce_sae=nan"):
        metrics.ce_loss_recovered(2.0, float("nan"), 6.0)


def test_quality_record_agrees_with_parts():
    rng = np.random.default_rng(2)
    params = SAEParams(W_enc=jnp.asarray(rng.normal(size=(8, 32)), jnp.float32), b_enc=jnp.zeros(32),
                       W_dec=jnp.asarray(rng.normal(size=(32, 8)) / 4, jnp.float32), b_dec=jnp.zeros(8),
                       architecture="topk", k=3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    q = metrics.measure_quality(params, x, chunk=128, ce_loss_recovered=0.9)   # chunking must not change figures
    f = np.asarray(encode(params, x), np.float64)
    x_hat = np.asarray(decode(params, f), np.float64)
    assert q.n_tokens == 300 and q.ce_loss_recovered == 0.9
    assert q.mean_l0 == pytest.approx(3.0)
    assert q.fvu == pytest.approx(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)
    assert q.dead_fraction == pytest.approx(((f != 0).sum(0) == 0).mean())


def test_bad_shapes_and_values():
    with pytest.raises(InputError, match=r"x_hat: shape \(4, 3\), expected the shape of x \(4, 2\)"):
        metrics.mse(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="x: 1 NaN/inf"):
        metrics.mse(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))
