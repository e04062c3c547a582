"""The report's feature plots and the quirk ablation beside the feature claims C1, C3, C4 (those are measured by the
tests the claims plugin generates from the registry; their inputs are its `feature_analyses`, `option_runs`, `sae`).
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.reporting import plots
from harness.sae.readings import feature_readings
from harness.scoring import scores
from harness.studies import features


def test_feature_report_plots_are_written(profile, question_sets, feature_analyses, reports_dir, report_sections):
    """The report's feature plots (letter vs text/cloze with candidates, tie rules, per subject) for every set."""
    directory = reports_dir / profile.label
    sections = []
    for role in question_sets:
        letter, text, cloze = (feature_analyses(role, f, aligned=True) for f in ("letter", "text", "cloze"))
        runs = feature_analyses.aligned(role)
        (rl, il), (rc, ic) = runs["letter"], runs["cloze"]
        subjects = [q.subject for q in np.asarray(rl.questions, dtype=object)[il]]
        series = {"model, letter tokens": features.per_subject(scores.argmax_credit(rl.letter_logits[il], rl.answers[il]), subjects),
                  "model, cloze log-prob": features.per_subject(scores.argmax_credit(rc.logprob[ic], rc.answers[ic]), subjects)}
        held = cloze.heldout_idx
        chosen = feature_readings(rc.resid[ic][held], feature_analyses.params, reading=cloze.reading, features=[cloze.best])[:, :, 0]
        series[f"feature {cloze.best}, cloze (held-out)"] = features.per_subject(
            scores.argmax_credit(chosen, rc.answers[ic][held]), [subjects[i] for i in held])
        sections += plots.feature_sections(directory, letter=letter, text=text, cloze=cloze, subjects=series, label=role)
    (directory / "features.md").write_text("\n".join(sections))
    pngs = sorted(directory.glob("*.png"))
    assert len(pngs) >= 4 * len(question_sets) and all(p.stat().st_size > 1000 for p in pngs)
    report_sections.extend(sections)


def test_original_quirks_ablation_table(pytestconfig, profile, checkpoint, model, question_sets, option_runs,
                                        feature_analyses, sae, report_sections):
    """--quirks original: the feature read the original's way with each quirk on and off, so the distance between
    the original's 0.561 and the sound figure is explained step by step (a report section, not a claim)."""
    from harness.data.mmlu import HENDRYCKS_SOURCE
    from harness.studies import quirks

    if pytestconfig.getoption("--quirks") != "original":
        pytest.skip("quirk ablation not asked for (pass --quirks original)")
    role = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    run = option_runs(role, "letter")
    feature = features.PHI3_FEATURE if profile.name == "phi3-mini" else feature_analyses(role, "letter").best
    rows = "file" if all(q.source == HENDRYCKS_SOURCE for q in run.questions) else "subject-order"
    table = quirks.feature_quirk_ablation(run, sae[0], feature, checkpoint=checkpoint, model=model, rows=rows)
    assert table.rows[0].label == "sound (no quirk)" and len(table.rows) == 6
    report_sections.append(f"## The original's quirks, feature {feature} ({role} letter run, header rows by {rows})\n\n"
                           + table.markdown())
