"""Candidate SAE features for the claims and their scores: chosen on a discovery split, measured on the held-out one.

Candidates: (a) top-k features by tie-aware accuracy on the discovery split, (b) gradient pursuit of the
correct-minus-incorrect residual contrast into the decoder rows, (c) fixed controls (seeded random features and,
for Phi-3, the original's). Axis order: resid [question, option, embedding], readings [question, option, feature].
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from harness.errors import InputError
from harness.sae.pursuit import gradient_pursuit
from harness.sae.readings import FeatureScores, feature_readings, reading_chunks, score_features
from harness.sae.sae import SAEParams, check_features
from harness.scoring import scores, stats
from harness.scoring.measurement import Measurement

PURSUIT_K = 16
TOP_K = 16
N_RANDOM_CONTROLS = 3
PHI3_CONTROLS = (42, 9999, 15036)  # the original's comparison features in the Phi-3 saex SAE (49,152 features)
PHI3_FEATURE = 45142
GROUPS = ("top", "pursuit", "control")
NULL_POOL_MAX = 8192  # SAEs up to this width: the null uses every feature; wider ones a seeded sample of NULL_POOL_SIZE
NULL_POOL_SIZE = 4096
N_PERMUTATIONS = 1000
N_BOOTSTRAP = 2000
NULL_QUANTILE = 0.95
CREDIT_UNITS = 12  # tie-aware credits are 0, 1/4, 1/3, 1/2, 1: times 12 they are integers, summed exactly in float32
SCALES = (0.25, 2.0, 64.0)  # powers of two: exact in floating point, so no tie is created or broken
MONOTONE_MAPS = {"arcsinh": np.arcsinh, "x+x^3": lambda x: x + x ** 3, "2x+1": lambda x: 2 * x + 1}


def shared_questions(*qid_lists: Sequence[str]) -> list[np.ndarray]:
    """Index arrays into each list selecting the qids all lists hold, in the first list's order."""
    common = set(qid_lists[0]).intersection(*map(set, qid_lists[1:]))
    order = [q for q in qid_lists[0] if q in common]
    out = []
    for qids in qid_lists:
        pos = {q: i for i, q in enumerate(qids)}
        out.append(np.array([pos[q] for q in order], dtype=np.int64))
    return out


def contrast_vector(resid, answers) -> np.ndarray:
    """Unit vector along mean over questions of resid[correct] − mean of resid[incorrect options] [embedding]."""
    r = np.asarray(resid, dtype=np.float64)
    a = np.asarray(answers)
    if r.ndim != 3 or a.shape != r.shape[:1]:
        raise InputError(f"contrast_vector: expected resid [question, option, embedding] and answers [question], got {r.shape} and {a.shape}")
    correct = np.zeros(r.shape[:2], dtype=bool)
    correct[np.arange(a.size), a] = True
    diff = r[correct].mean(axis=0) - r[~correct].mean(axis=0)
    norm = np.linalg.norm(diff)
    if not norm > 0:
        raise InputError("contrast_vector: correct and incorrect residuals have the same mean (zero contrast)")
    return diff / norm


def pursuit_features(resid, answers, params: SAEParams, *, k: int = PURSUIT_K) -> tuple[int, ...]:
    """The atoms gradient pursuit (k steps, argmax g) picks for the contrast vector, by |weight|, largest first.

    The decoder goes in as the SAE holds it (float32; np.asarray of a CPU jax array is a view, not a copy); an SAE that
    reads a centred residual (``center_input``) gets the contrast of the centred residuals, the space of its rows."""
    if params.center_input:
        resid = np.asarray(resid, dtype=np.float64)
        resid = resid - resid.mean(axis=-1, keepdims=True)
    result = gradient_pursuit(contrast_vector(resid, answers), np.asarray(params.W_dec), k=k, select="max")
    nonzero = [f for f in result.top(len(result.support)) if result.weights[f] != 0]
    return tuple(nonzero)


def control_features(d_sae: int, *, seed: int, n: int = N_RANDOM_CONTROLS, exclude: Sequence[int] = (),
                     fixed: Sequence[int] = ()) -> tuple[int, ...]:
    """`fixed` controls (those < d_sae) followed by n seeded random features not in `exclude` or `fixed`."""
    fixed = tuple(int(f) for f in fixed if f < d_sae)
    taken = set(exclude) | set(fixed)
    pool = np.array([f for f in range(d_sae) if f not in taken])
    if pool.size < n:
        raise InputError(f"control_features: {d_sae} features leave {pool.size} to draw {n} random controls from")
    return fixed + tuple(int(f) for f in np.random.default_rng(seed).choice(pool, size=n, replace=False))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidates:
    """Candidate features by group: top (discovery top-k, best first), pursuit (by |weight|), control."""

    top: tuple[int, ...]
    pursuit: tuple[int, ...]
    control: tuple[int, ...]

    def all(self) -> tuple[int, ...]:
        """Every candidate once, in group order (top, pursuit, control)."""
        return tuple(dict.fromkeys(self.top + self.pursuit + self.control))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Analysis:
    """One reading of one format: every feature scored on the discovery and held-out splits, and the candidates.

    discovery_max is the best-of-all-features discovery accuracy (inflated by selection); read it beside the
    held-out accuracy of the same feature and the null of a best-of-N maximum (`nulls`). The residuals, key and SAE
    are kept (by reference) so the nulls and per-question credits are computed when first asked for. chunk: features
    per reading chunk (None: readings.CHUNK_CELLS decides); any chunk gives the same figures.
    """

    fmt: str
    reading: str
    discovery: FeatureScores
    heldout: FeatureScores
    candidates: Candidates
    discovery_idx: np.ndarray
    heldout_idx: np.ndarray
    seed: int = 0
    tolerance: scores.Tolerance = scores.READING_TIE
    resid: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    answers: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    params: SAEParams | None = dataclasses.field(default=None, repr=False, compare=False)
    identical: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    chunk: int | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def best(self) -> int:
        """The feature chosen on the discovery split (highest tie-aware accuracy there)."""
        return self.candidates.top[0]

    @property
    def discovery_max(self) -> float:
        return float(self.discovery.share[self.best])

    def heldout_accuracy(self, feature: int) -> stats.Accuracy:
        """Tie-aware held-out accuracy of one feature with its Wilson interval."""
        return accuracy_of(self.heldout.share[feature], self.heldout.n)

    def best_control(self) -> int:
        """The control with the highest held-out accuracy (the strictest comparison)."""
        return max(self.candidates.control, key=lambda f: self.heldout.share[f])

    def _need_inputs(self, what: str) -> None:
        if self.resid is None or self.answers is None or self.params is None:
            raise InputError(f"Analysis of {self.fmt}/{self.reading}: {what} needs the residuals; build it with analyse()")

    def credit(self, features: Sequence[int], split: str = "heldout") -> np.ndarray:
        """Tie-aware credit [question, feature] of the given features on one split ("discovery" / "heldout")."""
        self._need_inputs("credit")
        idx = {"discovery": self.discovery_idx, "heldout": self.heldout_idx}[split]
        read = feature_readings(self.resid[idx], self.params, reading=self.reading, features=list(features))
        ident = None if self.identical is None else self.identical[idx]
        return scores.argmax_credit(read, self.answers[idx], tolerance=self.tolerance, identical=ident)

    @functools.cached_property
    def null_pool(self) -> np.ndarray:
        """Features of the nulls: all of them up to NULL_POOL_MAX, else a seeded sample of NULL_POOL_SIZE + the chosen one."""
        self._need_inputs("the null")
        d = self.params.d_sae
        if d <= NULL_POOL_MAX:
            return np.arange(d)
        sample = np.random.default_rng([self.seed, 7]).choice(d, size=NULL_POOL_SIZE, replace=False)
        return np.unique(np.append(sample, self.best))

    @functools.cached_property
    def option_credit12(self) -> np.ndarray:
        """uint8 [question, option, pool feature]: CREDIT_UNITS x the credit of each option were it the answer."""
        self._need_inputs("the null")
        pool = self.null_pool
        out = np.empty((self.answers.size, self.resid.shape[1], pool.size), np.uint8)
        for sl, block in reading_chunks(self.resid, self.params, reading=self.reading, chunk=self.chunk,
                                        features=None if pool.size == self.params.d_sae else pool):
            out[:, :, sl] = np.rint(CREDIT_UNITS * scores.option_credit(block, tolerance=self.tolerance,
                                                                        identical=self.identical))
        return out

    @functools.cached_property
    def nulls(self) -> "C3Nulls":
        """Feature null and permutation null of the discovery-chosen feature's held-out accuracy (computed once)."""
        return c3_nulls(self.option_credit12, self.answers, self.discovery_idx, self.heldout_idx,
                        chosen=int(np.searchsorted(self.null_pool, self.best)), pool=self.null_pool, seed=self.seed)


def accuracy_of(value: float, n: int) -> stats.Accuracy:
    """An Accuracy with its Wilson interval from a mean credit over n questions."""
    k = float(value) * n
    lo, hi = stats.wilson(min(max(k, 0.0), n), n)
    return stats.Accuracy(value=float(value), k=k, n=int(n), lo=lo, hi=hi)


def analyse(resid, answers, params: SAEParams, *, fmt: str, reading: str, seed: int, k: int = TOP_K,
            pursuit_k: int = PURSUIT_K, fixed_controls: Sequence[int] = (), frac: float = 0.5,
            tolerance: scores.Tolerance = scores.READING_TIE, identical=None, chunk: int | None = None) -> Analysis:
    """Score all features on a seeded discovery/held-out split; pick candidates on the discovery split only.

    tolerance: readings within it of a question's maximum tie (float32 noise, scores.READING_TIE); identical: option
    group labels [question, option] (scores.identical_options) so identical option texts always tie. Readings are
    taken `chunk` features at a time (None: readings.CHUNK_CELLS decides), so memory does not grow with d_sae.
    """
    r, a = np.asarray(resid, dtype=np.float32), np.asarray(answers)
    ident = None if identical is None else np.asarray(identical)
    disc, held = scores.split_discovery_heldout(a.size, seed=seed, frac=frac)
    tie = lambda idx: dict(tolerance=tolerance, identical=None if ident is None else ident[idx])  # noqa: E731
    discovery = score_features(r[disc], a[disc], params, reading=reading, chunk=chunk, **tie(disc))
    heldout = score_features(r[held], a[held], params, reading=reading, chunk=chunk, **tie(held))
    top = tuple(int(f) for f in scores.select_top_features(discovery.share, k))
    pursuit = pursuit_features(r[disc], a[disc], params, k=pursuit_k)
    control = control_features(params.d_sae, seed=seed, exclude=top + pursuit, fixed=fixed_controls)
    return Analysis(fmt=fmt, reading=reading, discovery=discovery, heldout=heldout,
                    candidates=Candidates(top=top, pursuit=pursuit, control=control), discovery_idx=disc, heldout_idx=held,
                    seed=seed, tolerance=tolerance, resid=r, answers=a, params=params, identical=ident, chunk=chunk)


# ---------------------------------------------------------------- C3: nulls with the selection inside


def _quantile_summary(values: np.ndarray) -> dict:
    q = np.quantile(values, [0.05, 0.5, 0.95, 0.99])
    return {"n": int(values.size), "mean": float(values.mean()), "q05": float(q[0]), "q50": float(q[1]),
            "q95": float(q[2]), "q99": float(q[3]), "max": float(values.max())}


def _percentile_of(observed: float, null: np.ndarray) -> float:
    """Mid-rank percentile of the observed value in the null (ties count half)."""
    return float(np.mean(null < observed) + 0.5 * np.mean(null == observed))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NullTest:
    """The chosen feature's held-out accuracy against one null distribution of held-out accuracies.

    difference = observed - null 95th percentile; ci from a paired bootstrap over held-out questions in which the
    observed accuracy and every null member are recomputed on the same resampled questions. p_value: share of null
    members >= observed (with the +1 correction); percentile: mid-rank of the observed value in the null.
    """

    name: str
    observed: float
    null_quantile: float
    difference: float
    ci: tuple[float, float]
    p_value: float
    percentile: float
    n: int
    n_null: int
    n_resamples: int
    summary: dict


@dataclasses.dataclass(frozen=True, kw_only=True)
class C3Nulls:
    """Both nulls of one Analysis and the selection shown: the discovery maximum beside best-of-N under shuffled keys."""

    feature_null: NullTest
    permutation_null: NullTest
    discovery_max: float
    discovery_max_null: dict  # best-of-N discovery maximum over shuffled keys (N = n_pool)
    discovery_max_percentile: float
    discovery_max_p: float
    n_pool: int
    pool: str
    chosen: int

    def details(self) -> dict:
        return {"feature_null": dataclasses.asdict(self.feature_null),
                "permutation_null": dataclasses.asdict(self.permutation_null),
                "selection": {"discovery_max": self.discovery_max, "best_of_n": self.n_pool, "pool": self.pool,
                              "null_of_best_of_n_discovery_max": self.discovery_max_null,
                              "discovery_max_percentile": self.discovery_max_percentile,
                              "discovery_max_p": self.discovery_max_p}}


def _null_test(name: str, observed12: np.ndarray, null12: np.ndarray, *, seed: int, n_resamples: int,
               quantile: float, confidence: float = 0.95) -> NullTest:
    """observed12 [question]; null12 [member, question]: CREDIT_UNITS x credit on the same held-out questions.

    Integer credit units keep every accuracy exact, so a null member equal to the observed value compares equal.
    """
    n = observed12.size
    unit = CREDIT_UNITS * n
    obs = float(observed12.sum(dtype=np.int64)) / unit
    null = null12.sum(axis=1, dtype=np.int64) / unit
    w = stats.resample_weights(n, seed=seed, n_resamples=n_resamples).astype(np.float32)
    diffs = np.empty(n_resamples)
    step = max(1, (1 << 23) // max(1, null12.shape[0]))
    nc = null12.astype(np.float32)
    for start in range(0, n_resamples, step):
        wb = w[start:start + step]
        null_b = wb @ nc.T / unit  # [resample, member]
        diffs[start:start + step] = wb @ observed12.astype(np.float32) / unit - np.quantile(null_b, quantile, axis=1)
    q = float(np.quantile(null, quantile))
    return NullTest(name=name, observed=obs, null_quantile=q, difference=obs - q,
                    ci=stats.percentile_ci(diffs, confidence), p_value=float((1 + np.sum(null >= obs)) / (1 + null.size)),
                    percentile=_percentile_of(obs, null), n=n, n_null=int(null.size), n_resamples=n_resamples,
                    summary=_quantile_summary(null))


def _shuffled_keys(key: np.ndarray, n_permutations: int, rng) -> np.ndarray:
    """[permutation, question]: the key permuted across questions (its letter counts kept)."""
    return np.stack([rng.permutation(key) for _ in range(n_permutations)])


def _best_under_keys(credit12: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best summed credit12 [perm], its feature [perm]) under each key [perm, question]: one-hot keys @ credit,
    in blocks of keys and features (float32 sums of integers < 2^24 are exact); ties go to the lowest feature."""
    n_q, n_opt, n_f = credit12.shape
    flat = credit12.reshape(n_q * n_opt, n_f)
    f_step = max(1, (1 << 24) // max(1, n_q * n_opt))
    best = np.full(keys.shape[0], -1.0, np.float32)
    arg = np.zeros(keys.shape[0], np.int64)
    for start in range(0, keys.shape[0], 128):
        k = keys[start:start + 128]
        onehot = np.zeros((k.shape[0], n_q * n_opt), np.float32)
        onehot[np.arange(k.shape[0])[:, None], np.arange(n_q)[None, :] * n_opt + k] = 1.0
        for f0 in range(0, n_f, f_step):
            sums = onehot @ flat[:, f0:f0 + f_step].astype(np.float32)
            i = np.argmax(sums, axis=1)
            v = sums[np.arange(k.shape[0]), i]
            better = v > best[start:start + k.shape[0]]
            best[start:start + k.shape[0]][better] = v[better]
            arg[start:start + k.shape[0]][better] = f0 + i[better]
    return best, arg


def c3_nulls(credit12, answers, discovery_idx, heldout_idx, *, chosen: int, pool=None, seed: int,
             n_permutations: int = N_PERMUTATIONS, n_resamples: int = N_BOOTSTRAP, quantile: float = NULL_QUANTILE
             ) -> C3Nulls:
    """The two C3 nulls of the discovery-chosen feature (column `chosen` of credit12 [question, option, feature]).

    Feature null: the held-out accuracies of every other feature of the pool, same questions, same key.
    Permutation null: the key shuffled within each half; on each shuffle the discovery choice is re-run over the
    whole pool (best tie-aware discovery accuracy) and that feature's held-out accuracy recorded, so the selection
    is inside the null; its discovery maxima are the null of a best-of-N maximum. Pure numpy: no model forwards.
    """
    c = np.asarray(credit12)
    a = np.asarray(answers)
    disc, held = np.asarray(discovery_idx), np.asarray(heldout_idx)
    if c.ndim != 3 or c.shape[0] != a.size or not 0 <= chosen < c.shape[2]:
        raise InputError(f"c3_nulls: expected credit12 [question={a.size}, option, feature] and 0 <= chosen < {c.shape[-1]}, got {c.shape}, {chosen}")
    if c.shape[2] < 20:
        raise InputError(f"c3_nulls: a null needs many features, got {c.shape[2]}")
    n_pool = c.shape[2]
    c_disc, c_held = c[disc], c[held]
    observed = c_held[np.arange(held.size), a[held], chosen]
    others = np.delete(np.arange(n_pool), chosen)
    held_true = c_held[np.arange(held.size), a[held]][:, others].T  # [feature, question], credit units
    feature = _null_test(f"held-out accuracies of the {others.size} other features", observed, held_true,
                         seed=seed, n_resamples=n_resamples, quantile=quantile)
    rng = np.random.default_rng([seed, 11])
    keys_disc = _shuffled_keys(a[disc], n_permutations, rng)
    keys_held = _shuffled_keys(a[held], n_permutations, rng)
    best_sums, picked = _best_under_keys(c_disc, keys_disc)
    disc_max_null = best_sums.astype(np.float64) / (CREDIT_UNITS * disc.size)
    perm_credit = c_held[np.arange(held.size)[None, :], keys_held, picked[:, None]]  # [perm, question], credit units
    perm = _null_test(f"held-out accuracy of the discovery-best of {n_pool} features, answer key shuffled "
                      f"({n_permutations} permutations)", observed, perm_credit, seed=seed + 1, n_resamples=n_resamples,
                      quantile=quantile)
    disc_obs = float(c_disc[np.arange(disc.size), a[disc]].sum(axis=0, dtype=np.int64).max()) / (CREDIT_UNITS * disc.size)
    return C3Nulls(feature_null=feature, permutation_null=perm, discovery_max=disc_obs,
                   discovery_max_null=_quantile_summary(disc_max_null),
                   discovery_max_percentile=_percentile_of(disc_obs, disc_max_null),
                   discovery_max_p=float((1 + np.sum(disc_max_null >= disc_obs)) / (1 + n_permutations)),
                   n_pool=n_pool, pool="all features" if pool is None or np.array_equal(pool, np.arange(n_pool))
                   else f"seeded sample of {n_pool} features", chosen=int(chosen if pool is None else pool[chosen]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class OriginalReading:
    """One feature read as the original did (decoder projection, tie-to-first, better of argmax/argmin) and soundly."""

    feature: int
    n: int
    original: float  # max(argmax, argmin) accuracy, ties to the first option
    auc: float
    share: float  # tie-aware argmax accuracy of the same reading
    argmin_share: float
    encoder_share: float  # tie-aware argmax accuracy of the SAE's own activation
    preact_share: float


def read_feature(resid, answers, params: SAEParams, feature: int) -> OriginalReading:
    """The original's figures for one feature and the sound readings beside them."""
    f = int(check_features(params, [feature])[0])
    a = np.asarray(answers)
    dec = feature_readings(resid, params, reading="decoder", features=[f])
    enc = feature_readings(resid, params, reading="encoder", features=[f])
    pre = feature_readings(resid, params, reading="preact", features=[f])
    return OriginalReading(
        feature=f, n=int(a.size),
        original=float(scores.better_of_argmax_argmin(dec, a, ties="first")[0]),
        auc=float(scores.option_auc(dec, a)[0]),
        share=float(scores.argmax_accuracy(dec, a)[0]),
        argmin_share=float(scores.argmin_accuracy(dec, a)[0]),
        encoder_share=float(scores.argmax_accuracy(enc, a)[0]),
        preact_share=float(scores.argmax_accuracy(pre, a)[0]),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Invariance:
    """C1 on real readings: the largest change of any feature's accuracy under rescaling / increasing maps,
    and the largest change of its log-prob reading (mean log-softmax of the correct option) under rescaling."""

    max_accuracy_change: float
    max_logprob_change: float
    transforms: tuple[str, ...]
    n: int
    n_features: int


def invariance(readings, answers) -> Invariance:
    """Apply c·a (c in SCALES) and the MONOTONE_MAPS to readings [question, option, feature] (in float64)."""
    s = np.asarray(readings, dtype=np.float64)
    a = np.asarray(answers)
    base = {t: scores.argmax_accuracy(s, a, ties=t) for t in scores.TIES}
    base_lp = scores.correct_logprob(s, a)
    d_acc, d_lp, names = 0.0, 0.0, []
    transforms = [(f"{c:g}·a", (lambda x, c=c: c * x), True) for c in SCALES]
    transforms += [(name, fn, False) for name, fn in MONOTONE_MAPS.items()]
    for name, fn, is_scale in transforms:
        t = fn(s)
        for ties in scores.TIES:
            d_acc = max(d_acc, float(np.max(np.abs(scores.argmax_accuracy(t, a, ties=ties) - base[ties]))))
        if is_scale:
            d_lp = max(d_lp, float(np.max(np.abs(scores.correct_logprob(t, a) - base_lp))))
        names.append(name)
    return Invariance(max_accuracy_change=d_acc, max_logprob_change=d_lp, transforms=tuple(names), n=int(a.size),
                      n_features=int(s.shape[2]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankAgreement:
    """Kendall τ and Spearman ρ of features' accuracies in two formats, bootstrap CIs over features."""

    kendall: stats.Interval
    spearman: stats.Interval
    n_features: int


def rank_agreement(acc_a, acc_b, *, seed: int, n_resamples: int = 1000) -> RankAgreement:
    """Do two formats rank the same features alike? (one accuracy per feature in each format)."""
    x, y = np.asarray(acc_a, float), np.asarray(acc_b, float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise InputError(f"rank_agreement: expected two equal 1-D accuracy arrays of >= 3 features, got {x.shape} and {y.shape}")
    return RankAgreement(kendall=stats.kendall_tau(x, y, seed=seed, n_resamples=n_resamples),
                         spearman=stats.spearman_rho(x, y, seed=seed, n_resamples=n_resamples), n_features=x.size)


def per_subject(credit, subjects: Sequence[str]) -> dict[str, stats.Accuracy]:
    """Accuracy with Wilson interval per subject, subjects sorted by name (credit [question] in [0, 1])."""
    c = np.asarray(credit, dtype=float)
    subj = np.asarray(subjects)
    if subj.shape != c.shape:
        raise InputError(f"per_subject: expected one subject per question ({c.size}), got {subj.size}")
    return {str(s): stats.Accuracy.from_credit(c[subj == s]) for s in sorted(set(subj.tolist()))}


# ---------------------------------------------------------------- the claims' measured quantities


def _selection_details(an: Analysis) -> dict:
    return {"format": an.fmt, "reading": an.reading, "feature": an.best, "n_discovery": an.discovery.n,
            "discovery_max": an.discovery_max, "heldout_accuracy": float(an.heldout.share[an.best]),
            "heldout_auc": float(an.heldout.auc[an.best]), "heldout_tie_to_first": float(an.heldout.first[an.best]),
            "tolerance": dataclasses.asdict(an.tolerance),
            "controls": {int(f): float(an.heldout.share[f]) for f in an.candidates.control},
            "pursuit": {int(f): float(an.heldout.share[f]) for f in an.candidates.pursuit}}


def heldout_above_chance(an: Analysis) -> Measurement:
    """C3: held-out accuracy of the discovery-chosen feature with its Wilson 95% interval (chance is 0.25).

    value = the accuracy, ci = its Wilson interval (the gate decides on ci against 0.25). The permutation null's p
    and percentile (which also absorb the key's letter imbalance and ties) are in details;
    heldout_above_permutation_null gates on that null.
    """
    best = an.heldout_accuracy(an.best)
    nulls = an.nulls
    perm = nulls.permutation_null
    return Measurement(value=best.value, n=best.n, ci=(best.lo, best.hi), statistic="Wilson 95% (held-out questions)",
                       p_value=perm.p_value, details={**_selection_details(an), **nulls.details(),
                                                      "power": stats.power_analysis(best.value, (best.lo, best.hi), best.n,
                                                                                    boundary=0.25)})


def _null_measurement(an: Analysis, test: NullTest, label: str) -> Measurement:
    nulls = an.nulls
    return Measurement(
        value=test.difference, n=test.n, ci=test.ci, p_value=test.p_value,
        statistic=(f"held-out accuracy minus the {NULL_QUANTILE:.0%} quantile of the {label} ({test.n_null} members); "
                   f"95% percentile bootstrap over the {test.n} held-out questions ({test.n_resamples} resamples, every "
                   "null member re-scored on each resample); p = share of the null >= observed"),
        details={**_selection_details(an), **nulls.details(), "null_percentile": test.percentile,
                 "power": stats.power_analysis(test.difference, test.ci, test.n)})


def heldout_above_controls(an: Analysis) -> Measurement:
    """C3 "above controls": held-out accuracy of the discovery-chosen feature minus the 95th percentile of the held-out
    accuracies of every other feature (the feature null), CI from resampling held-out questions.

    Why this form: the gate decides on a CI against 0, and a difference to a fixed quantile of a many-feature null
    keeps question noise in (each resample re-scores all features), where a p-value alone has no CI to gate on.
    """
    return _null_measurement(an, an.nulls.feature_null, "feature null")


def heldout_above_permutation_null(an: Analysis) -> Measurement:
    """C3 "above chance", selection included: held-out accuracy minus the 95th percentile of the permutation null
    (answer key shuffled, discovery choice re-run over all features on each shuffle), CI over held-out questions."""
    return _null_measurement(an, an.nulls.permutation_null, "permutation null")


def original_accuracy(r: OriginalReading) -> Measurement:
    """C3 (phi3): the original's accuracy figure of one feature, with the sound readings in details."""
    acc = accuracy_of(r.original, r.n)
    return Measurement(value=r.original, n=r.n, ci=(acc.lo, acc.hi), details=dataclasses.asdict(r))


def invariance_measurements(inv: Invariance) -> tuple[Measurement, Measurement]:
    """C1: (max |Δ accuracy| over transforms, max |Δ log-prob reading| over rescalings)."""
    details = dataclasses.asdict(inv)
    return (Measurement(value=inv.max_accuracy_change, n=inv.n, details=details),
            Measurement(value=inv.max_logprob_change, n=inv.n, details=details))


def ranking_kept(a: Analysis, b: Analysis, *, seed: int, n_resamples: int = 1000,
                 resample_candidates: bool = False) -> Measurement:
    """C4: Kendall tau of the candidates' held-out accuracies in two formats (union of both analyses' candidates).

    value = tau; ci = 95% percentile interval from resampling held-out QUESTIONS (every candidate's accuracy in both formats recomputed on each resample; optionally
    candidates resampled too). Both analyses must share the split.
    """
    if not np.array_equal(a.heldout_idx, b.heldout_idx) or a.answers is not None and b.answers is not None and not \
            np.array_equal(a.answers, b.answers):
        raise InputError(f"ranking_kept: formats {a.fmt} and {b.fmt} were split differently; align questions and seed")
    feats = np.array(sorted(set(a.candidates.all()) | set(b.candidates.all())))
    rc = stats.rank_correlation_over_questions(a.credit(feats), b.credit(feats), seed=seed, n_resamples=n_resamples,
                                               resample_candidates=resample_candidates)
    k = rc.kendall
    return Measurement(value=k.value, n=rc.n_questions, ci=(k.lo, k.hi), p_value=k.pvalue,
                       statistic=f"Kendall tau-b; 95% percentile bootstrap over {rc.n_questions} held-out questions "
                                 f"({rc.n_resamples} resamples, resampled: {rc.resampled}); p from scipy.stats.kendalltau",
                       details={"formats": [a.fmt, b.fmt], "reading": a.reading, "kendall_tau": k.value,
                                "kendall_p": k.pvalue, "spearman_rho": rc.spearman.value,
                                "spearman_ci": [rc.spearman.lo, rc.spearman.hi], "n_candidates": rc.n_candidates,
                                "n_undefined_resamples": rc.n_undefined, "n_heldout_questions": rc.n_questions,
                                "features": feats.tolist(), "power": stats.power_analysis(k.value, (k.lo, k.hi), rc.n_questions)})


def score_raised(resid_letter, resid_text, answers, params: SAEParams, feature: int, *, reading: str,
                 fmts: tuple[str, str], seed: int, tolerance: scores.Tolerance = scores.READING_TIE,
                 identical=None, n_resamples: int = N_BOOTSTRAP) -> Measurement:
    """C4: tie-aware accuracy of one feature with answer texts minus with letters, same questions.

    value = mean paired difference; ci = 95% percentile bootstrap over questions; p_value = the paired test's
    (exact McNemar for 0/1 credit, sign-flip permutation otherwise).
    """
    a = np.asarray(answers)
    tie = dict(tolerance=tolerance, identical=identical)
    r_l = feature_readings(resid_letter, params, reading=reading, features=[feature])[:, :, 0]
    r_t = feature_readings(resid_text, params, reading=reading, features=[feature])[:, :, 0]
    c_l, c_t = scores.argmax_credit(r_l, a, **tie), scores.argmax_credit(r_t, a, **tie)
    diff, test = stats.paired_difference(c_t, c_l, seed=seed, n_resamples=n_resamples)
    acc_l, acc_t = stats.Accuracy.from_credit(c_l), stats.Accuracy.from_credit(c_t)
    return Measurement(value=diff.value, n=test.n, ci=(diff.lo, diff.hi), p_value=test.pvalue,
                       statistic=f"paired difference of tie-aware credit; 95% percentile bootstrap over {test.n} "
                                 f"questions ({n_resamples} resamples); p: {test.method}",
                       details={"feature": int(feature), "reading": reading, "formats": list(fmts),
                                fmts[0]: acc_l.as_dict(), fmts[1]: acc_t.as_dict(),
                                "paired_test": dataclasses.asdict(test),
                                "mean_reading": {fmts[0]: float(r_l.mean()), fmts[1]: float(r_t.mean())},
                                "power": stats.power_analysis(diff.value, (diff.lo, diff.hi), test.n)})


# ---------------------------------------------------------------- C1 on data: a claim that can be false


def reading_agreement(resid, answers, params: SAEParams, *, seed: int, features=None, n_resamples: int = 1000,
                      tolerance: scores.Tolerance = scores.READING_TIE, identical=None,
                      chunk: int | None = None) -> Measurement:
    """C1 (data): Kendall tau between the features' ranking by the sound reading (encoder activation, tie-aware,
    ties within `tolerance`) and by the original's (decoder projection, tie-to-first, better of argmax/argmin).

    The two readings need not agree (different scores, tie rules and a per-feature selection), so the claim can fail.
    CI: 95% percentile bootstrap over questions, both rankings recomputed on each resample. The readings are taken a
    feature chunk at a time; only the per-question credits [question, feature] are kept.
    """
    a = np.asarray(answers)
    feats = np.arange(params.d_sae) if features is None else check_features(params, features)
    sound, orig_max, orig_min = (np.empty((a.size, feats.size)) for _ in range(3))
    chunks = dict(features=feats, chunk=chunk)
    for (sl, enc), (_, dec) in zip(reading_chunks(resid, params, reading="encoder", **chunks),
                                   reading_chunks(resid, params, reading="decoder", **chunks)):
        sound[:, sl] = scores.argmax_credit(enc, a, tolerance=tolerance, identical=identical)
        orig_max[:, sl] = scores.argmax_credit(dec, a, ties="first")
        orig_min[:, sl] = scores.argmax_credit(-dec, a, ties="first")
    rc = stats.rank_correlation_over_questions(sound, (orig_max, orig_min), seed=seed, n_resamples=n_resamples)
    k = rc.kendall
    return Measurement(value=k.value, n=rc.n_questions, ci=(k.lo, k.hi), p_value=k.pvalue,
                       statistic=f"Kendall tau-b over {rc.n_candidates} features; 95% percentile bootstrap over "
                                 f"{rc.n_questions} questions ({rc.n_resamples} resamples)",
                       details={"sound": "encoder, tie-aware", "original": "decoder projection, tie-to-first, max(argmax, argmin)",
                                "spearman_rho": rc.spearman.value, "spearman_ci": [rc.spearman.lo, rc.spearman.hi],
                                "n_features": rc.n_candidates, "n_undefined_resamples": rc.n_undefined,
                                "power": stats.power_analysis(k.value, (k.lo, k.hi), rc.n_questions)})
