"""C6: where does one SAE feature fire — on plain text, on MC prompts, or at the MC answer positions?

The feature's activation is measured at every token of (a) held-out plain text (harness.sae.corpus: pydoc_data.topics
+ stdlib docstrings, the documents the default SAE was NOT trained on) and (b) multiple-choice prompts in one format,
where each question's shared context is counted once (option 0's sequence) and every option's continuation tokens
are counted, the last one flagged as the answer (scored) position. Position 0 of every sequence (BOS / the
attention sink, norms ≫ the median) is not counted; how many positions were left out is reported.

Pooled top-N: the positions of both sets ranked by activation, keeping the best position of each sequence (one
context per sequence), then the N largest. Axis order: per-sequence arrays are [position].
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from harness.data.records import LETTERS, MCQuestion
from harness.errors import InputError
from harness.model import capture
from harness.prompts.formats import PromptTooLong, build_prompts, token_texts
from harness.runs.batching import Batch, run_batches
from harness.runs.options import HOOKS
from harness.sae.readings import feature_subset
from harness.scoring.measurement import Measurement
from harness.scoring.stats import wilson

PLAIN, MC, ANSWER = "plain text", "MC prompt", "MC answer"
ORIGINS = (PLAIN, MC, ANSWER)
QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenSet:
    """One feature's activation at every token of a set of sequences (each array per sequence is [position]).

    counted: positions that enter the pooled statistics; answer: MC answer (scored) positions (a subset of counted).
    """

    name: str
    tokens: tuple[np.ndarray, ...]
    acts: tuple[np.ndarray, ...]
    counted: tuple[np.ndarray, ...]
    answer: tuple[np.ndarray, ...]
    labels: tuple[str, ...]
    note: str = ""

    def values(self, origin: str) -> np.ndarray:
        """Activations of the counted positions of one origin: PLAIN / MC (non-answer) / ANSWER."""
        if origin == ANSWER:
            masks = self.answer
        else:
            masks = tuple(c & ~a for c, a in zip(self.counted, self.answer))
        return np.concatenate([act[m] for act, m in zip(self.acts, masks)]) if self.acts else np.zeros(0, np.float32)

    @property
    def n_counted(self) -> int:
        return int(sum(c.sum() for c in self.counted))

    @property
    def n_positions(self) -> int:
        return int(sum(t.size for t in self.tokens))


# ------------------------------------------------------------------------------------------- sequences


def plain_text_sequences(tokenizer, *, n_tokens: int, seq_len: int = 128, seed: int = 0, corpus=None
                         ) -> tuple[np.ndarray, str]:
    """([sequence, position] token ids from the held-out plain-text split, a note of what was taken of how much).

    The split is harness.sae.corpus' (same seed and held-out fraction as the default SAE's training), so none of
    this text was seen in training. Takes the first ceil(n_tokens / (seq_len - 1)) held-out sequences.
    """
    from harness.sae.corpus import CorpusConfig, build_corpus, chunk_documents, split_documents

    config = CorpusConfig(seq_len=seq_len, seed=seed)
    corpus = corpus or build_corpus(config.sources)
    _, held = split_documents(corpus.documents, heldout_fraction=config.heldout_fraction, seed=config.seed)
    chunks = chunk_documents(held, tokenizer, seq_len=seq_len)
    want = -(-int(n_tokens) // (seq_len - 1))
    take = min(want, chunks.n_sequences)
    note = (f"held-out plain text ({', '.join(config.sources)}; Python {corpus.python_version}): {take} of "
            f"{chunks.n_sequences} sequences of {seq_len} tokens ({take * (seq_len - 1)} text tokens of "
            f"{chunks.n_text_tokens}) from {len(held)} held-out documents")
    return chunks.tokens[:take], note


@dataclasses.dataclass(frozen=True, kw_only=True)
class MCSequences:
    """MC option sequences with what each position counts as (per sequence [position])."""

    ids: tuple[np.ndarray, ...]
    counted: tuple[np.ndarray, ...]
    answer: tuple[np.ndarray, ...]
    labels: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    fmt: str


def mc_sequences(tokenizer, questions: Sequence[MCQuestion], *, fmt: str, max_len: int) -> MCSequences:
    """Every option sequence of `questions` in `fmt` (harness.prompts.formats); the shared context counted once per question."""
    ids, counted, answer, labels, skipped = [], [], [], [], []
    for q in questions:
        try:
            prompts = build_prompts(tokenizer, q, fmt, max_len=max_len)
        except PromptTooLong as why:
            skipped.append((q.qid, str(why)))
            continue
        for k, option in enumerate(prompts.options):
            seq = np.asarray(option.ids, np.int32)
            c = np.zeros(seq.size, bool)
            c[1 if k == 0 else option.cont_start:] = True
            a = np.zeros(seq.size, bool)
            a[option.scored_position] = True
            ids.append(seq), counted.append(c), answer.append(a), labels.append(f"{q.qid} option {LETTERS[k]}")
    return MCSequences(ids=tuple(ids), counted=tuple(counted), answer=tuple(answer), labels=tuple(labels),
                       skipped=tuple(skipped), fmt=fmt)


# ------------------------------------------------------------------------------------------- activations


def sequence_activations(model, params, features: Sequence[int], sequences: Sequence[np.ndarray], *, layer: int,
                         hook: str, max_context: int, reading: str = "encoder", batch_size: int = 16,
                         token_budget: int = 4096) -> dict[int, tuple[np.ndarray, ...]]:
    """{feature: its reading at every position of each sequence}; one forward per batch, stopping at the SAE's layer."""
    if hook not in HOOKS:
        raise InputError(f"hook {hook!r}: expected one of {tuple(HOOKS)}")
    features = [int(f) for f in features]
    out = {f: [None] * len(sequences) for f in features}

    def forward(batch: Batch):
        return capture.residual(model, batch.tokens, layer=layer, where=HOOKS[hook], max_context=max_context)

    def take(batch: Batch, resid) -> None:
        acts = feature_subset(params, resid, features, reading=reading)
        for r, i in enumerate(batch.members):
            for j, f in enumerate(features):
                out[f][i] = acts[r, : len(sequences[i]), j].astype(np.float32)

    run_batches(sequences, forward=forward, take=take, max_len=max_context, batch_size=batch_size,
                token_budget=token_budget, label="feature activations")
    return {f: tuple(v) for f, v in out.items()}


def plain_token_set(tokens: np.ndarray, acts: Sequence[np.ndarray], *, note: str) -> TokenSet:
    """A TokenSet of plain-text sequences, position 0 (BOS) not counted."""
    counted = []
    for t in tokens:
        c = np.ones(len(t), bool)
        c[0] = False
        counted.append(c)
    return TokenSet(name=PLAIN, tokens=tuple(np.asarray(t) for t in tokens), acts=tuple(acts), counted=tuple(counted),
                    answer=tuple(np.zeros(len(t), bool) for t in tokens),
                    labels=tuple(f"plain-text sequence {i}" for i in range(len(tokens))), note=note)


def mc_token_set(seqs: MCSequences, acts: Sequence[np.ndarray], *, note: str = "") -> TokenSet:
    return TokenSet(name=f"{MC} ({seqs.fmt})", tokens=seqs.ids, acts=tuple(acts), counted=seqs.counted,
                    answer=seqs.answer, labels=seqs.labels,
                    note=note or f"{len(seqs.ids) // 4} questions in the {seqs.fmt} format, {len(seqs.skipped)} skipped (too long)")


# ------------------------------------------------------------------------------------------- top contexts


@dataclasses.dataclass(frozen=True, kw_only=True)
class Context:
    """One top-activating context: the tokens around the peak with their activations, and where it came from."""

    origin: str
    label: str
    value: float
    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    peak: int  # index into tokens


def pooled_top(sets: Sequence[TokenSet], n: int, *, seed: int = 0) -> list[tuple[int, int, int, float, str]]:
    """[(set index, sequence, position, activation, origin)] of the n best sequences' peaks, largest first.

    Only sequences where the feature fires (best counted activation > 0) compete, so a rarely firing feature gets
    fewer than n contexts, never zero-valued padding. Each sequence contributes its best counted position (the first
    of equal maxima); equal peak values are ordered by a seeded random key, not by set, so no origin wins ties.
    """
    peaks = []
    for si, s in enumerate(sets):
        for qi, (act, c, a) in enumerate(zip(s.acts, s.counted, s.answer)):
            if not c.any():
                continue
            masked = np.where(c, act, -np.inf)
            p = int(np.argmax(masked))
            if not act[p] > 0:
                continue
            origin = PLAIN if s.name == PLAIN else (ANSWER if a[p] else MC)
            peaks.append((si, qi, p, float(act[p]), origin))
    keys = np.random.default_rng(seed).random(len(peaks))
    order = sorted(range(len(peaks)), key=lambda i: (-peaks[i][3], keys[i]))
    return [peaks[i] for i in order[:n]]


def contexts(sets: Sequence[TokenSet], top, decode, *, before: int = 24, after: int = 6, texts=None) -> list[Context]:
    """Context windows around the top peaks; `decode(id) -> str` turns a token id into its text, or
    `texts(ids, skip=k)` (harness.prompts.formats.token_texts) gives each of ids[k:] as it reads in context (SentencePiece spaces kept)."""
    out = []
    for si, qi, p, value, origin in top:
        s = sets[si]
        lo, hi = max(0, p - before), min(len(s.tokens[qi]), p + after + 1)
        k = min(lo, 1)  # one token of left context, so the window's first token keeps its leading space
        shown = (tuple(decode(int(t)) for t in s.tokens[qi][lo:hi]) if texts is None
                 else tuple(texts(s.tokens[qi][lo - k:hi], skip=k)))
        out.append(Context(origin=origin, label=s.labels[qi], value=value,
                           tokens=shown,
                           acts=tuple(float(v) for v in s.acts[qi][lo:hi]), peak=p - lo))
    return out


# ------------------------------------------------------------------------------------------- comparison


@dataclasses.dataclass(frozen=True, kw_only=True)
class Firing:
    """Where the feature fires: per-origin counts, maxima, quantiles, active fractions; the pooled top-N shares.

    top_n: contexts that fire (<= top_n_requested); answer_share_top is NaN when none does (the share is undecidable).
    answer_base_rate: answer positions among all counted positions; answer_base_rate_firing: among counted positions
    where the feature fires. max_comparison: maxima over equal-size resamples of plain-text and answer positions.
    """

    feature: int
    reading: str
    n_positions: dict
    max: dict
    quantiles: dict
    active_fraction: dict
    top_n: int
    top_n_requested: int
    top_origins: dict
    answer_share_top: float  # share of MC answer positions among the top-N firing contexts (NaN when none fire)
    answer_base_rate: float  # share of MC answer positions among all counted positions (no preference)
    answer_base_rate_firing: float  # share of MC answer positions among the counted positions where it fires
    plain_share_top: float
    firing_sequences: dict  # sequences of each set whose best counted activation is > 0
    max_comparison: dict

    @property
    def max_ratio(self) -> float:
        """Display only (dashboards): max plain / max answer over unequal samples; NaN, never inf, when answers are <= 0."""
        a, p = self.max[ANSWER], self.max[PLAIN]
        return float("nan") if a <= 0 else p / a


def equal_size_maxima(plain, answer, *, seed: int, n_resamples: int = 2000, confidence: float = 0.95) -> dict:
    """Compare the largest activation of m plain-text positions with that of m answer positions (m = #answers).

    Both sides are drawn m at a time with replacement, so sample size favours neither; each draw gives
    (max plain - max answer) / (largest activation anywhere). Returns the median, a percentile CI, the share of draws
    where plain >= answer, m and n_resamples; "decidable" is False (value NaN) when the feature never fires at all.
    """
    p, a = np.asarray(plain, np.float64), np.asarray(answer, np.float64)
    if p.size == 0 or a.size == 0:
        raise InputError(f"equal_size_maxima: expected plain-text and answer positions, got {p.size} and {a.size}")
    scale = max(float(p.max()), float(a.max()), 0.0)
    m = int(a.size)
    base = {"m": m, "n_resamples": int(n_resamples), "n_plain": int(p.size), "scale": scale,
            "statistic": f"(max of {m} plain-text positions - max of {m} answer positions) / largest activation; "
                         f"both drawn with replacement, {n_resamples} draws, {confidence:.0%} percentile interval"}
    if not scale > 0:
        return {**base, "decidable": False, "value": float("nan"), "ci": None, "share_plain_ge_answer": float("nan"),
                "reason": "the feature never fires on these positions (largest activation <= 0)"}
    rng = np.random.default_rng(seed)
    max_p = np.array([p[rng.integers(0, p.size, m)].max() for _ in range(n_resamples)])
    max_a = np.array([a[rng.integers(0, m, m)].max() for _ in range(n_resamples)])
    d = (max_p - max_a) / scale
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(d, [tail, 1 - tail])
    return {**base, "decidable": True, "value": float(np.median(d)), "ci": [float(lo), float(hi)],
            "share_plain_ge_answer": float(np.mean(d >= 0))}


def firing(sets: Sequence[TokenSet], *, feature: int, reading: str, top_n: int, seed: int = 0,
           n_resamples: int = 2000) -> Firing:
    """Compare the feature's activations across origins and in the pooled top-N firing contexts."""
    by_origin = {o: [] for o in ORIGINS}
    for s in sets:
        for o in ((PLAIN,) if s.name == PLAIN else (MC, ANSWER)):
            by_origin[o].append(s.values(o))
    vals = {o: np.concatenate(v) if v else np.zeros(0, np.float32) for o, v in by_origin.items()}
    if any(v.size == 0 for v in vals.values()):
        raise InputError(f"firing: no positions of origin {[o for o, v in vals.items() if v.size == 0]}; pass plain text and MC prompts")
    top = pooled_top(sets, top_n, seed=seed)
    counts = {o: sum(t[4] == o for t in top) for o in ORIGINS}
    total = sum(v.size for v in vals.values())
    n_fire = sum(int(np.sum(v > 0)) for v in vals.values())
    fired = {s.name: int(sum(bool(c.any() and np.max(np.where(c, act, -np.inf)) > 0)
                             for act, c in zip(s.acts, s.counted))) for s in sets}
    share = (lambda k: k / len(top)) if top else (lambda k: float("nan"))
    return Firing(
        feature=int(feature), reading=reading, n_positions={o: int(v.size) for o, v in vals.items()},
        max={o: float(v.max()) for o, v in vals.items()},
        quantiles={o: {f"q{q:g}": float(np.quantile(v, q)) for q in QUANTILES} for o, v in vals.items()},
        active_fraction={o: float(np.mean(v > 0)) for o, v in vals.items()},
        top_n=len(top), top_n_requested=int(top_n), top_origins=counts, answer_share_top=share(counts[ANSWER]),
        answer_base_rate=vals[ANSWER].size / total,
        answer_base_rate_firing=int(np.sum(vals[ANSWER] > 0)) / n_fire if n_fire else float("nan"),
        plain_share_top=share(counts[PLAIN]), firing_sequences=fired,
        max_comparison=equal_size_maxima(vals[PLAIN], vals[ANSWER], seed=seed, n_resamples=n_resamples),
    )


def answer_share(fire: Firing, **extra) -> Measurement:
    """C6: share of MC answer positions among the pooled top-N contexts that fire, Wilson 95% interval, n = contexts.

    A feature that fires in no sequence gives value NaN, ci None and says so: the claim cannot be decided.
    """
    details = {**dataclasses.asdict(fire), **extra}
    if fire.top_n == 0:
        return Measurement(value=float("nan"), n=0, ci=None, statistic="undecidable: the feature fires in no sequence",
                           details={**details, "decidable": False})
    k = fire.top_origins[ANSWER]
    lo, hi = wilson(k, fire.top_n)
    return Measurement(value=fire.answer_share_top, n=fire.top_n, ci=(lo, hi),
                       statistic=f"Wilson 95% on {k} answer peaks of {fire.top_n} firing contexts (one per sequence); "
                                 f"base rates in details", details={**details, "decidable": True})


def max_comparison(fire: Firing, **extra) -> Measurement:
    """C6: median of (max over m plain-text positions - max over m answer positions) / largest activation, with a
    percentile CI over equal-size draws (m = number of answer positions): > 0 means plain text reaches higher.

    Replaces the old max ratio (a max over ~24k tokens against one over ~200, and inf when answers never fire).
    """
    mc = fire.max_comparison
    details = {**dataclasses.asdict(fire), **extra}
    ci = None if mc["ci"] is None else tuple(mc["ci"])
    return Measurement(value=mc["value"], n=mc["m"], ci=ci, statistic=mc["statistic"] if mc["decidable"] else
                       f"undecidable: {mc['reason']}", details=details)


max_ratio = max_comparison  # the name evals/ used before issue 14; the value is now the equal-size comparison


# ------------------------------------------------------------------------------------------- one study


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureStudy:
    """One feature's token sets (plain text, MC prompts), the comparison, and its top contexts."""

    feature: int
    reading: str
    sets: tuple[TokenSet, TokenSet]
    firing: Firing
    contexts: tuple[Context, ...]


def study_sequences(tokenizer, questions: Sequence[MCQuestion], *, fmt: str, n_plain_tokens: int, max_context: int,
                    seed: int = 0, corpus=None) -> tuple[np.ndarray, str, MCSequences]:
    """(plain-text sequences, their note, MC sequences): the token inputs of a study, no model run.

    Split from study_features so a caller can run (and cache) the model part, sequence_activations, on its own.
    """
    plain, note = plain_text_sequences(tokenizer, n_tokens=n_plain_tokens, seed=seed, corpus=corpus)
    return plain, note, mc_sequences(tokenizer, questions, fmt=fmt, max_len=max_context)


def studies_from_activations(tokenizer, features: Sequence[int], plain: np.ndarray, note: str, mc: MCSequences,
                             plain_acts: dict[int, Sequence[np.ndarray]], mc_acts: dict[int, Sequence[np.ndarray]], *,
                             top_n: int = 20, reading: str = "encoder", seed: int = 0) -> dict[int, FeatureStudy]:
    """{feature: FeatureStudy} from activations already read (sequence_activations of `plain` and `mc.ids`); pure."""
    out = {}
    for f in features:
        sets = (plain_token_set(plain, plain_acts[int(f)], note=note), mc_token_set(mc, mc_acts[int(f)]))
        top = pooled_top(sets, top_n, seed=seed)
        out[int(f)] = FeatureStudy(feature=int(f), reading=reading, sets=sets,
                                   firing=firing(sets, feature=int(f), reading=reading, top_n=top_n, seed=seed),
                                   contexts=tuple(contexts(sets, top, lambda t: tokenizer.decode([t]),
                                                           texts=functools.partial(token_texts, tokenizer))))
    return out


def study_features(model, checkpoint, params, features: Sequence[int], questions: Sequence[MCQuestion], *, fmt: str,
                   layer: int, hook: str, n_plain_tokens: int, top_n: int = 20, reading: str = "encoder",
                   seed: int = 0, corpus=None, batch_size: int = 16) -> dict[int, FeatureStudy]:
    """{feature: FeatureStudy}: the plain text and the MC prompts run once, every feature read from the same forwards."""
    tok = checkpoint.tokenizer
    max_context = checkpoint.config.max_context
    plain, note, mc = study_sequences(tok, questions, fmt=fmt, n_plain_tokens=n_plain_tokens, max_context=max_context,
                                      seed=seed, corpus=corpus)
    run = dict(layer=layer, hook=hook, max_context=max_context, reading=reading, batch_size=batch_size)
    plain_acts = sequence_activations(model, params, features, list(plain), **run)
    mc_acts = sequence_activations(model, params, features, list(mc.ids), **run)
    return studies_from_activations(tok, features, plain, note, mc, plain_acts, mc_acts, top_n=top_n, reading=reading,
                                    seed=seed)
