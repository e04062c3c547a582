"""Feature claims C1, C3, C4 on the profile's model + SAE, and the report's feature plots.

The measuring happens in harness.studies.features (candidates chosen on a discovery half, scored on the held-out half);
the registry names each claim's measure, question-set role, format and reading.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from harness.claims.measures import identical, measure
from harness.reporting import plots
from harness.sae.readings import feature_readings
from harness.scoring import scores
from harness.studies import features

SEED = 0


class FeatureAnalyses:
    """analysis(role, fmt, reading, aligned) -> features.Analysis, each computed once.

    aligned=False uses every question the format scored (C3); aligned=True only the questions all three formats
    scored, in one order, so formats can be compared question by question (C4)."""

    def __init__(self, profile, option_runs, params):
        self.profile, self.option_runs, self.params = profile, option_runs, params
        self._cache: dict = {}

    def aligned(self, role: str) -> dict:
        """{fmt: (OptionRun, indices)}: indices select the questions every format scored, in one order."""
        runs = [self.option_runs(role, f) for f in ("letter", "text", "cloze")]
        idx = features.shared_questions(*[[q.qid for q in r.questions] for r in runs])
        return {r.fmt: (r, i) for r, i in zip(runs, idx)}

    def __call__(self, role: str, fmt: str, reading: str = "decoder", aligned: bool = False) -> features.Analysis:
        key = (role, fmt, reading, aligned)
        if key not in self._cache:
            if aligned:
                run, idx = self.aligned(role)[fmt]
            else:
                run = self.option_runs(role, fmt)
                idx = np.arange(run.n)
            fixed = features.PHI3_CONTROLS if self.profile.name == "phi3-mini" else ()
            self._cache[key] = features.analyse(run.resid[idx], run.answers[idx], self.params, fmt=fmt, reading=reading,
                                                seed=SEED, fixed_controls=fixed, identical=identical(run)[idx])
        return self._cache[key]


@pytest.fixture(scope="module")
def analysis(profile, option_runs, sae):
    return FeatureAnalyses(profile, option_runs, sae[0])


@pytest.mark.measure("accuracy_invariance", "logprob_reading_change", "reading_agreement", "original_accuracy",
                     "original_auc", "feature_accuracy")
def test_feature_readings_of_the_option_runs(claim, check_claim, option_runs, sae):
    """C1 (invariance of accuracy, not of a log-prob reading) and the original's reading of a named feature."""
    check_claim(claim, measure(claim, option_runs, sae[0]))


@pytest.mark.measure("heldout_above_chance", "heldout_above_feature_null", "heldout_above_permutation_null",
                     "ranking_kept", "score_raised")
def test_chosen_feature_on_held_out_questions(claim, check_claim, analysis):
    """C3 (the discovery-chosen feature beats chance and the null on held-out questions) and C4 (formats)."""
    check_claim(claim, measure(claim, analysis))


def test_feature_report_plots_are_written(profile, question_sets, analysis, pytestconfig, report_sections):
    """The report's feature plots (letter vs text/cloze with candidates, tie rules, per subject) for every set."""
    directory = pathlib.Path(pytestconfig.getoption("--reports-dir")) / profile.label
    sections = []
    for role in question_sets:
        letter, text, cloze = (analysis(role, f, aligned=True) for f in ("letter", "text", "cloze"))
        runs = analysis.aligned(role)
        (rl, il), (rc, ic) = runs["letter"], runs["cloze"]
        subjects = [q.subject for q in np.asarray(rl.questions, dtype=object)[il]]
        series = {"model, letter tokens": features.per_subject(scores.argmax_credit(rl.letter_logits[il], rl.answers[il]), subjects),
                  "model, cloze log-prob": features.per_subject(scores.argmax_credit(rc.logprob[ic], rc.answers[ic]), subjects)}
        held = cloze.heldout_idx
        chosen = feature_readings(rc.resid[ic][held], analysis.params, reading=cloze.reading, features=[cloze.best])[:, :, 0]
        series[f"feature {cloze.best}, cloze (held-out)"] = features.per_subject(
            scores.argmax_credit(chosen, rc.answers[ic][held]), [subjects[i] for i in held])
        sections += plots.feature_sections(directory, letter=letter, text=text, cloze=cloze, subjects=series, label=role)
    (directory / "features.md").write_text("\n".join(sections))
    pngs = sorted(directory.glob("*.png"))
    assert len(pngs) >= 4 * len(question_sets) and all(p.stat().st_size > 1000 for p in pngs)
    report_sections.extend(sections)


def test_original_quirks_ablation_table(pytestconfig, profile, checkpoint, model, question_sets, option_runs, analysis,
                                        sae, report_sections):
    """--quirks original: the feature read the original's way with each quirk on and off, so the distance between
    the original's 0.561 and the sound figure is explained step by step (a report section, not a claim)."""
    from harness.data.mmlu import HENDRYCKS_SOURCE
    from harness.studies import quirks

    if pytestconfig.getoption("--quirks") != "original":
        pytest.skip("quirk ablation not asked for (pass --quirks original)")
    role = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    run = option_runs(role, "letter")
    feature = features.PHI3_FEATURE if profile.name == "phi3-mini" else analysis(role, "letter").best
    rows = "file" if all(q.source == HENDRYCKS_SOURCE for q in run.questions) else "subject-order"
    table = quirks.feature_quirk_ablation(run, sae[0], feature, checkpoint=checkpoint, model=model, rows=rows)
    assert table.rows[0].label == "sound (no quirk)" and len(table.rows) == 6
    report_sections.append(f"## The original's quirks, feature {feature} ({role} letter run, header rows by {rows})\n\n"
                           + table.markdown())
