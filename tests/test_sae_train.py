"""Training recovers a known sparse dictionary from synthetic data, and the outlier helper reports what it drops."""

import numpy as np
import pytest

from harness.errors import InputError
from harness.sae.metrics import measure_quality
from harness.sae.train import TrainConfig, drop_outlier_tokens, geometric_median, train_sae

D_MODEL, N_TRUE, ACTIVE = 16, 48, 3


def _dictionary(seed=0):
    d = np.random.default_rng(seed).normal(size=(N_TRUE, D_MODEL))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _sample(rng, dictionary, n):
    """n tokens, each a positive mix of ACTIVE random atoms plus a little noise."""
    idx = np.argsort(rng.random((n, N_TRUE)), axis=1)[:, :ACTIVE]
    codes = np.zeros((n, N_TRUE))
    np.put_along_axis(codes, idx, rng.uniform(0.5, 2.0, (n, ACTIVE)), axis=1)
    return (codes @ dictionary + 0.01 * rng.normal(size=(n, D_MODEL))).astype(np.float32) + 4.0


def _stream(seed, dictionary):
    rng = np.random.default_rng(seed)
    while True:
        yield _sample(rng, dictionary, 1000)


def test_topk_training_recovers_the_dictionary():
    dictionary = _dictionary()
    config = TrainConfig(d_sae=64, steps=300, k=4, batch_size=256, lr=1e-2, dead_after_tokens=256 * 20,
                         log_every=50, progress=False)
    params, log = train_sae(_stream(1, dictionary), config, d_model=D_MODEL)
    assert log.step[0] == 1 and log.step[-1] == 300 and log.n_tokens == 300 * 256
    assert log.loss[-1] < 0.4 * log.loss[0]
    quality = measure_quality(params, _sample(np.random.default_rng(2), dictionary, 2000))
    assert quality.fvu < 0.2 and quality.mean_l0 <= 4
    # most true atoms have a learned decoder row pointing the same way
    best = np.abs(dictionary @ np.asarray(params.W_dec).T).max(axis=1)
    assert (best > 0.9).mean() > 0.7
    np.testing.assert_allclose(np.linalg.norm(np.asarray(params.W_dec), axis=1), 1.0, rtol=1e-4)


def test_relu_training_reduces_loss_and_fvu():
    dictionary = _dictionary()
    config = TrainConfig(d_sae=64, steps=200, architecture="relu", l1_coefficient=0.3, batch_size=256, lr=1e-2,
                         log_every=50, progress=False)
    params, log = train_sae(_stream(3, dictionary), config, d_model=D_MODEL)
    assert log.loss[-1] < 0.3 * log.loss[0]
    quality = measure_quality(params, _sample(np.random.default_rng(4), dictionary, 2000))
    assert quality.fvu < 0.1 and quality.mean_l0 < 32


def test_stream_too_short_is_an_error_not_a_short_run():
    batches = [np.ones((100, D_MODEL), np.float32) + np.arange(D_MODEL)] * 3
    with pytest.raises(InputError, match=r"ran out after 2 steps, expected TrainConfig\.steps=5"):
        train_sae(batches, TrainConfig(d_sae=8, steps=5, k=2, batch_size=128, progress=False), d_model=D_MODEL)
    with pytest.raises(InputError, match=r"training batch 0: shape \(10, 3\)"):
        train_sae([np.ones((10, 3))], TrainConfig(d_sae=8, steps=1, k=2, batch_size=4, progress=False), d_model=D_MODEL)


def test_drop_outlier_tokens_reports_the_count():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, D_MODEL))
    x[[0, 17]] *= 100.0                                  # BOS / attention-sink-like rows
    kept, dropped = drop_outlier_tokens(x, factor=10.0)
    assert dropped == 2 and kept.shape == (48, D_MODEL)
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_array_equal(kept, x[norms <= 10 * np.median(norms)])


def test_geometric_median_minimises_summed_distance():
    x = np.random.default_rng(6).standard_cauchy(size=(200, 3))
    gm = geometric_median(x)
    cost = lambda p: np.linalg.norm(x - p, axis=1).sum()
    for p in (x.mean(axis=0), np.median(x, axis=0), gm + 0.01):
        assert cost(gm) <= cost(p) + 1e-9


def test_bad_config():
    with pytest.raises(InputError, match=r"TrainConfig\.k=100, expected 1\.\.d_sae=64"):
        TrainConfig(d_sae=64, steps=1, k=100)
