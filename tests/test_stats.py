"""Stats: Wilson vs published values and scipy's own Wilson, bootstrap and rank CIs, paired tests, AUC, fit tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import InputError
from harness.stats import (
    Accuracy, bootstrap_ci, kendall_tau, mcnemar_exact, paired_permutation_test, paired_test, pick_distribution_test,
    roc_auc, spearman_rho, wilson,
)


def test_wilson_matches_published_value():
    lo, hi = wilson(8, 10)  # the textbook example: 8 of 10 at 95%
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_matches_scipy_binomtest(kn, confidence):
    k, n = kn
    if n == 0:
        assert wilson(k, n, confidence) == (0.0, 1.0)
        return
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    np.testing.assert_allclose(wilson(k, n, confidence), (ci.low, ci.high), atol=1e-12)


def test_wilson_narrows_with_n_and_rejects_bad_input():
    widths = [np.subtract(*wilson(0.3 * n, n)[::-1]) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2] > 0
    for bad in ((11, 10), (-1, 10), (1, 10, 1.5)):
        with pytest.raises(InputError):
            wilson(*bad)


def test_accuracy_from_fractional_credit():
    credit = np.array([1, 0, 0.25, 0.5, 1, 1, 0, 1 / 3])
    acc = Accuracy.from_credit(credit)
    assert acc.k == pytest.approx(credit.sum()) and acc.n == 8 and acc.value == pytest.approx(credit.mean())
    assert (acc.lo, acc.hi) == wilson(credit.sum(), 8)
    with pytest.raises(InputError):
        Accuracy.from_credit([0.5, 1.5])


def test_fractional_credit_interval_is_conservative_by_simulation():
    # 400 questions each worth 0.25 or 1 credit: the Wilson interval on summed credit should cover the true mean
    # at least as often as the nominal 95% (light simulation: 300 draws).
    rng = np.random.default_rng(0)
    values, probs = np.array([0.0, 0.25, 1.0]), np.array([0.5, 0.3, 0.2])
    truth = float(values @ probs)
    covered = 0
    for _ in range(300):
        credit = rng.choice(values, size=400, p=probs)
        acc = Accuracy.from_credit(credit)
        covered += acc.lo <= truth <= acc.hi
    assert covered / 300 >= 0.95


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(1).normal(loc=2.0, size=200)
    a = bootstrap_ci(np.mean, x, seed=7, n_resamples=500)
    b = bootstrap_ci(np.mean, x, seed=7, n_resamples=500)
    assert a == b and a.lo < x.mean() < a.hi
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert a.hi - a.lo == pytest.approx(2 * 1.96 * se, rel=0.25)  # close to the normal-theory width


def test_rank_correlations_match_scipy_and_have_sensible_cis():
    rng = np.random.default_rng(2)
    x = rng.normal(size=80)
    y = x + rng.normal(scale=0.5, size=80)
    tau, rho = kendall_tau(x, y, seed=0, n_resamples=300), spearman_rho(x, y, seed=0, n_resamples=300)
    assert tau.value == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert rho.value == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert 0 < tau.lo < tau.value < tau.hi <= 1 and 0 < rho.lo < rho.value < rho.hi <= 1
    unrelated = kendall_tau(x, rng.normal(size=80), seed=0, n_resamples=300)
    assert unrelated.lo < 0 < unrelated.hi


def test_mcnemar_exact_matches_binomial_closed_form():
    a = np.array([1] * 10 + [1] * 5 + [0] * 5)
    b = np.array([0] * 10 + [1] * 5 + [0] * 5)  # 10 discordant pairs, all favouring a
    res = mcnemar_exact(a, b)
    assert res.n_discordant == 10 and res.pvalue == pytest.approx(2 * 0.5**10)
    assert res.difference == pytest.approx(10 / 20)
    assert mcnemar_exact(a, a).pvalue == 1.0
    with pytest.raises(InputError):
        mcnemar_exact([0.5, 1], [0, 1])


def test_paired_permutation_test_matches_exhaustive_sign_flips():
    a = np.array([1.0, 0.25, 0.5, 1.0, 0.0, 1.0, 0.75, 1.0])
    b = np.array([0.0, 0.25, 0.0, 0.5, 0.5, 0.0, 0.25, 0.0])
    d = a - b
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    null = np.abs((flips * d).mean(axis=1))
    exact = np.mean(null >= abs(d.mean()) - 1e-12)
    res = paired_permutation_test(a, b, seed=0)
    assert res.pvalue == pytest.approx(exact)
    assert paired_test(a, b, seed=0).method == "permutation"
    assert paired_test((a > 0.5).astype(float), (b > 0.5).astype(float), seed=0).method == "mcnemar-exact"


def test_pick_distribution_test_against_hand_statistic():
    picks = np.array([10.0, 20, 233, 37])  # the letter-C habit of a small model
    key = np.array([3222.0, 3462, 3582, 3776])
    expected = key / key.sum() * picks.sum()
    res = pick_distribution_test(picks, key)
    assert res.statistic == pytest.approx(np.sum((picks - expected) ** 2 / expected))
    assert res.pvalue == pytest.approx(scipy.stats.chi2.sf(res.statistic, 3)) and res.pvalue < 1e-10
    g = pick_distribution_test(picks, key, method="log-likelihood")
    assert g.statistic == pytest.approx(2 * np.sum(picks * np.log(picks / expected)))
    fair = pick_distribution_test(np.round(expected), key)
    assert fair.pvalue > 0.5


@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_roc_auc_matches_pairwise_count(pairs):
    s = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs])
    if y.all() or not y.any():
        with pytest.raises(InputError):
            roc_auc(s, y)
        return
    wins = [(p > n) + 0.5 * (p == n) for p in s[y] for n in s[~y]]
    assert roc_auc(s, y) == pytest.approx(np.mean(wins))
