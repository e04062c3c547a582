"""The measures a registry claim can name: each takes its study inputs (its positional parameters, named after the
fixtures that give them) and the claim's keyword `args` from claims.toml, and returns one `Measurement`.

`measure(claim, *inputs)` calls the claim's function with its args; the registry checks names and args at load. A user
registers a measure of their own with `@registered` (in a conftest.py, or a module named by a `claims_harness.measures`
entry point); the claims plugin generates its test.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Mapping

import numpy as np

from harness.claims.registry import Claim
from harness.errors import InputError
from harness.scoring import scores, stats
from harness.scoring.measurement import EXACT, Measurement
from harness.studies import feature_contexts, features

MEASURES: dict[str, Callable[..., Measurement]] = {}
SEED = 0
# Timing claims compare best-of-k CPU times (the robust timing estimator); their interval is that ratio ± this
# stated between-run noise, measured here as up to ~20% between two evals runs on the 2-core machine (compile-time
# growth 0.96 vs 1.17, speedup 3.34 vs 2.97): a claim is decided only when it clears the noise.
TIMING_NOISE = 0.20
TIMING = f"best-of-k CPU-time ratio ± {TIMING_NOISE:.0%} stated between-run noise"
WILSON = "Wilson 95% (tie-aware credit)"
BOOTSTRAP_QUESTIONS = "bootstrap over questions 95% (2,000 resamples)"
MAX_RANKED_FEATURES = 4096


def registered(fn: Callable[..., Measurement]) -> Callable[..., Measurement]:
    """Register `fn` under its own name as a measure claims.toml can name; the same function defined again (a
    conftest.py imported afresh) replaces itself, another function of that name is an error."""
    known = MEASURES.get(fn.__name__)
    if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
        raise InputError(f"measure {fn.__name__!r} registered twice: {known.__module__}.{known.__qualname__} and "
                         f"{fn.__module__}.{fn.__qualname__}")
    MEASURES[fn.__name__] = fn
    return fn


def measure_inputs(fn: Callable[..., Measurement]) -> tuple[str, ...]:
    """The fixtures a measure is given: its positional parameters, by name (its keyword-only ones are claim args)."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(n for n, p in inspect.signature(fn).parameters.items() if p.kind in positional)


def measure(claim: Claim, *inputs) -> Measurement:
    """The claim's measure applied to the study inputs and the claim's registry args."""
    m = MEASURES[claim.measure](*inputs, **claim.args)
    if not isinstance(m, Measurement):
        raise TypeError(f"measure {claim.measure!r} returned {type(m).__name__}, expected Measurement")
    return m


def _accuracy(acc: stats.Accuracy, statistic: str = WILSON, **details) -> Measurement:
    return Measurement(value=acc.value, n=acc.n, ci=(acc.lo, acc.hi), statistic=statistic, details=details)


# ---- C2: the model's own accuracy ---------------------------------------------------------------------------

def identical(run) -> np.ndarray:
    """Group labels [question, option] of options with the same text (they always tie)."""
    return scores.identical_options([q.choices for q in run.questions])


def run_readings(run) -> dict[str, stats.Accuracy]:
    """Every accuracy reading of one option run: summed log-prob (lm-eval acc) and per character of the choice text
    (lm-eval acc_norm), ties within the float tolerance of a log-prob sum and between identical options; the letter
    logits (ties shared, and the original's ties-to-first)."""
    answers, same = run.answers, identical(run)
    choices = [q.choices for q in run.questions]
    out = {"sum": scores.text_accuracy(run.logprob, answers, tolerance=scores.LOGPROB_TIE, identical=same),
           "norm": scores.acc_norm(run.logprob, answers, choices, identical=same)}
    if run.letter_logits is not None:
        out["letter"] = scores.letter_accuracy(run.letter_logits, answers)
        out["letter_tie_first"] = scores.letter_accuracy(run.letter_logits, answers, ties="first")
    return out


@registered
def model_accuracy(option_runs, *, set: str, format: str, reading: str) -> Measurement:
    """The model's accuracy on a question set in one format and reading, with the run's other readings beside it."""
    run = option_runs(set, format)
    readings = run_readings(run)
    if reading not in readings:
        raise InputError(f"model_accuracy: reading {reading!r} not available for format {format!r}; "
                         f"expected one of {sorted(readings)}")
    return _accuracy(readings[reading], readings={k: a.as_dict() for k, a in readings.items()},
                     format=format, skipped=len(run.skipped), boundary_mismatches=run.boundary_mismatches)


@registered
def letter_pick_share(option_runs, *, set: str) -> Measurement:
    """Share of the letter picks taken by the most-picked letter (Wilson), chi-square against the key in details."""
    run = option_runs(set, "letter")
    picks = scores.pick_distribution(run.letter_logits)
    key = np.bincount(run.answers, minlength=4)
    fit = stats.pick_distribution_test(picks, key)
    share = scores.letter_accuracy(run.letter_logits, np.full(run.n, int(np.argmax(picks))))
    return Measurement(value=float(picks.max() / picks.sum()), n=run.n, ci=(share.lo, share.hi), statistic=WILSON,
                       details={"picks_ABCD": picks.tolist(), "key_ABCD": key.tolist(), "chi2": fit.statistic,
                                "p_value": fit.pvalue})


# ---- C2b: format robustness -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class FormatCredits:
    """Per-question credit [question] of each rotation and of each prompt variant / format, on the same questions,
    with the rotation study (picks, key, test) they came from."""

    study: object  # format_robustness.RotationStudy
    rotations: Mapping[str, np.ndarray]
    variants: Mapping[str, np.ndarray]
    details: Mapping[str, object] = dataclasses.field(default_factory=dict)


def _spread(credits: Mapping[str, np.ndarray], *, what: str) -> Measurement:
    """max - min mean credit over the rows, with a paired bootstrap over questions (all rows resampled together)."""
    names = list(credits)
    arrays = [np.asarray(credits[k], float) for k in names]
    if len(arrays) < 2 or len({a.size for a in arrays}) != 1:
        raise InputError(f"{what}: expected at least two credit vectors over the same questions, got "
                         f"{ {k: a.size for k, a in zip(names, arrays)} }")

    def spread(*cols):
        means = [np.mean(c) for c in cols]
        return max(means) - min(means)

    ci = stats.bootstrap_ci(spread, *arrays, seed=SEED)
    accs = {k: stats.Accuracy.from_credit(a).as_dict() for k, a in zip(names, arrays)}
    return Measurement(value=ci.value, n=arrays[0].size, ci=(ci.lo, ci.hi), statistic=BOOTSTRAP_QUESTIONS,
                       details={f"accuracy_by_{what}": accs})


@registered
def rotation_spread(format_credits: FormatCredits) -> Measurement:
    """C2b: max - min letter accuracy over the 4 cyclic rotations of the options."""
    m = _spread(format_credits.rotations, what="rotation")
    return dataclasses.replace(m, details={**m.details, **format_credits.details})


@registered
def variant_spread(format_credits: FormatCredits) -> Measurement:
    """C2b: max - min accuracy over letter prompt variants and the text and cloze formats on the same questions."""
    m = _spread(format_credits.variants, what="variant")
    return dataclasses.replace(m, details={**m.details, **format_credits.details})


@registered
def pick_distribution(format_credits: FormatCredits) -> Measurement:
    """C2b: Pearson chi-square test of the pooled letter picks against the pooled answer key (p decides)."""
    s = format_credits.study
    return Measurement(value=float(s.test.statistic), n=int(sum(s.key)), p_value=float(s.test.pvalue),
                       statistic="Pearson chi-square test, picks vs key pooled over 4 rotations",
                       details={"picks": dict(zip("ABCD", s.picks)), "key": dict(zip("ABCD", s.key)), "dof": s.test.dof})


# ---- C1: activations are not log-probabilities ----------------------------------------------------------------

def _invariance(runs, params, *, set: str, format: str, readings: tuple[str, ...]) -> features.Invariance:
    from harness.sae.readings import reading_chunks

    run = runs(set, format)
    invs = [features.invariance(block, run.answers) for reading in readings
            for _, block in reading_chunks(run.resid, params, reading=reading)]
    return features.Invariance(max_accuracy_change=max(i.max_accuracy_change for i in invs),
                               max_logprob_change=max(i.max_logprob_change for i in invs), transforms=invs[0].transforms,
                               n=invs[0].n, n_features=sum(i.n_features for i in invs))


@registered
def accuracy_invariance(option_runs, sae_params, *, set: str, format: str) -> Measurement:
    """C1: the largest accuracy change of any feature under rescalings and increasing maps (exact on these data)."""
    inv = _invariance(option_runs, sae_params, set=set, format=format, readings=("encoder", "preact", "decoder"))
    acc, _ = features.invariance_measurements(inv)
    return dataclasses.replace(acc, statistic=EXACT)


@registered
def logprob_reading_change(option_runs, sae_params, *, set: str, format: str) -> Measurement:
    """C1: the largest change of the log-prob reading of the same activations under rescaling (exact)."""
    inv = _invariance(option_runs, sae_params, set=set, format=format, readings=("decoder",))
    _, logprob = features.invariance_measurements(inv)
    return dataclasses.replace(logprob, statistic=EXACT)


# ---- C3 / C4: features on held-out questions ------------------------------------------------------------------

@registered
def heldout_above_chance(feature_analyses, *, set: str, format: str, reading: str) -> Measurement:
    """C3: held-out accuracy (Wilson) of the feature chosen on the discovery half."""
    return features.heldout_above_chance(feature_analyses(set, format, reading))


@registered
def heldout_above_feature_null(feature_analyses, *, set: str, format: str, reading: str) -> Measurement:
    """C3: held-out accuracy of the chosen feature minus the 95th percentile of every other feature's (the feature
    null), CI from resampling held-out questions with all features re-scored."""
    return features.heldout_above_controls(feature_analyses(set, format, reading))


@registered
def heldout_above_permutation_null(feature_analyses, *, set: str, format: str, reading: str) -> Measurement:
    """C3: held-out accuracy minus the 95th percentile of the permutation null (keys shuffled, choice re-run)."""
    return features.heldout_above_permutation_null(feature_analyses(set, format, reading))


@registered
def reading_agreement(option_runs, sae_params, *, set: str, format: str) -> Measurement:
    """C1 on data: Kendall tau of the feature rankings by the sound and by the original's reading (can be false)."""
    run = option_runs(set, format)
    sample = None
    if sae_params.d_sae > MAX_RANKED_FEATURES:  # Phi-3's 49,152: a seeded sample keeps resampled rankings affordable
        sample = np.sort(np.random.default_rng(SEED).choice(sae_params.d_sae, MAX_RANKED_FEATURES, replace=False))
    m = features.reading_agreement(run.resid, run.answers, sae_params, seed=SEED, features=sample,
                                   identical=identical(run))
    return dataclasses.replace(m, details={**m.details, "features_ranked": "all" if sample is None else
                                           f"a seeded sample of {MAX_RANKED_FEATURES} of {sae_params.d_sae}"})


@registered
def original_accuracy(option_runs, sae_params, *, set: str, format: str, feature: int) -> Measurement:
    """C3 (the original's reading): decoder projection, ties to first, better of argmax/argmin (Wilson)."""
    run = option_runs(set, format)
    m = features.original_accuracy(features.read_feature(run.resid, run.answers, sae_params, feature))
    return dataclasses.replace(m, statistic="Wilson 95% (the original's reading: better of argmax/argmin)")


@registered
def feature_accuracy(option_runs, sae_params, *, set: str, format: str, feature: int, reading: str,
                     ties: str = "share") -> Measurement:
    """A named feature's accuracy under a sound reading (tie-aware by default; no selection, so all questions count)."""
    from harness.sae.readings import feature_readings

    run = option_runs(set, format)
    read = feature_readings(run.resid, sae_params, reading=reading, features=[feature])[:, :, 0]
    acc = stats.Accuracy.from_credit(scores.argmax_credit(read, run.answers, ties=ties))
    return _accuracy(acc, feature=feature, reading=reading, ties=ties,
                     all_tied=int(np.sum(np.all(read == read[:, :1], axis=1))))


def hanley_mcneil(auc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float]:
    """Closed-form ROC-AUC interval (Hanley & McNeil, 1982), as the original's n is quoted; clamped to [0, 1]."""
    import scipy.stats

    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = scipy.stats.norm.ppf(0.5 + confidence / 2) * np.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


@registered
def original_auc(option_runs, sae_params, *, set: str, format: str, feature: int) -> Measurement:
    """C3 (the original's reading): ROC-AUC of the decoder projection over (question, option) pairs, oriented by
    the direction (argmax or argmin) that won the original's better-of choice."""
    run = option_runs(set, format)
    r = features.read_feature(run.resid, run.answers, sae_params, feature)
    auc = r.auc if r.share >= r.argmin_share else 1.0 - r.auc
    return Measurement(value=auc, n=r.n, ci=hanley_mcneil(auc, r.n, 3 * r.n), statistic="Hanley-McNeil 95%",
                       details={**dataclasses.asdict(r), "orientation": "argmax" if r.share >= r.argmin_share else "argmin"})


@registered
def ranking_kept(feature_analyses, *, set: str, formats: list[str]) -> Measurement:
    """C4: Kendall tau of the candidates' held-out accuracies in two formats, with its bootstrap CI."""
    a, b = formats
    return features.ranking_kept(feature_analyses(set, a, aligned=True), feature_analyses(set, b, aligned=True),
                                 seed=SEED)


@registered
def score_raised(feature_analyses, *, set: str, format: str) -> Measurement:
    """C4: accuracy in `format` minus accuracy with letters of the letter-chosen feature, held-out questions."""
    letter = feature_analyses(set, "letter", aligned=True)
    runs = feature_analyses.aligned(set)
    (rl, il), (ro, io) = runs["letter"], runs[format]
    held = letter.heldout_idx
    return features.score_raised(rl.resid[il][held], ro.resid[io][held], rl.answers[il][held], feature_analyses.params,
                                 letter.best, reading=letter.reading, fmts=("letter", format), seed=SEED)


# ---- C5: compile time -----------------------------------------------------------------------------------------

def _timing_ratio(num: float, den: float, *, n: int, details: dict) -> Measurement:
    """num / den (best-of-k CPU seconds each) with the interval ratio / (1 + TIMING_NOISE) .. ratio * (1 + TIMING_NOISE)."""
    ratio = num / den
    return Measurement(value=ratio, ci=(ratio / (1 + TIMING_NOISE), ratio * (1 + TIMING_NOISE)), n=n,
                       statistic=TIMING, details=details)


def _timing_details(*timings) -> dict:
    return {f"{t.form.value}@{t.n_layers}": {"lower_cpu_s": round(t.lower.cpu, 3), "compile_cpu_s": round(t.compile.cpu, 3),
                                             "rounds_cpu_s": [round(r.cpu, 3) for r in t.rounds], "while_loops": t.while_loops}
            for t in timings}


@registered
def scan_equals_unrolled(compile_timings, *, n_layers: int) -> Measurement:
    """C5: max |logits(scan) - logits(unrolled)| / max |logits|, random weights (exact on these inputs)."""
    diff, scale = compile_timings.scan_vs_unrolled(n_layers)
    return Measurement(value=diff / scale, statistic=EXACT, details={"max_abs_diff": diff, "max_abs_logit": scale})


@registered
def while_loops(compile_timings, *, form: str, n_layers: int, shape: str | None = None) -> Measurement:
    """C5: stablehlo.while ops in the lowered forward (a count: exact), of the SmolLM2 shape or a named one."""
    t = compile_timings.of(shape).timing(form, n_layers, repeats=1)
    return Measurement(value=float(t.while_loops), statistic=EXACT, details=_timing_details(t))


@registered
def compile_growth(compile_timings, *, form: str, few: int, many: int, repeats: int = 3,
                   shape: str | None = None) -> Measurement:
    """C5: lower+compile CPU seconds at `many` layers over `few` layers (best of the rounds each), of the SmolLM2 shape
    or a named one (compile_timing.SHAPES: each family's real shape)."""
    timings = compile_timings.of(shape)
    a, b = timings.timing(form, few, repeats=repeats), timings.timing(form, many, repeats=repeats)
    return _timing_ratio(b.total.cpu, a.total.cpu, n=min(a.repeats, b.repeats), details=_timing_details(a, b))


@registered
def compile_speedup(compile_timings, *, n_layers: int, slow: str, fast: str, repeats: int = 2) -> Measurement:
    """C5: how many times faster `fast` lowers+compiles than `slow` at n_layers (CPU s)."""
    s = compile_timings.timing(slow, n_layers, repeats=repeats)
    f = compile_timings.timing(fast, n_layers, repeats=repeats)
    return _timing_ratio(s.total.cpu, f.total.cpu, n=min(s.repeats, f.repeats), details=_timing_details(s, f))


@registered
def forward_overhead(compile_timings, *, n_layers: int) -> Measurement:
    """C5: steady forward CPU seconds of the true scan over the unrolled model (best of the rounds each)."""
    scan, unrolled = compile_timings.forward("scan", n_layers), compile_timings.forward("unrolled", n_layers)
    return _timing_ratio(min(scan), min(unrolled), n=min(len(scan), len(unrolled)),
                         details={"scan_cpu_s": [round(s, 3) for s in scan], "unrolled_cpu_s": [round(s, 3) for s in unrolled]})


# ---- C6: where the feature fires --------------------------------------------------------------------------------

@registered
def answer_share(firing_contexts) -> Measurement:
    """C6: share of MC answer positions among the feature's top contexts."""
    return feature_contexts.answer_share(firing_contexts.firing, **firing_contexts.extra)


@registered
def plain_vs_answer_max(firing_contexts) -> Measurement:
    """C6: how much higher the feature's maximum reaches on plain text than at MC answers, over equal-size samples
    (median difference / largest activation; > 0 = plain text higher)."""
    return feature_contexts.max_comparison(firing_contexts.firing, **firing_contexts.extra)


# ---- SAE quality gates ----------------------------------------------------------------------------------------

SAE_METRICS = {
    "fvu": lambda ev: (ev.quality.fvu, ev.quality.n_tokens),
    "mean_l0": lambda ev: (ev.quality.mean_l0, ev.quality.n_tokens),
    "dead_fraction": lambda ev: (ev.quality.dead_fraction, ev.quality.n_tokens),
    "dense_fraction": lambda ev: (ev.quality.dense_fraction_10pct, ev.quality.n_tokens),
    "ce_recovered": lambda ev: (ev.ce.recovered, ev.ce.n_predictions),
}


@registered
def sae_gate(gate_evaluation, *, metric: str) -> Measurement:
    """An SAE quality figure on the card's fixed gate sample (exact on that sample: the gate is about it)."""
    if metric not in SAE_METRICS:
        raise InputError(f"sae_gate: metric {metric!r}, expected one of {sorted(SAE_METRICS)}")
    value, n = SAE_METRICS[metric](gate_evaluation)
    ev = gate_evaluation
    return Measurement(value=float(value), n=int(n), statistic=EXACT, details=dict(
        n_sequences=ev.n_sequences, n_outliers=ev.n_outliers, ce_clean=ev.ce.ce_clean, ce_sae=ev.ce.ce_spliced,
        ce_zero_ablate=ev.ce.ce_zero_ablate, ce_predictions=ev.ce.n_predictions))


# ---- Interventions: steering and ablation on contrast pairs (studies.steering) -------------------------------------

PAIRED = "paired bootstrap over held-out pairs 95% (2,000 resamples)"


def _effect(e, **details) -> Measurement:
    """Mean paired effect p - p(plain) over held-out pairs, its bootstrap interval, the wrong-way share."""
    ci, test = stats.paired_difference(e.p, e.plain, seed=SEED)
    return Measurement(value=ci.value, n=int(e.p.size), ci=(ci.lo, ci.hi), statistic=PAIRED, details={
        "p_plain": float(np.mean(e.plain)), "p_intervened": float(np.mean(e.p)), "wrong_way_share": e.wrong_way,
        "paired_test_p": test.pvalue, **details})


@registered
def steering_effect(steering_study, *, behaviour: str, readout: str, vector: str, alpha: float) -> Measurement:
    """Mean change of p(behaviour) on held-out pairs when alpha * vector is added at resid_pre L (paired with alpha 0),
    with the share of pairs moved against alpha's sign."""
    e = steering_study.effect(behaviour, readout, vector, alpha)
    return _effect(e, readout=readout, alpha=alpha, **steering_study.details(behaviour, vector))


@registered
def steering_dose_response(steering_study, *, behaviour: str, readout: str, vector: str,
                           alphas: list[float]) -> Measurement:
    """Mean over held-out pairs of the Spearman rho of p(behaviour) against alpha (bootstrap over pairs); the curve
    (mean effect, interval, wrong-way share per alpha) is in details for the report."""
    from harness.studies import steering

    if len(alphas) < 3 or 0 not in alphas:
        raise InputError(f"steering_dose_response: alphas {alphas}: expected at least 3 values including 0")
    runs = steering_study.readout_runs(behaviour, readout)
    grid = steering.dose_response(runs, vector, alphas)
    rho = steering.rank_correlations(grid, alphas)
    ci = stats.bootstrap_ci(np.mean, rho, seed=SEED)
    curve = []
    for a in alphas:
        e = steering_study.effect(behaviour, readout, vector, a)
        d, _ = stats.paired_difference(e.p, e.plain, seed=SEED)
        curve.append({"alpha": a, "effect": d.value, "lo": d.lo, "hi": d.hi, "p": float(np.mean(e.p)),
                      "wrong_way_share": e.wrong_way if a else 0.0})
    letters = steering_study.behaviour_letters(behaviour)  # a vector that is a letter direction shows here
    by_letter = {x: float(np.mean(rho[letters == x])) for x in sorted(set(letters))}
    return Measurement(value=ci.value, n=int(rho.size), ci=(ci.lo, ci.hi), statistic=PAIRED, details={
        "dose_response": curve, "readout": readout, "pairs_that_never_move": int(np.sum(np.ptp(grid, axis=1) == 0)),
        "mean_rho_by_behaviour_letter": by_letter,
        **steering_study.details(behaviour, vector)})


@registered
def steering_kept_share(steering_study, *, behaviour: str, readout: str, vector: str, reference: str,
                        alpha: float) -> Measurement:
    """Effect of `vector` over the effect of `reference` at one alpha (ratio of mean paired effects, pairs resampled
    together); a reference with no effect makes the interval wide, so the claim is then inconclusive."""
    a = steering_study.effect(behaviour, readout, vector, alpha)
    b = steering_study.effect(behaviour, readout, reference, alpha)
    details = {"effect": float(np.mean(a.per_pair)), "reference_effect": float(np.mean(b.per_pair)),
               "readout": readout, "alpha": alpha, **steering_study.details(behaviour, vector, reference)}
    if not np.mean(b.per_pair):
        return Measurement(value=float("nan"), n=int(a.p.size), statistic="undecidable: the reference has no effect",
                           details=details)
    w = stats.resample_weights(a.p.size, seed=SEED)
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = (w @ a.per_pair) / (w @ b.per_pair)
    lo, hi = stats.percentile_ci(reps[np.isfinite(reps)])
    details["resamples_with_no_reference_effect"] = int(np.sum(~np.isfinite(reps)))
    return Measurement(value=float(np.mean(a.per_pair) / np.mean(b.per_pair)), n=int(a.p.size), ci=(lo, hi),
                       statistic=PAIRED, details=details)


@registered
def ablation_effect(steering_study, *, behaviour: str, readout: str, vector: str) -> Measurement:
    """Mean change of p(behaviour) on held-out pairs when `vector`'s direction is projected out at every layer."""
    e = steering_study.ablation(behaviour, readout)
    return _effect(e, readout=readout, **steering_study.details(behaviour, vector))


@registered
def steered_accuracy_change(steering_study, *, behaviour: str, vector: str, alpha: float, set: str) -> Measurement:
    """The side effect: letter accuracy on `set` steered by alpha * vector minus unsteered, on the same questions."""
    steered, plain = steering_study.accuracy_change(behaviour, vector, alpha, set)
    ci, test = stats.paired_difference(steered, plain, seed=SEED)
    return Measurement(value=ci.value, n=int(steered.size), ci=(ci.lo, ci.hi), statistic=BOOTSTRAP_QUESTIONS, details={
        "accuracy_steered": float(np.mean(steered)), "accuracy_plain": float(np.mean(plain)),
        "paired_test_p": test.pvalue, "alpha": alpha, **steering_study.details(behaviour, vector)})
