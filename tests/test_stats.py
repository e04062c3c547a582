"""Stats: Wilson vs published values and scipy's own Wilson, bootstrap and rank CIs, paired tests, AUC, fit tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import InputError
from harness.scoring.stats import (
    Accuracy,
    bootstrap_ci,
    kendall_tau,
    mcnemar_exact,
    min_detectable_effect,
    n_needed,
    paired_difference,
    paired_permutation_test,
    paired_test,
    percentile_ci,
    pick_distribution_test,
    power_analysis,
    rank_correlation_over_questions,
    resample_weights,
    spearman_rho,
    wilson,
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





@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99]))
def test_wilson_is_clamped_to_the_unit_interval_exactly(kn, confidence):
    k, n = kn
    lo, hi = wilson(k, n, confidence)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if k == 0:
        assert lo == 0.0  # was ~2.8e-17 for n = 7, 9, 12, 14, ... (issue 13 item 4)
    if k == n:
        assert hi == 1.0


def test_wilson_zero_successes_is_exactly_zero_where_it_used_to_round_above():
    assert [wilson(0, n)[0] for n in (7, 9, 12, 14)] == [0.0] * 4
    assert [wilson(n, n)[1] for n in (7, 9, 12, 14)] == [1.0] * 4


def test_resample_weights_are_seeded_counts_of_n():
    w = resample_weights(50, seed=3, n_resamples=200)
    assert w.shape == (200, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, resample_weights(50, seed=3, n_resamples=200))
    assert abs(w.mean() - 1.0) < 1e-12
    with pytest.raises(InputError):
        resample_weights(1, seed=0)


def test_min_detectable_effect_has_its_stated_power_by_simulation():
    # paired per-question differences with sd 1: at the MDE a two-sided 95% test rejects ~80% of the time
    n, sd = 100, 1.0
    mde = min_detectable_effect(sd=sd, n=n)
    assert mde == pytest.approx((1.959964 + 0.841621) / 10, rel=1e-4)
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(1000):
        d = rng.normal(mde, sd, n)
        rejections += abs(d.mean() / (d.std(ddof=1) / np.sqrt(n))) > scipy.stats.norm.ppf(0.975)
    assert 0.75 <= rejections / 1000 <= 0.85
    assert n_needed(mde, sd=sd) == pytest.approx(n, abs=1)
    assert n_needed(0.0, sd=sd) == float("inf")


def test_power_analysis_says_when_an_effect_becomes_conclusive():
    # effect 0.05 with CI [-0.05, 0.15] at n = 100: se = 0.051, conclusive (CI excludes 0) at n ~ 100 * (1.96*0.051/0.05)^2
    p = power_analysis(0.05, (-0.05, 0.15), 100)
    se = 0.2 / (2 * 1.959964)
    assert p["n"] == 100 and p["effect"] == 0.05 and p["ci"] == [-0.05, 0.15]
    assert p["mde"] == pytest.approx((1.959964 + 0.841621) * se, rel=1e-4)
    assert p["n_for_conclusive"] == pytest.approx(np.ceil(100 * (1.959964 * se / 0.05) ** 2), abs=1)
    assert p["n_for_conclusive"] > 100 and p["n_for_power"] > p["n_for_conclusive"]
    with pytest.raises(InputError):
        power_analysis(float("nan"), (0, 1), 10)


def _planted_formats(n_q, n_c, *, agree: bool, seed: int):
    """Credit [question, candidate] of n_c candidates in two formats; true accuracies spread over 0.25..0.75 and the
    same in both formats (agree) or independently shuffled (not)."""
    rng = np.random.default_rng(seed)
    p_a = np.linspace(0.25, 0.75, n_c)
    p_b = p_a if agree else rng.permutation(p_a)
    return (rng.random((n_q, n_c)) < p_a).astype(float), (rng.random((n_q, n_c)) < p_b).astype(float)


def test_planted_ranking_agreement_is_detected_and_a_null_one_is_not():
    a, b = _planted_formats(100, 30, agree=True, seed=0)
    got = rank_correlation_over_questions(a, b, seed=0, n_resamples=400)
    assert got.kendall.lo > 0 and got.spearman.lo > 0 and got.n_questions == 100 and got.n_candidates == 30
    assert got.kendall.value == pytest.approx(scipy.stats.kendalltau(a.mean(0), b.mean(0)).statistic)
    # detected at the stated power: the observed tau exceeds the MDE computed from its own CI
    power = power_analysis(got.kendall.value, (got.kendall.lo, got.kendall.hi), got.n_questions)
    assert got.kendall.value > power["mde"] and power["n_for_conclusive"] < 100
    a0, b0 = _planted_formats(100, 30, agree=False, seed=1)
    null = rank_correlation_over_questions(a0, b0, seed=0, n_resamples=400)
    assert null.kendall.lo < 0 < null.kendall.hi  # a shuffled ranking: no agreement shown


def test_question_resampling_widens_the_interval_that_candidate_resampling_gave():
    # near-chance candidates, truly agreeing: few questions make tau noisy, and the CI must show it
    a, b = _planted_formats(30, 20, agree=True, seed=2)
    q = rank_correlation_over_questions(a * 0.2 + 0.4, b * 0.2 + 0.4, seed=0, n_resamples=300)
    fixed = kendall_tau(a.mean(0), b.mean(0), seed=0, n_resamples=300)  # the old CI: accuracies held fixed
    assert (q.kendall.hi - q.kendall.lo) > (fixed.hi - fixed.lo)


def test_rank_correlation_best_of_two_settings_and_bad_input():
    rng = np.random.default_rng(4)
    a = rng.random((40, 10))
    hi_, lo_ = rng.random((40, 10)), rng.random((40, 10))
    got = rank_correlation_over_questions(a, (hi_, lo_), seed=0, n_resamples=50)
    expected = scipy.stats.kendalltau(a.mean(0), np.maximum(hi_.mean(0), lo_.mean(0))).statistic
    assert got.kendall.value == pytest.approx(expected)
    with pytest.raises(InputError):
        rank_correlation_over_questions(a, a[:, :5], seed=0)
    with pytest.raises(InputError):
        rank_correlation_over_questions(np.full((5, 4), np.nan), np.ones((5, 4)), seed=0)


def test_paired_difference_ci_from_questions_and_the_paired_p():
    rng = np.random.default_rng(5)
    a = (rng.random(300) < 0.6).astype(float)
    b = (rng.random(300) < 0.4).astype(float)
    diff, test = paired_difference(a, b, seed=0, n_resamples=1000)
    assert diff.value == pytest.approx(np.mean(a - b)) and diff.lo < diff.value < diff.hi and diff.lo > 0
    assert test.method == "mcnemar-exact" and diff.pvalue == test.pvalue < 0.01
    se = np.std(a - b, ddof=1) / np.sqrt(300)
    assert diff.hi - diff.lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert percentile_ci(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
