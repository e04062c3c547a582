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
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harness.activations import HOOKS, padded_batch, plan_batches
from harness.claims import Measurement
from harness.data.records import LETTERS, MCQuestion
from harness.errors import InputError
from harness.model import capture
from harness.prompts import PromptTooLong, build_prompts
from harness.sae import sae as sae_lib

PLAIN, MC, ANSWER = "plain text", "MC prompt", "MC answer"
ORIGINS = (PLAIN, MC, ANSWER)
QUANTILES = (0.5, 0.9, 0.99, 0.999)
READINGS = ("encoder", "decoder")


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
    """Every option sequence of `questions` in `fmt` (harness.prompts); the shared context counted once per question."""
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


def feature_values(params: sae_lib.SAEParams, x, features: Sequence[int], *, reading: str = "encoder") -> np.ndarray:
    """Readings [..., feature] of the given features on residuals x [..., embedding]: SAE activation or x·W_dec[f].

    Feature-local encoders (relu, jumprelu, gated) are evaluated on the given features only; TopK needs all
    pre-activations (a feature fires only when among the k largest; ties at the k-th value go to the lowest index).
    """
    idx = sae_lib.check_features(params, np.asarray(list(features), dtype=np.int64))
    if reading not in READINGS:
        raise InputError(f"reading {reading!r}: expected one of {READINGS}")
    x = jnp.asarray(x, jnp.float32)
    if reading == "decoder":
        return np.asarray(sae_lib.decoder_projection(params, x, idx))
    if params.architecture == "topk":
        pre = sae_lib.pre_activations(params, x)
        kth = jax.lax.top_k(pre, params.k)[0][..., -1:]
        n_above = jnp.sum(pre > kth, axis=-1, keepdims=True)
        tied_before = jnp.cumsum(pre == kth, axis=-1) - (pre == kth)  # equal values at lower indices
        inside = (pre > kth) | ((pre == kth) & (n_above + tied_before < params.k))
        return np.asarray(jnp.where(inside, jax.nn.relu(pre), 0.0)[..., idx])
    cut = {n: (None if getattr(params, n) is None else getattr(params, n)[idx]) for n in ("threshold", "mag_scale", "b_mag")}
    some = dataclasses.replace(params, W_enc=params.W_enc[:, idx], b_enc=params.b_enc[idx], W_dec=params.W_dec[idx], **cut)
    return np.asarray(sae_lib.encode(some, x))


def sequence_activations(model, params, features: Sequence[int], sequences: Sequence[np.ndarray], *, layer: int,
                         hook: str, max_context: int, reading: str = "encoder", batch_size: int = 16,
                         token_budget: int = 4096) -> dict[int, tuple[np.ndarray, ...]]:
    """{feature: its reading at every position of each sequence}; one forward per batch, stopping at the SAE's layer."""
    if hook not in HOOKS:
        raise InputError(f"hook {hook!r}: expected one of {tuple(HOOKS)}")
    features = [int(f) for f in features]
    lengths = [len(s) for s in sequences]
    out = {f: [None] * len(sequences) for f in features}
    for length, rows, members in plan_batches(lengths, max_len=max_context, batch_size=batch_size,
                                              token_budget=token_budget):
        tokens = padded_batch(sequences, members, rows, length)
        resid = capture.residual(model, tokens, layer=layer, where=HOOKS[hook], max_context=max_context)
        acts = feature_values(params, resid, features, reading=reading)
        for r, i in enumerate(members):
            for j, f in enumerate(features):
                out[f][i] = acts[r, : lengths[i], j].astype(np.float32)
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


def pooled_top(sets: Sequence[TokenSet], n: int) -> list[tuple[int, int, int, float, str]]:
    """[(set index, sequence, position, activation, origin)] of the n best sequences' peaks, largest first.

    Each sequence contributes its best counted position; ties are broken by set, sequence and position order.
    """
    peaks = []
    for si, s in enumerate(sets):
        for qi, (act, c, a) in enumerate(zip(s.acts, s.counted, s.answer)):
            if not c.any():
                continue
            masked = np.where(c, act, -np.inf)
            p = int(np.argmax(masked))
            origin = PLAIN if s.name == PLAIN else (ANSWER if a[p] else MC)
            peaks.append((si, qi, p, float(act[p]), origin))
    peaks.sort(key=lambda t: (-t[3], t[0], t[1], t[2]))
    return peaks[:n]


def contexts(sets: Sequence[TokenSet], top, decode, *, before: int = 24, after: int = 6) -> list[Context]:
    """Context windows around the top peaks; `decode(id) -> str` turns a token id into its text."""
    out = []
    for si, qi, p, value, origin in top:
        s = sets[si]
        lo, hi = max(0, p - before), min(len(s.tokens[qi]), p + after + 1)
        out.append(Context(origin=origin, label=s.labels[qi], value=value,
                           tokens=tuple(decode(int(t)) for t in s.tokens[qi][lo:hi]),
                           acts=tuple(float(v) for v in s.acts[qi][lo:hi]), peak=p - lo))
    return out


# ------------------------------------------------------------------------------------------- comparison


@dataclasses.dataclass(frozen=True, kw_only=True)
class Firing:
    """Where the feature fires: per-origin counts, maxima, quantiles, active fractions; the pooled top-N shares."""

    feature: int
    reading: str
    n_positions: dict
    max: dict
    quantiles: dict
    active_fraction: dict
    top_n: int
    top_origins: dict
    answer_share_top: float  # share of MC answer positions among the top-N contexts
    answer_base_rate: float  # share of MC answer positions among all counted positions (no preference)
    plain_share_top: float

    @property
    def max_ratio(self) -> float:
        """max over plain text / max over MC answer positions (inf when the answers never exceed 0)."""
        a, p = self.max[ANSWER], self.max[PLAIN]
        return float("inf") if a <= 0 < p else (float("nan") if a <= 0 else p / a)


def firing(sets: Sequence[TokenSet], *, feature: int, reading: str, top_n: int) -> Firing:
    """Compare the feature's activations across origins and in the pooled top-N contexts."""
    by_origin = {o: [] for o in ORIGINS}
    for s in sets:
        for o in ((PLAIN,) if s.name == PLAIN else (MC, ANSWER)):
            by_origin[o].append(s.values(o))
    vals = {o: np.concatenate(v) if v else np.zeros(0, np.float32) for o, v in by_origin.items()}
    if any(v.size == 0 for v in vals.values()):
        raise InputError(f"firing: no positions of origin {[o for o, v in vals.items() if v.size == 0]}; pass plain text and MC prompts")
    top = pooled_top(sets, top_n)
    counts = {o: sum(t[4] == o for t in top) for o in ORIGINS}
    total = sum(v.size for v in vals.values())
    return Firing(
        feature=int(feature), reading=reading, n_positions={o: int(v.size) for o, v in vals.items()},
        max={o: float(v.max()) for o, v in vals.items()},
        quantiles={o: {f"q{q:g}": float(np.quantile(v, q)) for q in QUANTILES} for o, v in vals.items()},
        active_fraction={o: float(np.mean(v > 0)) for o, v in vals.items()},
        top_n=len(top), top_origins=counts, answer_share_top=counts[ANSWER] / max(1, len(top)),
        answer_base_rate=vals[ANSWER].size / total, plain_share_top=counts[PLAIN] / max(1, len(top)),
    )


def answer_share(fire: Firing, **extra) -> Measurement:
    """C6: share of MC answer positions among the pooled top-N contexts (figures of every origin in details)."""
    return Measurement(value=fire.answer_share_top, n=fire.top_n, details={**dataclasses.asdict(fire), **extra})


def max_ratio(fire: Firing, **extra) -> Measurement:
    """C6: max activation on plain text / max at MC answer positions."""
    return Measurement(value=fire.max_ratio, n=fire.n_positions[ANSWER],
                       details={**dataclasses.asdict(fire), **extra})


# ------------------------------------------------------------------------------------------- one study


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureStudy:
    """One feature's token sets (plain text, MC prompts), the comparison, and its top contexts."""

    feature: int
    reading: str
    sets: tuple[TokenSet, TokenSet]
    firing: Firing
    contexts: tuple[Context, ...]


def study_features(model, checkpoint, params, features: Sequence[int], questions: Sequence[MCQuestion], *, fmt: str,
                   layer: int, hook: str, n_plain_tokens: int, top_n: int = 20, reading: str = "encoder",
                   seed: int = 0, corpus=None, batch_size: int = 16) -> dict[int, FeatureStudy]:
    """{feature: FeatureStudy}: the plain text and the MC prompts run once, every feature read from the same forwards."""
    tok = checkpoint.tokenizer
    max_context = checkpoint.config.max_context
    plain, note = plain_text_sequences(tok, n_tokens=n_plain_tokens, seed=seed, corpus=corpus)
    mc = mc_sequences(tok, questions, fmt=fmt, max_len=max_context)
    run = dict(layer=layer, hook=hook, max_context=max_context, reading=reading, batch_size=batch_size)
    plain_acts = sequence_activations(model, params, features, list(plain), **run)
    mc_acts = sequence_activations(model, params, features, list(mc.ids), **run)
    out = {}
    for f in features:
        sets = (plain_token_set(plain, plain_acts[int(f)], note=note), mc_token_set(mc, mc_acts[int(f)]))
        top = pooled_top(sets, top_n)
        out[int(f)] = FeatureStudy(feature=int(f), reading=reading, sets=sets,
                                   firing=firing(sets, feature=int(f), reading=reading, top_n=top_n),
                                   contexts=tuple(contexts(sets, top, lambda t: tok.decode([t]))))
    return out
