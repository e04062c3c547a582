"""C6: the candidate feature's top activations come from plain text, not from MC answer positions; its dashboard.

Measured in harness.studies.feature_contexts: the SAE's own activation (encoder reading) of the feature at every token of
N_PLAIN_TOKENS of held-out plain text (pydoc_data.topics + stdlib docstrings) and of the MC prompts of N_QUESTIONS
questions, pooled. The feature is the registry's (Phi-3: 45142) or, on the default, the one chosen on the discovery
half of the cloze run; dashboards for it, and the best control beside it, go to reports/<profile>/features/.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest

from harness.claims.measures import measure
from harness.data.subset import stratified_subset
from harness.reporting import dashboards
from harness.studies import feature_contexts, features

N_PLAIN_TOKENS = 24_000
N_QUESTIONS = 50
TOP_N = 50
SEED = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidates:
    """The features C6 and the dashboards look at: the first is the claims' feature."""

    role: str
    fmt: str
    why: dict[int, str]
    accuracies: dict[int, dict[str, str]]


@pytest.fixture(scope="module")
def candidates(profile, question_sets, option_runs, sae) -> Candidates:
    role = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    if profile.name == "phi3-mini":
        return Candidates(role=role, fmt="letter", why={features.PHI3_FEATURE: "the original's feature 45142"},
                          accuracies={})
    run = option_runs(role, "cloze")
    an = features.analyse(run.resid, run.answers, sae[0], fmt="cloze", reading="decoder", seed=SEED)
    why = {int(an.best): "chosen on the discovery half of the cloze run (decoder reading)"}
    why.setdefault(int(an.best_control()), "best control")
    accs = {}
    for f in why:
        h, d = an.heldout_accuracy(f), features.accuracy_of(an.discovery.share[f], an.discovery.n)
        accs[f] = {f"{role} cloze decoder reading, held-out (tie-aware)": f"{h.value:.3f} [{h.lo:.3f}, {h.hi:.3f}] (n={h.n})",
                   f"{role} cloze decoder reading, discovery (tie-aware)": f"{d.value:.3f} [{d.lo:.3f}, {d.hi:.3f}] (n={d.n})",
                   "held-out ROC-AUC": f"{an.heldout.auc[f]:.3f}"}
    return Candidates(role=role, fmt="cloze", why=why, accuracies=accs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contexts:
    """One feature's firing over plain text and MC prompts, with what the measures report beside it."""

    firing: object  # feature_contexts.Firing
    extra: dict


@pytest.fixture(scope="module")
def studies(profile, checkpoint, model, sae, question_sets, candidates, cached) -> dict:
    """{feature: FeatureStudy} from one pass over the plain text and the MC prompts (activations cached on disk)."""
    from harness.runs.cache import digest_file

    questions, _ = stratified_subset(question_sets[candidates.role][0],
                                     min(N_QUESTIONS, len(question_sets[candidates.role][0])), seed=SEED)
    tok, max_context = checkpoint.tokenizer, checkpoint.config.max_context
    plain, note, mc = feature_contexts.study_sequences(tok, questions, fmt=candidates.fmt, n_plain_tokens=N_PLAIN_TOKENS,
                                                       max_context=max_context, seed=SEED)
    feats = [int(f) for f in candidates.why]
    run = dict(layer=profile.layer, hook=profile.hook, max_context=max_context, reading="encoder", batch_size=16)
    sae_digest = digest_file(profile.sae)

    def activations(sequences) -> dict[int, tuple[np.ndarray, ...]]:
        """sequence_activations through the cache: keyed by the sequences' tokens, SAE file, features and run."""
        sequences = [np.asarray(s) for s in sequences]
        if not sequences:
            return {f: () for f in feats}
        lengths = np.array([s.size for s in sequences], np.int64)
        key = {**run, "sae": sae_digest, "features": feats, "lengths": lengths,
               "tokens": np.concatenate(sequences).astype(np.int64)}

        def compute():
            acts = feature_contexts.sequence_activations(model, sae[0], feats, sequences, **run)
            return {f"feature {f}": np.concatenate(acts[f]) for f in feats}

        arrays = cached("feature activations", key, compute,
                        code=("studies/feature_contexts.py", "sae/readings.py", "sae/sae.py", "sae/formats.py"))
        return {f: tuple(np.split(arrays[f"feature {f}"], np.cumsum(lengths)[:-1])) for f in feats}

    return feature_contexts.studies_from_activations(tok, feats, plain, note, mc, activations(list(plain)),
                                                     activations(list(mc.ids)), top_n=TOP_N, reading="encoder",
                                                     seed=SEED)


@pytest.mark.measure("answer_share", "plain_vs_answer_max")
def test_feature_fires_on_plain_text_not_on_mc_answers(claim, check_claim, candidates, studies):
    feature = next(iter(candidates.why))
    study = studies[feature]
    extra = {"format": candidates.fmt, "why": candidates.why[feature], "sources": [s.note for s in study.sets]}
    check_claim(claim, measure(claim, Contexts(firing=study.firing, extra=extra)))


def test_dashboards_of_the_candidates_are_written(profile, checkpoint, sae, candidates, studies, pytestconfig,
                                                   report_sections):
    base = pathlib.Path(pytestconfig.getoption("--reports-dir")) / profile.name
    recorded = base / "claims.json"
    links = []
    for f, why in candidates.why.items():
        a = dict(candidates.accuracies.get(f, {}))
        a |= {f"{k} (previous report)": v for k, v in dashboards.accuracies_from_claims(recorded, f).items()}
        d = dashboards.dashboard_of(studies[f], profile=profile.name, checkpoint=checkpoint, params=sae[0], accuracies=a)
        html_path, md_path = dashboards.write_dashboard(d, base / "features")
        assert html_path.stat().st_size > 5000 and md_path.exists()
        links.append((f, why, html_path))
    section = dashboards.section(profile.name, links, base)
    dashboards.write_index(profile.name, links, base / "features", report=base / "README.md")
    top = studies[next(iter(candidates.why))].contexts
    assert top and all(np.isfinite(c.value) for c in top)
    report_sections.append(section)
