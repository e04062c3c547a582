"""Candidate SAE features for the claims and their scores: chosen on a discovery split, measured on the held-out one.

Candidates: (a) top-k features by tie-aware accuracy on the discovery split, (b) gradient pursuit of the
correct-minus-incorrect residual contrast into the decoder rows, (c) fixed controls (seeded random features and,
for Phi-3, the original's). Axis order: resid [question, option, embedding], readings [question, option, feature].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from harness import scores, stats
from harness.claims import Measurement
from harness.errors import InputError
from harness.pursuit import gradient_pursuit
from harness.readings import FeatureScores, feature_readings, score_features
from harness.sae.sae import SAEParams, check_features

PURSUIT_K = 16
TOP_K = 16
N_RANDOM_CONTROLS = 3
PHI3_CONTROLS = (42, 9999, 15036)  # the original's comparison features in the Phi-3 saex SAE (49,152 features)
PHI3_FEATURE = 45142
GROUPS = ("top", "pursuit", "control")
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
    """The atoms gradient pursuit (k steps, argmax g) picks for the contrast vector, by |weight|, largest first."""
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
    held-out accuracy of the same feature.
    """

    fmt: str
    reading: str
    discovery: FeatureScores
    heldout: FeatureScores
    candidates: Candidates
    discovery_idx: np.ndarray
    heldout_idx: np.ndarray

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


def accuracy_of(value: float, n: int) -> stats.Accuracy:
    """An Accuracy with its Wilson interval from a mean credit over n questions."""
    k = float(value) * n
    lo, hi = stats.wilson(min(max(k, 0.0), n), n)
    return stats.Accuracy(value=float(value), k=k, n=int(n), lo=lo, hi=hi)


def analyse(resid, answers, params: SAEParams, *, fmt: str, reading: str, seed: int, k: int = TOP_K,
            pursuit_k: int = PURSUIT_K, fixed_controls: Sequence[int] = (), frac: float = 0.5) -> Analysis:
    """Score all features on a seeded discovery/held-out split; pick candidates on the discovery split only."""
    r, a = np.asarray(resid, dtype=np.float32), np.asarray(answers)
    disc, held = scores.split_discovery_heldout(a.size, seed=seed, frac=frac)
    discovery = score_features(r[disc], a[disc], params, reading=reading)
    heldout = score_features(r[held], a[held], params, reading=reading)
    top = tuple(int(f) for f in scores.select_top_features(discovery.share, k))
    pursuit = pursuit_features(r[disc], a[disc], params, k=pursuit_k)
    control = control_features(params.d_sae, seed=seed, exclude=top + pursuit, fixed=fixed_controls)
    return Analysis(fmt=fmt, reading=reading, discovery=discovery, heldout=heldout,
                    candidates=Candidates(top=top, pursuit=pursuit, control=control), discovery_idx=disc, heldout_idx=held)


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


def paired_format_test(read_a, read_b, answers, *, seed: int) -> stats.PairedTest:
    """Paired test of one feature's tie-aware credit in two formats on the same questions (readings [question, option])."""
    a = np.asarray(answers)
    return stats.paired_test(scores.argmax_credit(read_a, a), scores.argmax_credit(read_b, a), seed=seed)


def per_subject(credit, subjects: Sequence[str]) -> dict[str, stats.Accuracy]:
    """Accuracy with Wilson interval per subject, subjects sorted by name (credit [question] in [0, 1])."""
    c = np.asarray(credit, dtype=float)
    subj = np.asarray(subjects)
    if subj.shape != c.shape:
        raise InputError(f"per_subject: expected one subject per question ({c.size}), got {subj.size}")
    return {str(s): stats.Accuracy.from_credit(c[subj == s]) for s in sorted(set(subj.tolist()))}


# ---------------------------------------------------------------- the claims' measured quantities


def _acc_details(acc: stats.Accuracy) -> dict:
    return {"value": acc.value, "n": acc.n, "ci": [acc.lo, acc.hi]}


def heldout_above_chance(an: Analysis) -> Measurement:
    """C3 (default): lower Wilson bound of the discovery-chosen feature's held-out accuracy (chance is 0.25)."""
    best = an.heldout_accuracy(an.best)
    return Measurement(value=best.lo, n=best.n, ci=(best.lo, best.hi), details={
        "format": an.fmt, "reading": an.reading, "feature": an.best, "heldout_accuracy": best.value,
        "discovery_max": an.discovery_max, "n_discovery": an.discovery.n,
        "heldout_auc": float(an.heldout.auc[an.best]),
        "heldout_tie_to_first": float(an.heldout.first[an.best]),
        "best_heldout_of_candidates": max(float(an.heldout.share[f]) for f in an.candidates.all()),
        "controls": {int(f): float(an.heldout.share[f]) for f in an.candidates.control},
        "pursuit": {int(f): float(an.heldout.share[f]) for f in an.candidates.pursuit},
    })


def heldout_above_controls(an: Analysis) -> Measurement:
    """C3 (default): held-out accuracy of the discovery-chosen feature minus that of the best control."""
    best, control = an.heldout_accuracy(an.best), an.heldout_accuracy(an.best_control())
    return Measurement(value=best.value - control.value, n=best.n, details={
        "format": an.fmt, "reading": an.reading, "feature": an.best, "feature_accuracy": _acc_details(best),
        "best_control": an.best_control(), "control_accuracy": _acc_details(control),
        "controls": {int(f): float(an.heldout.share[f]) for f in an.candidates.control},
    })


def original_accuracy(r: OriginalReading) -> Measurement:
    """C3 (phi3): the original's accuracy figure of one feature, with the sound readings in details."""
    acc = accuracy_of(r.original, r.n)
    return Measurement(value=r.original, n=r.n, ci=(acc.lo, acc.hi), details=dataclasses.asdict(r))


def original_auc(r: OriginalReading) -> Measurement:
    """C3 (phi3): the ROC-AUC over options of the decoder-projection reading of one feature."""
    return Measurement(value=r.auc, n=r.n, details=dataclasses.asdict(r))


def invariance_measurements(inv: Invariance) -> tuple[Measurement, Measurement]:
    """C1: (max |Δ accuracy| over transforms, max |Δ log-prob reading| over rescalings)."""
    details = dataclasses.asdict(inv)
    return (Measurement(value=inv.max_accuracy_change, n=inv.n, details=details),
            Measurement(value=inv.max_logprob_change, n=inv.n, details=details))


def ranking_kept(a: Analysis, b: Analysis, *, seed: int) -> Measurement:
    """C4: Kendall τ of held-out accuracies in two formats over both analyses' candidates; value = τ's lower CI bound.

    Both analyses must use the same questions and split (same seed), so the held-out halves coincide.
    """
    if not np.array_equal(a.heldout_idx, b.heldout_idx):
        raise InputError(f"ranking_kept: formats {a.fmt} and {b.fmt} were split differently; align questions and seed")
    feats = np.array(sorted(set(a.candidates.all()) | set(b.candidates.all())))
    agree = rank_agreement(a.heldout.share[feats], b.heldout.share[feats], seed=seed)
    k = agree.kendall
    return Measurement(value=k.lo, n=agree.n_features, ci=(k.lo, k.hi), details={
        "formats": [a.fmt, b.fmt], "reading": a.reading, "kendall_tau": k.value, "kendall_p": k.pvalue,
        "spearman_rho": agree.spearman.value, "spearman_ci": [agree.spearman.lo, agree.spearman.hi],
        "n_heldout_questions": a.heldout.n, "features": feats.tolist(),
    })


def score_raised(resid_letter, resid_text, answers, params: SAEParams, feature: int, *, reading: str,
                 fmts: tuple[str, str], seed: int) -> Measurement:
    """C4: tie-aware accuracy of one feature with answer texts minus with letters, same questions, paired test."""
    a = np.asarray(answers)
    r_l = feature_readings(resid_letter, params, reading=reading, features=[feature])[:, :, 0]
    r_t = feature_readings(resid_text, params, reading=reading, features=[feature])[:, :, 0]
    test = paired_format_test(r_t, r_l, a, seed=seed)
    acc_l = stats.Accuracy.from_credit(scores.argmax_credit(r_l, a))
    acc_t = stats.Accuracy.from_credit(scores.argmax_credit(r_t, a))
    return Measurement(value=test.difference, n=test.n, details={
        "feature": int(feature), "reading": reading, "formats": list(fmts), fmts[0]: _acc_details(acc_l),
        fmts[1]: _acc_details(acc_t), "paired_test": dataclasses.asdict(test),
        "mean_reading": {fmts[0]: float(r_l.mean()), fmts[1]: float(r_t.mean())},
    })
