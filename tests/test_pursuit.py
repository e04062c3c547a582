"""Gradient pursuit recovers a sparse combination of near-orthogonal dictionary rows; its residual never grows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import InputError
from harness.sae.pursuit import gradient_pursuit


def dictionary(n_atoms: int, d: int, seed: int) -> np.ndarray:
    """Random unit rows in high dimension: near-orthogonal (|cos| ~ 1/sqrt(d)), like SAE decoder rows."""
    D = np.random.default_rng(seed).normal(size=(n_atoms, d))
    return D / np.linalg.norm(D, axis=1, keepdims=True)


@pytest.mark.parametrize("select", ["max", "abs"])
def test_recovers_support_and_weights_of_a_sparse_combination(select):
    D = dictionary(400, 256, seed=0)
    rng = np.random.default_rng(1)
    support = rng.choice(400, size=5, replace=False)
    weights = rng.uniform(1.0, 3.0, size=5)
    x = weights @ D[support]
    res = gradient_pursuit(x, D, k=16, select=select)
    assert set(res.top(5)) == set(support.tolist())
    np.testing.assert_allclose(res.weights[support], weights, rtol=0.05)
    off = np.delete(res.weights, support)
    assert np.abs(off).max() < 0.1 * weights.min()
    assert res.residual_norms[-1] < 0.05 * np.linalg.norm(x)
    # independent check: least squares on the found support gives the same weights
    lstsq = np.linalg.lstsq(D[support].T, x, rcond=None)[0]
    np.testing.assert_allclose(res.weights[support], lstsq, rtol=0.05)


def test_abs_selection_finds_negative_weights_that_max_selection_cannot_pick_first():
    D = dictionary(300, 128, seed=2)
    x = -2.0 * D[7] + 1.0 * D[11]
    assert gradient_pursuit(x, D, k=1, select="abs").support == (7,)
    assert gradient_pursuit(x, D, k=1, select="max").support != (7,)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.sampled_from(["max", "abs"]))
def test_residual_norm_is_non_increasing(seed, k, select):
    D = dictionary(64, 32, seed=seed)
    x = np.random.default_rng(seed + 1).normal(size=32)
    res = gradient_pursuit(x, D, k=k, select=select)
    norms = np.array(res.residual_norms)
    assert len(norms) == k + 1 and norms[0] == pytest.approx(np.linalg.norm(x))
    assert np.all(np.diff(norms) <= 1e-9 * norms[0])
    assert len(res.support) <= k and np.count_nonzero(res.weights) <= len(res.support)


def test_nonnegative_clip_keeps_weights_nonnegative():
    D = dictionary(200, 64, seed=3)
    x = 2.0 * D[1] - 1.5 * D[2] + D[3]
    res = gradient_pursuit(x, D, k=8, nonnegative=True)
    assert (res.weights >= 0).all() and res.weights[1] > 1.0


def test_bad_shapes_raise():
    with pytest.raises(InputError):
        gradient_pursuit(np.zeros(5), np.zeros((3, 4)), k=2)
    with pytest.raises(InputError):
        gradient_pursuit(np.zeros(4), np.zeros((3, 4)), k=0)


def test_blocks_of_the_dictionary_change_nothing(monkeypatch):
    """D r is taken a block of rows at a time (a 49,152-atom decoder is never widened to float64 whole): tiny blocks
    give the same support and, to float64 rounding, the same weights as one block."""
    import harness.sae.pursuit as pursuit

    D = dictionary(300, 64, seed=5).astype(np.float32)
    x = np.random.default_rng(6).normal(size=64)
    one = gradient_pursuit(x, D, k=12)
    monkeypatch.setattr(pursuit, "BLOCK_CELLS", 64 * 7)  # 7 atoms per block
    blocked = gradient_pursuit(x, D, k=12)
    assert blocked.support == one.support
    np.testing.assert_allclose(blocked.weights, one.weights, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(blocked.residual_norms, one.residual_norms, rtol=1e-12)
