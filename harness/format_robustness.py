"""C2b: is the model's multiple-choice accuracy an artifact of the question format?

The same questions are asked with their options cyclically rotated (the answer key moves with them), in letter
prompt variants ("(A) text" vs "A. text" labels; "Answer: (" + "A" vs "Answer:" + " A"), and in the text and cloze
formats. Reported: accuracy per rotation / variant with Wilson CIs, the spread (max − min), position bias (accuracy
when the answer sits at A/B/C/D, pooled over rotations) and the pick distribution against the key (chi-square).

A scorer maps (questions, rotation shift) to option scores [question, option]; the largest score is the pick
(ties share credit). A row of NaN means "not scored" (e.g. too long): such a question is left out of every
rotation and counted, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from harness import scores, stats
from harness.activations import padded_batch, plan_batches
from harness.claims import Measurement
from harness.data.records import LETTERS, N_CHOICES, MCQuestion
from harness.errors import InputError
from harness.model import capture

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
    return tokenizer.render_chat([{"role": "user", "content": user}], add_generation_prompt=True) + variant.prefix


def letter_ids(tokenizer, context: str, variant: LetterVariant) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(context ids, the 4 letter token ids, boundary mismatches): each letter must be one token after the context.

    A mismatch is a letter whose joined tokenization tokenize(context + letter) is not context ids + that token.
    """
    ctx = tokenizer.encode(context)
    ids, mismatches = [], 0
    for letter in LETTERS:
        cont = variant.continuation.format(letter=letter)
        alone = tokenizer.encode(cont, add_bos=False)
        if len(alone) != 1:
            raise InputError(f"variant {variant.name}: continuation {cont!r} is {len(alone)} tokens, expected 1")
        mismatches += tokenizer.encode(context + cont) != ctx + alone
        ids.append(alone[0])
    if len(set(ids)) != N_CHOICES:
        raise InputError(f"variant {variant.name}: the letters tokenize to repeated ids {ids}")
    return tuple(ctx), tuple(ids), mismatches


def unembedding(checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """(final RMSNorm scale [embedding], unembedding W_U [vocabulary, embedding]: lm_head or the tied embedding)."""
    w = checkpoint.weights
    W_U = w["model.embed_tokens.weight"] if checkpoint.config.tie_embeddings else w["lm_head.weight"]
    return np.asarray(w["model.norm.weight"], np.float32), np.asarray(W_U, np.float32)


def next_token_logits(model, checkpoint, contexts: Sequence[Sequence[int]], probes: Sequence[Sequence[int]], *,
                      batch_size: int = 16, token_budget: int = 4096) -> np.ndarray:
    """Logits [sequence, probe] of the `probes` token ids at each context's last position (one forward per context).

    The unembedding runs at each context's last position only (capture's `logit_positions`).
    """
    max_len = checkpoint.config.max_context
    last = checkpoint.config.n_layers - 1
    lengths = [len(c) for c in contexts]
    if max(lengths, default=0) > max_len:
        raise InputError(f"context of {max(lengths)} tokens exceeds the model's {max_len} (not truncated)")
    out = np.full((len(contexts), len(probes[0]) if probes else 0), np.nan, np.float32)
    for length, rows, members in plan_batches(lengths, max_len=max_len, batch_size=batch_size, token_budget=token_budget):
        tokens = padded_batch(contexts, members, rows, length)
        at = np.zeros((rows, 1), np.int32)
        at[: len(members), 0] = [lengths[i] - 1 for i in members]
        _, logits = capture.residual_and_logits(model, tokens, layer=last, where="post", max_context=max_len,
                                                logit_positions=at)
        logits = np.asarray(logits[:, 0])
        for r, i in enumerate(members):
            out[i] = logits[r, list(probes[i])]
    return out


def letter_scorer(model, checkpoint, variant: LetterVariant, *, batch_size: int = 16) -> Scorer:
    """A scorer reading the model's next-token logits of the four letters after the variant's prompt.

    The boundary mismatches seen are added up in the scorer's `mismatches` list (one entry per call).
    """
    tok = checkpoint.tokenizer

    def score(questions: Sequence[MCQuestion], shift: int) -> np.ndarray:
        built = [letter_ids(tok, variant_context(tok, q, variant), variant) for q in questions]
        score.mismatches.append(sum(b[2] for b in built))
        return next_token_logits(model, checkpoint, [b[0] for b in built], [b[1] for b in built], batch_size=batch_size)

    score.mismatches = []
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


def accuracy_of_scores(option_scores, answers) -> stats.Accuracy:
    """Tie-aware argmax accuracy with its Wilson interval of option scores [question, option]."""
    return stats.Accuracy.from_credit(scores.argmax_credit(np.asarray(option_scores, float), np.asarray(answers)))


def _acc(a: stats.Accuracy) -> dict:
    return {"value": round(a.value, 4), "n": a.n, "ci": [round(a.lo, 4), round(a.hi, 4)]}


def rotation_spread(study: RotationStudy) -> Measurement:
    """C2b: max − min accuracy over the 4 rotations, with per-rotation and per-position accuracies in details."""
    return Measurement(value=study.spread, n=study.n, details=study_details(study))


def pick_distribution_p(study: RotationStudy) -> Measurement:
    """C2b: chi-square p-value of the pooled letter picks against the pooled answer key."""
    return Measurement(value=study.test.pvalue, n=int(sum(study.key)), details=study_details(study))


def study_details(study: RotationStudy) -> dict:
    return {
        "variant": study.name, "n_questions": study.n, "n_unscored": study.n_unscored,
        "accuracy_by_rotation": {f"shift {s}": _acc(a) for s, a in zip(SHIFTS, study.accuracy)},
        "accuracy_by_answer_position": {l: _acc(a) for l, a in zip(LETTERS, study.by_position)},
        "picks": dict(zip(LETTERS, [round(p, 2) for p in study.picks])), "key": dict(zip(LETTERS, study.key)),
        "chi_square": round(study.test.statistic, 3), "dof": study.test.dof, "p": study.test.pvalue,
    }


def variant_spread(accuracies: Mapping[str, stats.Accuracy], **extra) -> Measurement:
    """C2b: max − min accuracy over prompt variants and formats on the same questions."""
    if len(accuracies) < 2:
        raise InputError(f"variant_spread: expected at least two variants, got {list(accuracies)}")
    values = {k: a.value for k, a in accuracies.items()}
    n = {a.n for a in accuracies.values()}
    if len(n) != 1:
        raise InputError(f"variant_spread: variants scored different numbers of questions {sorted(n)}; align them first")
    return Measurement(value=max(values.values()) - min(values.values()), n=n.pop(), details={
        "accuracy_by_variant": {k: _acc(a) for k, a in accuracies.items()},
        "best": max(values, key=values.get), "worst": min(values, key=values.get), **extra})


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
