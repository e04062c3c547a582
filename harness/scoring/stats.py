"""Statistics for accuracies and rankings: Wilson intervals, seeded bootstrap CIs, rank correlations, paired tests.

Every interval is two-sided at `confidence`; every resampling takes an explicit seed so figures are reproducible.
Axis convention: a 1-D array is indexed by question (item); paired arrays are aligned on the same questions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import scipy.stats

from harness.errors import InputError

N_RESAMPLES = 2000


def _as_1d(name: str, values) -> np.ndarray:
    """A finite float 1-D array, or InputError naming the argument."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array over questions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: expected finite values, got {int(np.sum(~np.isfinite(arr)))} non-finite")
    return arr


def wilson(k: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (k may be fractional: a sum of per-question credits).

    For n == 0 the interval is (0, 1): no data, no information.
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence: expected a value in (0, 1), got {confidence}")
    if n < 0 or not 0 <= k <= n:
        raise InputError(f"wilson: expected 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = scipy.stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # k = 0 and k = n give exactly 0 and 1 in exact arithmetic; float rounding leaves ~1e-17 (issue 13 item 4)
    lo = 0.0 if k == 0 else min(1.0, max(0.0, centre - half))
    hi = 1.0 if k == n else min(1.0, max(0.0, centre + half))
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accuracy:
    """An accuracy with its Wilson interval: value = k / n, k = summed credit (may be fractional), [lo, hi].

    Fractional credit (1/t for a t-way tie holding the answer) goes into Wilson as k = sum of credits. Credit
    in [0, 1] with mean p has variance <= p(1 - p), the Bernoulli variance, so treating k as a binomial count
    gives an interval at least as wide as needed (conservative).
    """

    value: float
    k: float
    n: int
    lo: float
    hi: float

    @classmethod
    def from_credit(cls, credit, confidence: float = 0.95) -> "Accuracy":
        """From a per-question credit vector with entries in [0, 1]."""
        c = _as_1d("credit", credit)
        if c.size and (c.min() < 0 or c.max() > 1):
            raise InputError(f"credit: expected values in [0, 1], got range [{c.min()}, {c.max()}]")
        k, n = float(c.sum()), int(c.size)
        lo, hi = wilson(min(k, n), n, confidence)
        return cls(value=k / n if n else float("nan"), k=k, n=n, lo=lo, hi=hi)

    def as_dict(self, digits: int = 4) -> dict:
        """{value, n, ci} rounded for reports and Measurement.details (the one way an accuracy is written down)."""
        return {"value": round(self.value, digits), "n": self.n, "ci": [round(self.lo, digits), round(self.hi, digits)]}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interval:
    """A point estimate with a two-sided confidence interval [lo, hi] (and a p-value where one applies)."""

    value: float
    lo: float
    hi: float
    pvalue: float = float("nan")


def bootstrap_ci(statistic: Callable[..., float], *samples, seed: int, n_resamples: int = N_RESAMPLES,
                 confidence: float = 0.95, method: str = "percentile") -> Interval:
    """Seeded paired bootstrap CI of statistic(*samples) over items (all samples resampled with the same indices)."""
    arrays = [_as_1d(f"sample {i}", s) for i, s in enumerate(samples)]
    if len({a.size for a in arrays}) != 1:
        raise InputError(f"bootstrap_ci: paired samples must have equal length, got {[a.size for a in arrays]}")
    if arrays[0].size < 2:
        raise InputError(f"bootstrap_ci: expected at least 2 items, got {arrays[0].size}")
    result = scipy.stats.bootstrap(tuple(arrays), statistic, paired=True, vectorized=False, n_resamples=n_resamples,
                                   confidence_level=confidence, method=method, rng=np.random.default_rng(seed))
    return Interval(value=float(statistic(*arrays)), lo=float(result.confidence_interval.low),
                    hi=float(result.confidence_interval.high))


def _kendall(x, y) -> float:
    return scipy.stats.kendalltau(x, y).statistic


def _spearman(x, y) -> float:
    return scipy.stats.spearmanr(x, y).statistic


def kendall_tau(x, y, *, seed: int, n_resamples: int = N_RESAMPLES, confidence: float = 0.95) -> Interval:
    """Kendall's τ-b of two rankings of the same items, its p-value, and a seeded bootstrap CI over items."""
    ci = bootstrap_ci(_kendall, x, y, seed=seed, n_resamples=n_resamples, confidence=confidence)
    res = scipy.stats.kendalltau(np.asarray(x, float), np.asarray(y, float))
    return Interval(value=float(res.statistic), lo=ci.lo, hi=ci.hi, pvalue=float(res.pvalue))


def spearman_rho(x, y, *, seed: int, n_resamples: int = N_RESAMPLES, confidence: float = 0.95) -> Interval:
    """Spearman's ρ of two rankings of the same items, its p-value, and a seeded bootstrap CI over items."""
    ci = bootstrap_ci(_spearman, x, y, seed=seed, n_resamples=n_resamples, confidence=confidence)
    res = scipy.stats.spearmanr(np.asarray(x, float), np.asarray(y, float))
    return Interval(value=float(res.statistic), lo=ci.lo, hi=ci.hi, pvalue=float(res.pvalue))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedTest:
    """A paired comparison of two credit vectors on the same questions: mean difference a - b and a p-value.

    method is "mcnemar-exact" (binary credit: binomial test on the discordant pairs) or "permutation"
    (fractional credit: random sign flips of the per-question differences).
    """

    method: str
    difference: float
    pvalue: float
    n: int
    n_discordant: int


def mcnemar_exact(a_correct, b_correct) -> PairedTest:
    """Exact McNemar test: of the questions where exactly one format is right, is 'a right' a fair coin?"""
    a, b = _as_1d("a_correct", a_correct), _as_1d("b_correct", b_correct)
    if a.size != b.size:
        raise InputError(f"mcnemar_exact: a and b must cover the same questions, got {a.size} and {b.size}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise InputError("mcnemar_exact: expected 0/1 credit; use paired_permutation_test for fractional credit")
    only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    n_disc = only_a + only_b
    p = 1.0 if n_disc == 0 else float(scipy.stats.binomtest(only_a, n_disc, 0.5).pvalue)
    return PairedTest(method="mcnemar-exact", difference=float(np.mean(a - b)), pvalue=p, n=a.size, n_discordant=n_disc)


def paired_permutation_test(a_credit, b_credit, *, seed: int, n_resamples: int = 9999) -> PairedTest:
    """Two-sided paired permutation test of mean(a - b) = 0 (swaps a and b within questions; exact when small)."""
    a, b = _as_1d("a_credit", a_credit), _as_1d("b_credit", b_credit)
    if a.size != b.size:
        raise InputError(f"paired_permutation_test: a and b must cover the same questions, got {a.size} and {b.size}")
    d = a - b
    n_disc = int(np.sum(d != 0))
    if n_disc == 0:
        p = 1.0
    else:
        res = scipy.stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                           vectorized=True, n_resamples=n_resamples, alternative="two-sided",
                                           rng=np.random.default_rng(seed))
        p = float(res.pvalue)
    return PairedTest(method="permutation", difference=float(d.mean()), pvalue=p, n=a.size, n_discordant=n_disc)


def paired_test(a_credit, b_credit, *, seed: int) -> PairedTest:
    """McNemar exact when both credit vectors are 0/1, else the paired permutation test."""
    a, b = _as_1d("a_credit", a_credit), _as_1d("b_credit", b_credit)
    if np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all():
        return mcnemar_exact(a, b)
    return paired_permutation_test(a, b, seed=seed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GoodnessOfFit:
    """Observed pick counts per option vs the counts the answer key predicts; statistic, p-value, dof."""

    observed: tuple[float, ...]
    expected: tuple[float, ...]
    statistic: float
    pvalue: float
    dof: int
    method: str


def pick_distribution_test(pick_counts, key_counts, *, method: str = "pearson") -> GoodnessOfFit:
    """Chi-square ("pearson") or G ("log-likelihood") test: are the picks spread like the answer key?

    Expected counts = the key's proportions scaled to the number of picks; an option the key never uses
    but the model picks makes the statistic infinite (p = 0), which is the right verdict.
    """
    if method not in ("pearson", "log-likelihood"):
        raise InputError(f"method: expected 'pearson' or 'log-likelihood', got {method!r}")
    obs, key = _as_1d("pick_counts", pick_counts), _as_1d("key_counts", key_counts)
    if obs.size != key.size or obs.size < 2:
        raise InputError(f"pick_distribution_test: expected equal-length counts over >= 2 options, got {obs.size} and {key.size}")
    if (obs < 0).any() or (key < 0).any() or key.sum() == 0:
        raise InputError("pick_distribution_test: counts must be >= 0 and the key must hold at least one answer")
    expected = key / key.sum() * obs.sum()
    keep = expected > 0
    if np.any(obs[~keep] > 0):
        stat, p = float("inf"), 0.0
    else:
        res = scipy.stats.power_divergence(obs[keep], expected[keep], lambda_=method)
        stat, p = float(res.statistic), float(res.pvalue)
    return GoodnessOfFit(observed=tuple(obs.tolist()), expected=tuple(expected.tolist()), statistic=stat, pvalue=p,
                         dof=int(keep.sum()) - 1, method=method)


# ------------------------------------------------------------------------------------------- resampling questions


def resample_weights(n: int, *, seed: int, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """Bootstrap weights [resample, item]: how often each of n items is drawn in each resample (counts sum to n).

    A weighted mean `weights @ x / n` is the mean of a resample, so every candidate's accuracy over resampled
    questions is one matrix product (questions, not candidates, are the sampled unit).
    """
    if n < 2:
        raise InputError(f"resample_weights: expected at least 2 items, got {n}")
    if n_resamples < 1:
        raise InputError(f"resample_weights: expected n_resamples >= 1, got {n_resamples}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def percentile_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap replicates (non-finite replicates are an error, not dropped)."""
    v = _as_1d("bootstrap replicates", values)
    if v.size == 0:
        raise InputError("percentile_ci: no bootstrap replicates")
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(v, [tail, 1 - tail])
    return float(lo), float(hi)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise InputError(f"confidence: expected a value in (0, 1), got {confidence}")
    return float(scipy.stats.norm.ppf(0.5 + confidence / 2))


def min_detectable_effect(*, sd: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """Smallest true effect a two-sided test at `confidence` detects with probability `power` from n items.

    Normal approximation: (z_{1-alpha/2} + z_power) * sd / sqrt(n), sd the per-item standard deviation of the effect.
    """
    if n < 1 or not sd >= 0 or not 0 < power < 1:
        raise InputError(f"min_detectable_effect: expected n >= 1, sd >= 0, 0 < power < 1, got n={n}, sd={sd}, power={power}")
    return float((_z(confidence) + scipy.stats.norm.ppf(power)) * sd / math.sqrt(n))


def n_needed(effect: float, *, sd: float, confidence: float = 0.95, power: float = 0.8) -> float:
    """Items needed for a true `effect` to be detected with probability `power` (normal approximation; inf at 0).

    power = 0.5 gives the n at which an interval centred on `effect` just excludes 0 ("would become conclusive").
    """
    if not sd >= 0 or not 0 < power < 1 or not math.isfinite(effect):
        raise InputError(f"n_needed: expected finite effect, sd >= 0, 0 < power < 1, got {effect}, {sd}, {power}")
    if effect == 0:
        return float("inf")
    return float(max(1, math.ceil(((_z(confidence) + scipy.stats.norm.ppf(power)) * sd / abs(effect)) ** 2)))


def power_analysis(effect: float, ci: tuple[float, float], n: int, *, boundary: float = 0.0, confidence: float = 0.95,
                   power: float = 0.8) -> dict:
    """details["power"] of a comparative figure: n, effect, ci, the minimum detectable effect at this n, and the n at
    which the observed effect would make the interval exclude `boundary`.

    Normal approximation: se = CI width / (2 z), per-item sd = se * sqrt(n); so it is as good as the CI is symmetric.
    """
    lo, hi = (float(x) for x in ci)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and n >= 1 and math.isfinite(effect)):
        raise InputError(f"power_analysis: expected a finite effect and interval lo <= hi and n >= 1, got {effect}, {ci}, {n}")
    se = (hi - lo) / (2 * _z(confidence))
    sd = se * math.sqrt(n)
    return {"n": int(n), "effect": float(effect), "ci": [lo, hi], "boundary": float(boundary),
            "mde": min_detectable_effect(sd=sd, n=n, confidence=confidence, power=power), "power": power,
            "n_for_conclusive": n_needed(effect - boundary, sd=sd, confidence=confidence, power=0.5),
            "n_for_power": n_needed(effect - boundary, sd=sd, confidence=confidence, power=power),
            "method": "normal approximation, se = CI width / (2 z)"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankCorrelation:
    """Kendall tau-b and Spearman rho of candidates' accuracies in two settings, CIs from resampling questions.

    n_questions: questions resampled; n_candidates: items ranked; n_undefined: resamples where a ranking was constant
    (tau undefined), counted and left out of the percentile interval.
    """

    kendall: Interval
    spearman: Interval
    n_questions: int
    n_candidates: int
    n_resamples: int
    n_undefined: int
    resampled: str


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho per row of two [resample, item] arrays (midranks, then Pearson); NaN where a row is constant."""
    rx, ry = scipy.stats.rankdata(x, axis=1), scipy.stats.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def rank_correlation_over_questions(credit_a, credit_b, *, seed: int, n_resamples: int = 1000,
                                    confidence: float = 0.95, resample_candidates: bool = False) -> RankCorrelation:
    """Do two settings rank the same candidates alike? credit_a/b [question, candidate] on the same questions.

    A setting may be a tuple of credit arrays: its accuracy is then the larger of theirs per candidate (the original's
    "better of argmax/argmin"). Each resample draws questions with replacement and recomputes every candidate's
    accuracy in both settings, so question-sampling noise is in the CI (optionally candidates are resampled too).
    p-values are scipy's (they treat the accuracies as fixed).
    """
    parts_a = [np.asarray(c, np.float64) for c in (credit_a if isinstance(credit_a, tuple) else (credit_a,))]
    parts_b = [np.asarray(c, np.float64) for c in (credit_b if isinstance(credit_b, tuple) else (credit_b,))]
    a = parts_a[0]
    shapes = {p.shape for p in parts_a + parts_b}
    if a.ndim != 2 or len(shapes) != 1 or a.shape[1] < 3 or a.shape[0] < 2:
        raise InputError(f"rank correlation: expected equal [question >= 2, candidate >= 3] arrays, got {sorted(shapes)}")
    if not all(np.all(np.isfinite(p)) for p in parts_a + parts_b):
        raise InputError("rank correlation: credit must be finite")
    n_q, n_c = a.shape
    w = resample_weights(n_q, seed=seed, n_resamples=n_resamples)
    acc_a = np.max([w @ p / n_q for p in parts_a], axis=0)
    acc_b = np.max([w @ p / n_q for p in parts_b], axis=0)
    if resample_candidates:
        pick = np.random.default_rng([seed, 1]).integers(0, n_c, size=(n_resamples, n_c))
        acc_a, acc_b = np.take_along_axis(acc_a, pick, axis=1), np.take_along_axis(acc_b, pick, axis=1)
    taus = np.array([scipy.stats.kendalltau(x, y).statistic if np.ptp(x) > 0 and np.ptp(y) > 0 else np.nan
                     for x, y in zip(acc_a, acc_b)])
    rhos = _spearman_rows(acc_a, acc_b)
    ok = np.isfinite(taus) & np.isfinite(rhos)
    if not ok.any():
        raise InputError("rank correlation: a ranking is constant in every resample (all candidates equally accurate)")
    x, y = np.max([p.mean(axis=0) for p in parts_a], axis=0), np.max([p.mean(axis=0) for p in parts_b], axis=0)
    tau, rho = scipy.stats.kendalltau(x, y), scipy.stats.spearmanr(x, y)
    k_lo, k_hi = percentile_ci(taus[ok], confidence)
    s_lo, s_hi = percentile_ci(rhos[ok], confidence)
    return RankCorrelation(
        kendall=Interval(value=float(tau.statistic), lo=k_lo, hi=k_hi, pvalue=float(tau.pvalue)),
        spearman=Interval(value=float(rho.statistic), lo=s_lo, hi=s_hi, pvalue=float(rho.pvalue)),
        n_questions=n_q, n_candidates=n_c, n_resamples=n_resamples, n_undefined=int((~ok).sum()),
        resampled="questions and candidates" if resample_candidates else "questions")


def paired_difference(a_credit, b_credit, *, seed: int, n_resamples: int = N_RESAMPLES,
                      confidence: float = 0.95) -> tuple[Interval, PairedTest]:
    """Mean(a - b) over the same questions: a percentile CI from resampling questions, and the paired test's p."""
    a, b = _as_1d("a_credit", a_credit), _as_1d("b_credit", b_credit)
    if a.size != b.size:
        raise InputError(f"paired_difference: a and b must cover the same questions, got {a.size} and {b.size}")
    d = a - b
    reps = resample_weights(d.size, seed=seed, n_resamples=n_resamples) @ d / d.size
    lo, hi = percentile_ci(reps, confidence)
    test = paired_test(a, b, seed=seed)
    return Interval(value=float(d.mean()), lo=lo, hi=hi, pvalue=test.pvalue), test
