"""Feature claims C1, C3, C4 on the profile's model + SAE: each test reads like its claim's sentence.

The measuring happens in harness.features (candidates chosen on a discovery half, scored on the held-out half);
here the registry's claims are checked against it and the report's feature plots are drawn.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from harness import features as F
from harness import plots, scores
from harness.readings import feature_readings, reading_chunks

SEED = 0
# claim id -> (question set, format(s), reading, measurement). "first" = the profile's first question set.
C3_DEFAULT = {
    "C3-smollm2-control-above-chance": ("control", "cloze", "decoder", F.heldout_above_chance),
    "C3-smollm2-control-above-controls": ("control", "cloze", "decoder", F.heldout_above_controls),
    "C3-smollm2-mmlu-above-chance": ("mmlu", "cloze", "decoder", F.heldout_above_chance),
    "C3-smollm2-mmlu-above-controls": ("mmlu", "cloze", "decoder", F.heldout_above_controls),
}
C4_RANKING = {"letter-text": ("letter", "text"), "letter-cloze": ("letter", "cloze")}


def _run(option_runs, name, fmt):
    """The OptionRun of (question set, format) from the option_runs fixture (a function or a mapping)."""
    return option_runs(name, fmt) if callable(option_runs) else option_runs[(name, fmt)]


def _first_set(profile, question_sets) -> str:
    return next(iter(question_sets)) if question_sets else profile.datasets[0]


@pytest.fixture(scope="module")
def study(profile, option_runs, sae):
    """analysis(set, fmt, reading) -> features.Analysis, computed once; all formats of a set use the same questions."""
    params, _ = sae
    cache: dict = {}

    def aligned(name: str):
        """{fmt: (OptionRun, indices)}: indices select the questions every format scored, in one order."""
        runs = [_run(option_runs, name, f) for f in ("letter", "text", "cloze")]
        idx = F.shared_questions(*[[q.qid for q in r.questions] for r in runs])
        return {r.fmt: (r, i) for r, i in zip(runs, idx)}

    def analysis(name: str, fmt: str, reading: str = "decoder") -> F.Analysis:
        key = (name, fmt, reading)
        if key not in cache:
            run, idx = aligned(name)[fmt]
            fixed = F.PHI3_CONTROLS if profile.name == "phi3-mini" else ()
            cache[key] = F.analyse(run.resid[idx], run.answers[idx], params, fmt=fmt, reading=reading, seed=SEED,
                                   fixed_controls=fixed)
        return cache[key]

    analysis.aligned = aligned
    analysis.params = params
    return analysis


@pytest.mark.claims("C1-accuracy")
def test_feature_accuracy_is_invariant_to_rescaling_and_increasing_maps(claim, check_claim, profile, question_sets,
                                                                        option_runs, sae):
    run = _run(option_runs, _first_set(profile, question_sets), "letter")
    invs = [F.invariance(block, run.answers) for reading in ("encoder", "preact", "decoder")
            for _, block in reading_chunks(run.resid, sae[0], reading=reading)]
    acc, _ = F.invariance_measurements(_merge(invs))
    check_claim(claim, acc)


@pytest.mark.claims("C1-logprob")
def test_log_prob_reading_of_activations_changes_under_rescaling(claim, check_claim, profile, question_sets,
                                                                 option_runs, sae):
    run = _run(option_runs, _first_set(profile, question_sets), "letter")
    invs = [F.invariance(block, run.answers) for _, block in reading_chunks(run.resid, sae[0], reading="decoder")]
    _, logprob = F.invariance_measurements(_merge(invs))
    check_claim(claim, logprob)


def _merge(invs: list[F.Invariance]) -> F.Invariance:
    """One Invariance over feature chunks / readings: the largest changes anywhere."""
    return F.Invariance(max_accuracy_change=max(i.max_accuracy_change for i in invs),
                        max_logprob_change=max(i.max_logprob_change for i in invs), transforms=invs[0].transforms,
                        n=invs[0].n, n_features=sum(i.n_features for i in invs))


@pytest.mark.claims("C3-smollm2-")
def test_chosen_feature_beats_chance_and_controls_on_heldout_questions(claim, check_claim, study):
    name, fmt, reading, measure = C3_DEFAULT[claim.id]
    check_claim(claim, measure(study(name, fmt, reading)))


@pytest.mark.claims("C3-phi3-")
def test_feature_45142_reproduces_the_original_figures(claim, check_claim, profile, question_sets, option_runs, sae):
    run = _run(option_runs, _first_set(profile, question_sets), "letter")
    reading = F.read_feature(run.resid, run.answers, sae[0], F.PHI3_FEATURE)
    measure = F.original_accuracy if claim.id.endswith("accuracy") else F.original_auc
    check_claim(claim, measure(reading))


@pytest.mark.claims("C4-")
def test_answer_texts_raise_the_score_but_keep_the_ranking(claim, check_claim, profile, question_sets, study):
    name = _first_set(profile, question_sets)
    letter = study(name, "letter")
    kind = claim.id.split("-", 2)[2]  # e.g. "ranking-letter-text", "raises-text"
    if kind.startswith("ranking-"):
        fa, fb = C4_RANKING[kind.removeprefix("ranking-")]
        check_claim(claim, F.ranking_kept(study(name, fa), study(name, fb), seed=SEED))
    else:
        other = kind.removeprefix("raises-")
        runs = study.aligned(name)
        (rl, il), (ro, io) = runs["letter"], runs[other]
        held = letter.heldout_idx  # the letter-chosen candidate, measured on held-out questions only
        check_claim(claim, F.score_raised(rl.resid[il][held], ro.resid[io][held], rl.answers[il][held], study.params,
                                          letter.best, reading=letter.reading, fmts=("letter", other), seed=SEED))


def test_feature_report_plots_are_written(profile, question_sets, option_runs, study, pytestconfig, request):
    """The report's feature plots (letter vs text/cloze with candidates, tie rules, per subject) for every set."""
    directory = pathlib.Path(pytestconfig.getoption("--reports-dir")) / profile.name
    sections = []
    for name in question_sets:
        letter, text, cloze = (study(name, f) for f in ("letter", "text", "cloze"))
        runs = study.aligned(name)
        (rl, il), (rc, ic) = runs["letter"], runs["cloze"]
        subjects = [q.subject for q in np.asarray(rl.questions, dtype=object)[il]]
        series = {"model, letter tokens": F.per_subject(scores.argmax_credit(rl.letter_logits[il], rl.answers[il]), subjects),
                  "model, cloze log-prob": F.per_subject(scores.argmax_credit(rc.logprob[ic], rc.answers[ic]), subjects)}
        held = cloze.heldout_idx
        chosen = feature_readings(rc.resid[ic][held], study.params, reading=cloze.reading, features=[cloze.best])[:, :, 0]
        series[f"feature {cloze.best}, cloze (held-out)"] = F.per_subject(
            scores.argmax_credit(chosen, rc.answers[ic][held]), [subjects[i] for i in held])
        sections += plots.feature_sections(directory, letter=letter, text=text, cloze=cloze, subjects=series, label=name)
    (directory / "features.md").write_text("\n".join(sections))
    pngs = sorted(directory.glob("*.png"))
    assert len(pngs) >= 4 * len(question_sets) and all(p.stat().st_size > 1000 for p in pngs)
    request.getfixturevalue("report_sections").extend(sections)
