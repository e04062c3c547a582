"""C2b: is the model's multiple-choice accuracy an artifact of the question format?

The same questions are asked with their options cyclically rotated (the answer key moves with them), in letter
prompt variants ("(A) text" vs "A. text" labels; "Answer: (" + "A" vs "Answer:" + " A"), and in the text and cloze
formats. Reported: accuracy per rotation / variant with Wilson CIs, the spread (max − min), position bias (accuracy
when the answer sits at A/B/C/D, pooled over rotations) and the pick distribution against the key (chi-square).

Every variant reads its letters as they occur after its prefix in the joined encoding (harness.prompts.formats.
letter_continuations), never lone-encoded: on SentencePiece tokenizers "A" after "(" is not the lone "▁A", and " A"
may be several tokens, which are then scored as a sequence (summed log-prob) instead of rejected.

A scorer maps (questions, rotation shift) to option scores [question, option]; the largest score is the pick
(ties share credit). A row of NaN means "not scored" (e.g. too long): such a question is left out of every
rotation and counted, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.special

from harness.data.records import LETTERS, N_CHOICES, MCQuestion
from harness.errors import InputError
from harness.model import capture
from harness.prompts import formats
from harness.runs.batching import Batch, run_batches
from harness.scoring import scores, stats

SHIFTS: tuple[int, ...] = (0, 1, 2, 3)
Scorer = Callable[[Sequence[MCQuestion], int], np.ndarray]  # (rotated questions, shift) -> scores [question, option]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LetterVariant:
    """One letter prompt: how choices are labelled, what opens the answer, and the letter continuation.

    `label` and `continuation` are format strings with {letter} (and {choice} for the label).
    """

    name: str
    label: str
    prefix: str
    continuation: str


VARIANTS: tuple[LetterVariant, ...] = (
    LetterVariant(name="paren-open", label="({letter}) {choice}", prefix="Answer: (", continuation="{letter}"),  # the original
    LetterVariant(name="paren-space", label="({letter}) {choice}", prefix="Answer:", continuation=" {letter}"),  # lm-eval style
    LetterVariant(name="dot-space", label="{letter}. {choice}", prefix="Answer:", continuation=" {letter}"),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}


def rotate(question: MCQuestion, shift: int) -> MCQuestion:
    """The question with option i moved to slot (i + shift) % 4 and the answer key moved with it."""
    s = int(shift) % N_CHOICES
    choices = tuple(question.choices[(i - s) % N_CHOICES] for i in range(N_CHOICES))
    return dataclasses.replace(question, choices=choices, answer=(question.answer + s) % N_CHOICES,
                               qid=question.qid if s == 0 else f"{question.qid}@rot{s}")


def variant_context(tokenizer, question: MCQuestion, variant: LetterVariant) -> str:
    """The chat-rendered prompt of one variant, ending where the letter is to be predicted."""
    listed = "\n".join(variant.label.format(letter=l, choice=c) for l, c in zip(LETTERS, question.choices))
    user = f"{question.question}\nChoices:\n{listed}"
    return formats.user_turn(tokenizer, user) + variant.prefix


def letter_reading(tokenizer, context: str, variant: LetterVariant, *, where: str = "") -> formats.LetterContinuations:
    """The four letters of `variant` as they occur after `context` in the joined encoding (never lone-encoded).

    On SentencePiece tokenizers a lone "A" is "▁A" but after "(" it is the bare "A", and " A" is two tokens:
    see `harness.prompts.formats.letter_continuations`, which also counts boundary mismatches.
    """
    letters = [variant.continuation.format(letter=letter) for letter in LETTERS]
    return formats.letter_continuations(tokenizer, context, letters, where=where or f"variant {variant.name}")


def next_token_logits(model, checkpoint, contexts: Sequence[Sequence[int]], probes: Sequence[Sequence[int]], *,
                      batch_size: int = 16, token_budget: int = 4096) -> np.ndarray:
    """Logits [sequence, probe] of the `probes` token ids at each context's last position (one forward per context).

    The unembedding runs at each context's last position only (capture's `logit_positions`).
    """
    max_len = checkpoint.config.max_context
    if max((len(c) for c in contexts), default=0) > max_len:
        raise InputError(f"context of {max(len(c) for c in contexts)} tokens exceeds the model's {max_len} (not truncated)")
    out = np.full((len(contexts), len(probes[0]) if probes else 0), np.nan, np.float32)

    def forward(batch: Batch):
        at = np.zeros((batch.rows, 1), np.int32)
        at[: len(batch.members), 0] = [len(contexts[i]) - 1 for i in batch.members]
        return capture.residual_and_logits(model, batch.tokens, layer=checkpoint.config.n_layers - 1, where="post",
                                           max_context=max_len, logit_positions=at)[1]

    def take(batch: Batch, logits) -> None:
        logits = np.asarray(logits[:, 0])
        for r, i in enumerate(batch.members):
            out[i] = logits[r, list(probes[i])]

    run_batches(contexts, forward=forward, take=take, max_len=max_len, batch_size=batch_size,
                token_budget=token_budget, label="next-token logits")
    return out


def continuation_logprobs(model, checkpoint, sequences: Sequence[Sequence[int]], starts: Sequence[int], *,
                          batch_size: int = 16, token_budget: int = 4096) -> np.ndarray:
    """Summed log-prob [sequence] of `sequences[i][starts[i]:]` given the tokens before it (one forward per sequence).

    The unembedding and log-softmax run only at the positions that predict a scored token.
    """
    max_len = checkpoint.config.max_context
    lengths = [len(s) for s in sequences]
    if max(lengths, default=0) > max_len:
        raise InputError(f"sequence of {max(lengths)} tokens exceeds the model's {max_len} (not truncated)")
    if any(not 1 <= st < n for st, n in zip(starts, lengths)):
        raise InputError("continuation_logprobs: every start must lie in 1..len(sequence)-1")
    out = np.full(len(sequences), np.nan)

    def forward(batch: Batch):
        k = max(lengths[i] - starts[i] for i in batch.members)
        at = np.zeros((batch.rows, k), np.int32)
        for r, i in enumerate(batch.members):
            pos = np.arange(starts[i] - 1, lengths[i] - 1)
            at[r, : pos.size], at[r, pos.size:] = pos, pos[-1]
        return capture.residual_and_logits(model, batch.tokens, layer=checkpoint.config.n_layers - 1, where="post",
                                           max_context=max_len, logit_positions=at)[1]

    def take(batch: Batch, logits) -> None:
        logp = scipy.special.log_softmax(np.asarray(logits, np.float64), axis=-1)   # [rows, k, vocab]
        for r, i in enumerate(batch.members):
            targets = np.asarray(sequences[i][starts[i]:])
            out[i] = logp[r, np.arange(targets.size), targets].sum()

    run_batches(sequences, forward=forward, take=take, max_len=max_len, batch_size=batch_size,
                token_budget=token_budget, label="continuation log-probs")
    return out


def letter_scorer(model, checkpoint, variant: LetterVariant, *, batch_size: int = 16) -> Scorer:
    """A scorer reading the four letters after the variant's prompt, as they occur in the joined encoding.

    Where every letter is one token right after the whole context the score is its next-token logit (one forward per
    question); otherwise each letter's tokens after the shared prefix are scored by their summed log-prob (the same
    ranking as the logits in the one-token case). Per call the scorer appends to `mismatches` (boundary mismatches)
    and `sequence_scored` (questions scored as sequences).
    """
    tok = checkpoint.tokenizer

    def score(questions: Sequence[MCQuestion], shift: int) -> np.ndarray:
        read = [letter_reading(tok, variant_context(tok, q, variant), variant, where=f"variant {variant.name}, question {q.qid}")
                for q in questions]
        score.mismatches.append(sum(r.boundary_mismatches for r in read))
        out = np.full((len(read), N_CHOICES), np.nan)
        single = [i for i, r in enumerate(read) if r.single_tokens is not None]
        multi = [i for i, r in enumerate(read) if r.single_tokens is None]
        score.sequence_scored.append(len(multi))
        if single:
            out[single] = next_token_logits(model, checkpoint, [read[i].context_ids for i in single],
                                            [read[i].single_tokens for i in single], batch_size=batch_size)
        if multi:
            seqs = [ids for i in multi for ids in read[i].ids]
            starts = [read[i].start for i in multi for _ in range(N_CHOICES)]
            out[multi] = continuation_logprobs(model, checkpoint, seqs, starts, batch_size=batch_size).reshape(-1, N_CHOICES)
        return out

    score.mismatches = []
    score.sequence_scored = []
    return score


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotationStudy:
    """Accuracy of one scorer under the 4 cyclic rotations of the same n questions (rotation axis = SHIFTS).

    by_position[p]: accuracy over the (question, rotation) pairs whose answer sits at letter p (n each, since
    every question has its answer at each position exactly once); picks/key: pooled counts over rotations.
    """

    name: str
    n: int
    n_unscored: int
    accuracy: tuple[stats.Accuracy, ...]
    by_position: tuple[stats.Accuracy, ...]
    picks: tuple[float, ...]
    key: tuple[int, ...]
    test: stats.GoodnessOfFit

    @property
    def spread(self) -> float:
        values = [a.value for a in self.accuracy]
        return max(values) - min(values)


def rotation_study(questions: Sequence[MCQuestion], scorer: Scorer, *, name: str, shifts=SHIFTS) -> RotationStudy:
    """Score every rotation of `questions`; questions unscored in any rotation are left out of all and counted."""
    qs = tuple(questions)
    if not qs:
        raise InputError(f"rotation study {name}: no questions")
    per_shift = []
    for s in shifts:
        rotated = [rotate(q, s) for q in qs]
        got = np.asarray(scorer(rotated, s), dtype=float)
        if got.shape != (len(qs), N_CHOICES):
            raise InputError(f"rotation study {name}: scorer returned shape {got.shape}, expected ({len(qs)}, {N_CHOICES})")
        per_shift.append((got, np.array([q.answer for q in rotated])))
    ok = np.all([np.all(np.isfinite(g), axis=1) for g, _ in per_shift], axis=0)
    if not ok.any():
        raise InputError(f"rotation study {name}: no question was scored in every rotation")
    credit = [scores.argmax_credit(g[ok], a[ok]) for g, a in per_shift]
    answers = np.concatenate([a[ok] for _, a in per_shift])
    pooled_credit = np.concatenate(credit)
    pooled_scores = np.concatenate([g[ok] for g, _ in per_shift])
    picks = scores.pick_distribution(pooled_scores)
    key = np.bincount(answers, minlength=N_CHOICES)
    return RotationStudy(
        name=name, n=int(ok.sum()), n_unscored=int((~ok).sum()),
        accuracy=tuple(stats.Accuracy.from_credit(c) for c in credit),
        by_position=tuple(stats.Accuracy.from_credit(pooled_credit[answers == p]) for p in range(N_CHOICES)),
        picks=tuple(float(p) for p in picks), key=tuple(int(k) for k in key),
        test=stats.pick_distribution_test(picks, key, method="pearson"),
    )


def markdown_section(study: RotationStudy, accuracies: Mapping[str, stats.Accuracy]) -> str:
    """A short report section: accuracy per rotation / position / variant with CIs and the pick test."""
    lines = [f"### Format robustness (C2b): variant {study.name}, n = {study.n} questions", "",
             "| rotation | accuracy [95% CI] | | answer at | accuracy [95% CI] | picks | key |", "|---|---|---|---|---|---|---|"]
    for s, a, l, p, pk, k in zip(SHIFTS, study.accuracy, LETTERS, study.by_position, study.picks, study.key):
        lines.append(f"| shift {s} | {a.value:.3f} [{a.lo:.3f}, {a.hi:.3f}] | | {l} | {p.value:.3f} [{p.lo:.3f}, {p.hi:.3f}] | {pk:g} | {k} |")
    lines += ["", f"Pick distribution vs key: chi-square {study.test.statistic:.1f} (dof {study.test.dof}), p = {study.test.pvalue:.3g}.",
              "", "| variant / format | accuracy [95% CI] | n |", "|---|---|---|"]
    lines += [f"| {k} | {a.value:.3f} [{a.lo:.3f}, {a.hi:.3f}] | {a.n} |" for k, a in accuracies.items()]
    return "\n".join(lines) + "\n"
