"""Option runs: every option of a question set in one format, the residual at the scored position and the log-probs.

By default a question's 4 continuations are packed after their shared context in one row (harness.runs.packing);
`packed=False` runs each option as its own sequence, as the original did. Either way the forwards go through
harness.runs.batching (bucket plan, padding, progress); attention is causal, so right padding changes nothing at the
real positions. Questions whose sequence exceeds the context are skipped and listed, never truncated.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harness.data.records import N_CHOICES, MCQuestion
from harness.errors import InputError
from harness.model import capture
from harness.model.parallel import batch_multiple
from harness.prompts.formats import PromptTooLong, QuestionPrompts, build_prompts, check_format, letter_probe
from harness.runs.batching import (
    MAX_SHAPES,
    PAD_ID,
    Batch,
    BatchStats,
    ProgressFn,
    plan_batches,
    run_batches,
    run_plan,
)
from harness.runs.packing import pack_shared_prefix, stack_rows

HOOKS = {"resid_pre": "pre", "resid_post": "post"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptionRun:
    """One format's forward results on a question set (axis order documented per field)."""

    fmt: str                                   # "letter" | "text" | "cloze"
    questions: tuple[MCQuestion, ...]          # the scored questions (skipped ones excluded)
    resid: np.ndarray                          # [question, option, embedding] float32 residual at layer/hook, scored position
    logprob: np.ndarray                        # [question, option] summed log-prob of the option's continuation tokens
    n_tokens: np.ndarray                       # [question, option] continuation token counts
    n_chars: np.ndarray                        # [question, option] continuation characters (acc_norm)
    letter_logits: np.ndarray | None           # [question, 4] next-token logits of the letter tokens after "Answer: (" (letter only;
                                               # a question whose letters are several tokens: their summed log-probs)
    layer: int
    hook: str                                  # "resid_pre" | "resid_post"
    skipped: tuple[tuple[str, str], ...]       # (qid, reason) of questions not scored
    boundary_mismatches: int                   # sequences where tokenize(ctx)+tokenize(cont) != tokenize(ctx+cont)
    n_sequences: int = 0                       # option sequences run
    padded_tokens: int = 0                     # tokens processed including padding (cost)
    seconds: float = 0.0                       # wall time of the collection
    batches: BatchStats | None = None          # shapes, padding and timings of the forwards (None: read from the cache)

    @property
    def answers(self) -> np.ndarray:
        """[question] answer index 0..3 of each scored question."""
        return np.array([q.answer for q in self.questions], dtype=np.int64)

    @property
    def n(self) -> int:
        return len(self.questions)

    def summary(self) -> str:
        """One line for logs and reports."""
        return (f"{self.fmt}: n={self.n}, skipped {len(self.skipped)}, boundary mismatches {self.boundary_mismatches}"
                f"/{self.n_sequences} sequences, {self.padded_tokens} padded tokens, {self.seconds:.1f}s")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Seq:
    """One sequence to run and where its results go: flat index = question * 4 + option."""

    index: int
    ids: tuple[int, ...]
    cont_start: int
    probe: tuple[int, ...]  # token ids whose logits at cont_start - 1 are read (the letters), or ()


@jax.jit
def _gather(resid, logits, tokens, lengths, cont_start, probe_ids):
    """Per row: residual at the last real token, summed continuation log-prob, logits of `probe_ids` before the continuation."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)                      # [batch, seq, vocab]
    target = jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]      # [batch, seq-1]: log p(token t+1)
    t = jnp.arange(1, tokens.shape[1])[None, :]
    in_cont = (t >= cont_start[:, None]) & (t < lengths[:, None])
    logprob = jnp.sum(jnp.where(in_cont, target, 0.0), axis=1)
    scored = jnp.take_along_axis(resid, (lengths - 1)[:, None, None], axis=1)[:, 0]       # [batch, embedding]
    before = jnp.take_along_axis(logits, (cont_start - 1)[:, None, None], axis=1)[:, 0]   # [batch, vocab]
    probe = jnp.take_along_axis(before, probe_ids, axis=1)                                 # [batch, 4]
    return scored.astype(jnp.float32), logprob, probe.astype(jnp.float32)


def run_sequences(model, seqs: list[_Seq], *, layer: int, where: str, max_len: int, batch_size: int,
                  token_budget: int, d_model: int, progress: ProgressFn | None, desc: str,
                  max_shapes: int = MAX_SHAPES):
    """(resid [n, embedding], logprob [n], probe logits [n, 4], BatchStats) for `seqs`, in their order."""
    n = len(seqs)
    resid = np.zeros((n, d_model), np.float32)
    logprob = np.zeros(n, np.float64)
    probe = np.full((n, N_CHOICES), np.nan, np.float32)

    def forward(batch: Batch):
        rows = batch.rows
        lengths, cont = np.ones(rows, np.int32), np.ones(rows, np.int32)
        probe_ids = np.zeros((rows, N_CHOICES), np.int32)
        for r, i in enumerate(batch.members):
            lengths[r], cont[r] = len(seqs[i].ids), seqs[i].cont_start
            if seqs[i].probe:
                probe_ids[r] = seqs[i].probe
        r_all, logits = capture.residual_and_logits(model, batch.tokens, layer=layer, where=where, max_context=max_len)
        return _gather(r_all, logits, jnp.asarray(batch.tokens), jnp.asarray(lengths), jnp.asarray(cont),
                       jnp.asarray(probe_ids))

    def take(batch: Batch, got) -> None:
        members, k = batch.members, len(batch.members)
        got_resid, got_logprob, got_probe = (np.asarray(g) for g in got)
        resid[members], logprob[members] = got_resid[:k], got_logprob[:k]
        has_probe = np.array([bool(seqs[i].probe) for i in members])
        probe[np.asarray(members)[has_probe]] = got_probe[:k][has_probe]

    stats = run_batches([s.ids for s in seqs], forward=forward, take=take, max_len=max_len, batch_size=batch_size,
                        token_budget=token_budget, max_shapes=max_shapes, progress=progress, label=desc)
    return resid, logprob, probe, stats


@jax.jit
def _gather_packed(resid, logits, score_pos, pred_idx, target_ids, target_opt):
    """Per packed row: residuals at the 4 scored positions, and each option's summed log-prob.

    `logits` [batch, k, vocab] were computed at the predictor positions only; `pred_idx`, `target_ids`,
    `target_opt` [batch, T] say which of the k logit rows predicts which token of which option (-1: padding).
    """
    scored = jnp.take_along_axis(resid, score_pos[..., None], axis=1)                      # [batch, 4, embedding]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)                        # [batch, k, vocab]
    picked = jnp.take_along_axis(jnp.take_along_axis(logp, pred_idx[..., None], axis=1), target_ids[..., None], axis=2)[..., 0]
    onehot = target_opt[..., None] == jnp.arange(N_CHOICES)                               # [batch, T, 4]
    logprob = jnp.sum(jnp.where(onehot, picked[..., None], 0.0), axis=1)                   # [batch, 4]
    return scored.astype(jnp.float32), logprob


def packed_plan(prompts: Sequence[QuestionPrompts], *, max_len: int, token_budget: int, multiple: int = 1,
                max_shapes: int = MAX_SHAPES):
    """(packed rows, plan_batches plan over them, predictor count per padded length) of run_packed.

    The predictor count (logit positions per row) is the most any row of that length needs, so that it adds no
    compiled shapes beyond the plan's (rows, length) pairs; unused predictor slots are masked out.
    """
    rows = [pack_shared_prefix(p.options[0].ids[: p.options[0].cont_start], [o.ids[o.cont_start :] for o in p.options])
            for p in prompts]
    # A packed row holds one prefix and 4 continuations, each option within max_len: at most 4 * max_len tokens.
    plan = plan_batches([len(r.ids) for r in rows], max_len=N_CHOICES * max_len, batch_size=token_budget,
                        token_budget=token_budget, multiple=multiple, max_shapes=max_shapes)
    n_pred_at: dict[int, int] = {}
    for length, _, members in plan:
        n_pred_at[length] = max(n_pred_at.get(length, 1), *(sum(rows[i].lengths) for i in members))
    return rows, plan, n_pred_at


def run_packed(model, prompts: list[QuestionPrompts], *, layer: int, where: str, max_len: int, token_budget: int,
               d_model: int, progress: ProgressFn | None, desc: str, max_shapes: int = MAX_SHAPES):
    """The packed path: each question's 4 continuations after one shared context in one row (see harness.runs.packing).

    Returns (resid [q, 4, embedding], logprob [q, 4], letter logits [q, 4] or NaN, BatchStats).
    """
    nq = len(prompts)
    rows, plan, n_pred_at = packed_plan(prompts, max_len=max_len, token_budget=token_budget, multiple=batch_multiple(),
                                        max_shapes=max_shapes)
    resid = np.zeros((nq, N_CHOICES, d_model), np.float32)
    logprob = np.zeros((nq, N_CHOICES), np.float64)
    probe = np.full((nq, N_CHOICES), np.nan, np.float32)

    def build(members, n_rows: int, length: int) -> dict:
        ids, positions, segments = stack_rows([rows[i] for i in members], length, pad_id=PAD_ID)
        ids, positions, segments = (np.concatenate([a, np.repeat(a[-1:], n_rows - len(members), 0)])
                                    for a in (ids, positions, segments))
        n_pred = n_pred_at[length]
        pred_pos = np.zeros((n_rows, n_pred), np.int32)   # row index (in the packed row) of each predictor
        target_ids = np.zeros((n_rows, n_pred), np.int32)
        target_opt = np.full((n_rows, n_pred), -1, np.int32)
        score_pos = np.zeros((n_rows, N_CHOICES), np.int32)
        for r, i in enumerate(members):
            row, k = rows[i], 0
            score_pos[r] = row.last
            for o in range(N_CHOICES):
                pred, tgt = row.predictors(o), row.targets(o)
                pred_pos[r, k : k + len(pred)], target_ids[r, k : k + len(pred)], target_opt[r, k : k + len(pred)] = pred, tgt, o
                k += len(pred)
        pred_idx = np.broadcast_to(np.arange(n_pred, dtype=np.int32), (n_rows, n_pred))
        return dict(members=members, ids=ids, length=length, positions=positions, segments=segments,
                    pred_pos=pred_pos, gather=(score_pos, pred_idx, target_ids, target_opt))

    def forward(b: dict):
        # Every position is within the context (build_prompts checked each option); the packed row may be longer.
        r_all, logits = capture.residual_and_logits(model, b["ids"], layer=layer, where=where, max_context=b["length"],
                                                    positions=b["positions"], segments=b["segments"],
                                                    logit_positions=b["pred_pos"])
        return logits, _gather_packed(r_all, logits, *b["gather"])

    def take(b: dict, out) -> None:
        logits, got = out
        members, k = b["members"], len(b["members"])
        got_resid, got_logprob = (np.asarray(g) for g in got)
        resid[members], logprob[members] = got_resid[:k], got_logprob[:k]
        # The letter logits are read at the end of the shared context: every option's first predictor.
        first = np.asarray(logits)[:k, 0]                                                   # [k, vocab]
        for r, i in enumerate(members):
            if prompts[i].fmt == "letter":
                ids = letter_probe(prompts[i])
                probe[i] = first[r, list(ids)] if ids is not None else got_logprob[r]

    stats = run_plan(plan, [len(r.ids) for r in rows], build=build, forward=forward, take=take, progress=progress,
                     label=desc)
    return resid, logprob, probe, stats


def prepare(tokenizer, questions, *, fmt: str, max_len: int) -> tuple[list[tuple[MCQuestion, QuestionPrompts]], list[tuple[str, str]]]:
    """Prompts of each question, and (qid, reason) of those too long to run (counted, never truncated)."""
    kept, skipped = [], []
    for q in questions:
        try:
            kept.append((q, build_prompts(tokenizer, q, fmt, max_len=max_len)))
        except PromptTooLong as why:
            skipped.append((q.qid, str(why)))
    return kept, skipped


def collect(model, checkpoint, questions, *, fmt: str, layer: int, hook: str = "resid_pre", batch_size: int = 16,
            progress: ProgressFn | None | bool = None, max_len: int | None = None, token_budget: int = 4096,
            packed: bool = True, max_shapes: int = MAX_SHAPES) -> OptionRun:
    """Run every option sequence of `questions` in format `fmt`; see OptionRun for what comes back.

    `packed` (default) scores a question's 4 options in one row over their shared context (run_packed);
    `packed=False` runs 4 separate sequences per question, as the original did — the same numbers, 2–4× the cost.
    `max_len` (default: the model's context) bounds a sequence; `token_budget` bounds rows × padded length per batch;
    `max_shapes` bounds the distinct batch shapes (jit compiles). `progress(Progress)` is called after every batch
    (None or False: not at all); nothing is printed.
    """
    if progress is False:
        progress = None
    if progress is not None and not callable(progress):
        raise InputError(f"progress={progress!r}: expected a callable taking a Progress, or None")
    check_format(fmt)
    if hook not in HOOKS:
        raise InputError(f"hook {hook!r}: expected one of {tuple(HOOKS)}")
    context = checkpoint.config.max_context
    max_len = context if max_len is None else min(int(max_len), context)
    if batch_size < 1 or token_budget < 1 or max_shapes < 1:
        raise InputError(f"batch_size={batch_size}, token_budget={token_budget}, max_shapes={max_shapes}: "
                         f"expected positive integers")
    start = time.perf_counter()
    prepared, skipped = prepare(checkpoint.tokenizer, tuple(questions), fmt=fmt, max_len=max_len)
    d_model, nq = checkpoint.config.d_model, len(prepared)
    if packed:
        resid, logprob, probe, stats = run_packed(
            model, [p for _, p in prepared], layer=layer, where=HOOKS[hook], max_len=max_len, token_budget=token_budget,
            d_model=d_model, progress=progress, desc=f"{fmt} packed forwards",
            max_shapes=max_shapes,
        )
        n_sequences = nq
    else:
        seqs = []
        for qi, (_, prompts) in enumerate(prepared):
            probe = (letter_probe(prompts) or ()) if fmt == "letter" else ()
            for oi, option in enumerate(prompts.options):
                seqs.append(_Seq(index=qi * N_CHOICES + oi, ids=option.ids, cont_start=option.cont_start,
                                 probe=probe if oi == 0 else ()))
        resid, logprob, probe, stats = run_sequences(
            model, seqs, layer=layer, where=HOOKS[hook], max_len=max_len, batch_size=batch_size,
            token_budget=token_budget, d_model=d_model, progress=progress, desc=f"{fmt} forwards", max_shapes=max_shapes,
        )
        probe = probe.reshape(nq, N_CHOICES, N_CHOICES)[:, 0]
        multi = np.isnan(probe).all(axis=1)  # letters of several tokens: scored by their summed log-probs
        probe[multi] = logprob.reshape(nq, N_CHOICES)[multi]
        n_sequences = len(seqs)
    options = [o for _, p in prepared for o in p.options]
    return OptionRun(
        fmt=fmt,
        questions=tuple(q for q, _ in prepared),
        resid=resid.reshape(nq, N_CHOICES, d_model),
        logprob=logprob.reshape(nq, N_CHOICES),
        n_tokens=np.array([o.n_tokens for o in options], np.int64).reshape(nq, N_CHOICES),
        n_chars=np.array([o.n_chars for o in options], np.int64).reshape(nq, N_CHOICES),
        letter_logits=probe if fmt == "letter" else None,
        layer=layer,
        hook=hook,
        skipped=tuple(skipped),
        boundary_mismatches=sum(p.boundary_mismatches for _, p in prepared),
        n_sequences=n_sequences,
        padded_tokens=stats.padded_tokens,
        seconds=time.perf_counter() - start,
        batches=stats,
    )


def to_arrays(run: OptionRun) -> dict[str, np.ndarray]:
    """An OptionRun as plain arrays (for the activation cache); `from_arrays` inverts it."""
    arrays = {
        "resid": run.resid, "logprob": run.logprob, "n_tokens": run.n_tokens, "n_chars": run.n_chars,
        "qids": np.array([q.qid for q in run.questions]),
        "skipped": np.array([f"{qid}\t{why}" for qid, why in run.skipped], dtype=str).reshape(-1),
        "counts": np.array([run.boundary_mismatches, run.n_sequences, run.padded_tokens], np.int64),
        "seconds": np.array(run.seconds),
    }
    if run.letter_logits is not None:
        arrays["letter_logits"] = run.letter_logits
    return arrays


def from_arrays(arrays: dict[str, np.ndarray], questions, *, fmt: str, layer: int, hook: str) -> OptionRun:
    """Rebuild an OptionRun of `questions` (the set it was computed on) from `to_arrays` output."""
    by_qid = {q.qid: q for q in questions}
    mismatches, n_sequences, padded = (int(x) for x in arrays["counts"])
    return OptionRun(
        fmt=fmt,
        questions=tuple(by_qid[str(qid)] for qid in arrays["qids"]),
        resid=arrays["resid"], logprob=arrays["logprob"], n_tokens=arrays["n_tokens"], n_chars=arrays["n_chars"],
        letter_logits=arrays.get("letter_logits"),
        layer=layer, hook=hook,
        skipped=tuple(tuple(str(s).split("\t", 1)) for s in arrays["skipped"]),
        boundary_mismatches=mismatches, n_sequences=n_sequences, padded_tokens=padded, seconds=float(arrays["seconds"]),
    )
