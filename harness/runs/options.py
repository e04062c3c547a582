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
from harness.runs.packing import Packed, pack_trie, stack_rows

# An SAE's hook point (SAELens' blocks.L.hook_<name>, saex, Gemma Scope folders) -> capture's `where`.
HOOKS = {"resid_pre": "pre", "resid_post": "post", "attn_out": "attn_out", "mlp_out": "mlp_out"}


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
    n_sequences: int = 0                       # rows run: packed, one per question; unpacked, one per option
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

    @property
    def picks(self) -> np.ndarray:
        """[question] the option the model picks by the format's own reading (letter logits for letter, summed
        log-prob otherwise): the first highest score."""
        return np.argmax(self.letter_logits if self.fmt == "letter" else self.logprob, axis=1)

    def summary(self) -> str:
        """One line for logs and reports (the run's cost: `cost()`, shared by the formats of one run)."""
        return (f"{self.fmt}: n={self.n}, skipped {len(self.skipped)}, boundary mismatches {self.boundary_mismatches}"
                f" of {N_CHOICES * self.n} sequences")

    def cost(self) -> str:
        return f"{self.n_sequences} rows run, {self.padded_tokens} padded tokens, {self.seconds:.1f}s"


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
def _gather_packed(resid, logits, score_pos, pred_idx, target_ids, target_slot, probe_at, probe_ids):
    """Per packed row: the residual at each slot's scored position, each slot's summed log-prob, the letter logits.

    A slot is one (format, option) sequence. `logits` [batch, k, vocab] were computed at the predictor rows only;
    `pred_idx`, `target_ids`, `target_slot` [batch, T] say which of the k predicts which token of which slot (-1:
    padding); `probe_ids` [batch, 4] are read from predictor `probe_at` [batch] (the end of the letter context).
    """
    scored = jnp.take_along_axis(resid, score_pos[..., None], axis=1)                      # [batch, slot, embedding]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)                        # [batch, k, vocab]
    picked = jnp.take_along_axis(jnp.take_along_axis(logp, pred_idx[..., None], axis=1), target_ids[..., None], axis=2)[..., 0]
    onehot = target_slot[..., None] == jnp.arange(score_pos.shape[1])                     # [batch, T, slot]
    logprob = jnp.sum(jnp.where(onehot, picked[..., None], 0.0), axis=1)                   # [batch, slot]
    before = jnp.take_along_axis(logits, probe_at[:, None, None], axis=1)[:, 0]            # [batch, vocab]
    probe = jnp.take_along_axis(before, probe_ids, axis=1)                                 # [batch, 4]
    return scored.astype(jnp.float32), logprob, probe.astype(jnp.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackedQuestion:
    """One question's sequences of every format run, packed as one trie row, and where each result is read.

    Slot f * 4 + o is option o in the f-th format of the run; a format the question was skipped in has no slot entries.
    """

    row: Packed
    score_pos: np.ndarray     # [slot] row index of each slot's last token (0 where the slot is not run)
    pred_rows: np.ndarray     # [k] the distinct rows whose logits predict a scored token
    pred_idx: np.ndarray      # [T] for each scored token: its predictor's index into pred_rows
    target_ids: np.ndarray    # [T] the token
    target_slot: np.ndarray   # [T] its slot
    probe_at: int             # index into pred_rows of the letter context's end (0: no letter probe)
    probe_ids: tuple[int, ...]   # the 4 letter ids read there, or ()


def pack_question(prompts: Sequence[QuestionPrompts | None]) -> PackedQuestion:
    """Pack one question's prompts (one per format of the run, None where skipped) into one trie row."""
    seqs, slots, starts = [], [], []
    for f, p in enumerate(prompts):
        for o, option in enumerate(p.options if p is not None else ()):
            seqs.append(option.ids)
            slots.append(f * N_CHOICES + o)
            starts.append(option.cont_start)
    row = pack_trie(seqs)
    score_pos = np.zeros(len(prompts) * N_CHOICES, np.int32)
    preds, targets, target_slot = [], [], []
    for i, (slot, start) in enumerate(zip(slots, starts)):
        score_pos[slot] = row.paths[i][-1]
        preds.append(row.predictors(i, start))
        targets.append(np.asarray(seqs[i][start:], np.int32))
        target_slot += [slot] * (len(seqs[i]) - start)
    pred_rows, pred_idx = np.unique(np.concatenate(preds), return_inverse=True)
    probe_at, probe_ids = 0, ()
    for f, p in enumerate(prompts):
        if p is not None and p.fmt == "letter" and (ids := letter_probe(p)) is not None:
            i = slots.index(f * N_CHOICES)
            probe_at, probe_ids = int(np.searchsorted(pred_rows, row.paths[i][starts[i] - 1])), ids
    return PackedQuestion(row=row, score_pos=score_pos, pred_rows=pred_rows.astype(np.int32),
                          pred_idx=pred_idx.astype(np.int32), target_ids=np.concatenate(targets),
                          target_slot=np.array(target_slot, np.int32), probe_at=probe_at, probe_ids=probe_ids)


def packed_plan(packed: Sequence[PackedQuestion], *, max_len: int, token_budget: int, multiple: int = 1,
                max_shapes: int = MAX_SHAPES):
    """(plan_batches plan over the packed rows, {padded length: (predictors, scored tokens) per row}).

    The per-row predictor and scored-token counts are the most any row of that length needs, so that they add no
    compiled shapes beyond the plan's (rows, length) pairs; unused slots are masked out.
    """
    # A row holds at most 12 sequences (3 formats x 4 options), each within max_len.
    plan = plan_batches([len(q.row.ids) for q in packed], max_len=3 * N_CHOICES * max_len, batch_size=token_budget,
                        token_budget=token_budget, multiple=multiple, max_shapes=max_shapes)
    sizes: dict[int, tuple[int, int]] = {}
    for length, _, members in plan:
        k, n_t = sizes.get(length, (1, 1))
        sizes[length] = (max(k, *(len(packed[i].pred_rows) for i in members)),
                         max(n_t, *(len(packed[i].target_ids) for i in members)))
    return plan, sizes


def run_packed(model, packed: Sequence[PackedQuestion], *, n_slots: int, layer: int, where: str, max_len: int,
               token_budget: int, d_model: int, progress: ProgressFn | None, desc: str, max_shapes: int = MAX_SHAPES):
    """The packed path: one trie row per question (see pack_question), through run_plan.

    Returns (resid [q, slot, embedding], logprob [q, slot], letter logits [q, 4] (NaN: none read), BatchStats).
    """
    nq = len(packed)
    plan, sizes = packed_plan(packed, max_len=max_len, token_budget=token_budget, multiple=batch_multiple(),
                              max_shapes=max_shapes)
    resid = np.zeros((nq, n_slots, d_model), np.float32)
    logprob = np.zeros((nq, n_slots), np.float64)
    probe = np.full((nq, N_CHOICES), np.nan, np.float32)

    def build(members, n_rows: int, length: int) -> dict:
        ids, packing = stack_rows([packed[i].row for i in members], length, n_rows=n_rows, pad_id=PAD_ID)
        k, n_t = sizes[length]
        pred_pos = np.zeros((n_rows, k), np.int32)
        pred_idx, target_ids = np.zeros((n_rows, n_t), np.int32), np.zeros((n_rows, n_t), np.int32)
        target_slot = np.full((n_rows, n_t), -1, np.int32)
        score_pos = np.zeros((n_rows, n_slots), np.int32)
        probe_at, probe_ids = np.zeros(n_rows, np.int32), np.zeros((n_rows, N_CHOICES), np.int32)
        for r, i in enumerate(members):
            q = packed[i]
            pred_pos[r, : len(q.pred_rows)] = q.pred_rows
            n = len(q.target_ids)
            pred_idx[r, :n], target_ids[r, :n], target_slot[r, :n] = q.pred_idx, q.target_ids, q.target_slot
            score_pos[r], probe_at[r] = q.score_pos, q.probe_at
            if q.probe_ids:
                probe_ids[r] = q.probe_ids
        return dict(members=members, ids=ids, length=length, packing=packing, pred_pos=pred_pos,
                    gather=(score_pos, pred_idx, target_ids, target_slot, probe_at, probe_ids))

    def forward(b: dict):
        # Every position is within the context (build_prompts checked each sequence); the packed row may be longer.
        r_all, logits = capture.residual_and_logits(model, b["ids"], layer=layer, where=where, max_context=b["length"],
                                                    packing=b["packing"], logit_positions=b["pred_pos"])
        return _gather_packed(r_all, logits, *b["gather"])

    def take(b: dict, got) -> None:
        members, k = b["members"], len(b["members"])
        got_resid, got_logprob, got_probe = (np.asarray(g) for g in got)
        resid[members], logprob[members] = got_resid[:k], got_logprob[:k]
        read = np.array([bool(packed[i].probe_ids) for i in members])
        probe[np.asarray(members)[read]] = got_probe[:k][read]

    stats = run_plan(plan, [len(q.row.ids) for q in packed], build=build, forward=forward, take=take,
                     progress=progress, label=desc)
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


def _run_arguments(checkpoint, *, fmts, hook, progress, max_len, batch_size, token_budget, max_shapes):
    """Checked arguments of collect / collect_formats: (progress callable or None, max_len)."""
    if progress is False:
        progress = None
    if progress is not None and not callable(progress):
        raise InputError(f"progress={progress!r}: expected a callable taking a Progress, or None")
    if not fmts or len(set(fmts)) != len(fmts):
        raise InputError(f"formats {tuple(fmts)}: expected one or more distinct formats")
    for fmt in fmts:
        check_format(fmt)
    if hook not in HOOKS:
        raise InputError(f"hook {hook!r}: expected one of {tuple(HOOKS)}")
    if batch_size < 1 or token_budget < 1 or max_shapes < 1:
        raise InputError(f"batch_size={batch_size}, token_budget={token_budget}, max_shapes={max_shapes}: "
                         f"expected positive integers")
    context = checkpoint.config.max_context
    return progress, (context if max_len is None else min(int(max_len), context))


def _option_run(fmt: str, prepared, skipped, *, resid, logprob, probe, layer: int, hook: str, n_sequences: int,
                stats: BatchStats, seconds: float) -> OptionRun:
    """The OptionRun of one format from its prepared prompts and its [question, option] arrays."""
    nq = len(prepared)
    options = [o for _, p in prepared for o in p.options]
    if fmt == "letter":   # letters of several tokens were not read as logits: scored by their summed log-probs
        probe = np.array(probe, np.float32)
        multi = np.isnan(probe).all(axis=1)
        probe[multi] = logprob.reshape(nq, N_CHOICES)[multi]
    return OptionRun(
        fmt=fmt,
        questions=tuple(q for q, _ in prepared),
        resid=resid.reshape(nq, N_CHOICES, resid.shape[-1]),
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
        seconds=seconds,
        batches=stats,
    )


def pack_formats(tokenizer, questions, *, fmts: Sequence[str], max_len: int):
    """({format: prepare()'s (kept, skipped)}, the questions run in any format, their PackedQuestion rows)."""
    prepared = {fmt: prepare(tokenizer, tuple(questions), fmt=fmt, max_len=max_len) for fmt in fmts}
    by_fmt = {fmt: {q.qid: p for q, p in kept} for fmt, (kept, _) in prepared.items()}
    run_questions = [q for q in questions if any(q.qid in by_fmt[fmt] for fmt in fmts)]
    return prepared, run_questions, [pack_question([by_fmt[fmt].get(q.qid) for fmt in fmts]) for q in run_questions]


def collect_formats(model, checkpoint, questions, *, fmts: Sequence[str], layer: int, hook: str = "resid_pre",
                    progress: ProgressFn | None | bool = None, max_len: int | None = None, token_budget: int = 4096,
                    max_shapes: int = MAX_SHAPES) -> dict[str, OptionRun]:
    """Every option of `questions` in each format of `fmts`, all formats of a question in one packed trie row.

    The formats share their common prefixes (the chat template, the question; letter and text also the listed
    choices), so three formats cost about half of three separate runs, with the same numbers. The OptionRuns share
    one BatchStats and wall time (the run's, not a format's). A question too long in one format still runs the others.
    """
    progress, max_len = _run_arguments(checkpoint, fmts=fmts, hook=hook, progress=progress, max_len=max_len,
                                       batch_size=1, token_budget=token_budget, max_shapes=max_shapes)
    start = time.perf_counter()
    prepared, run_questions, packed = pack_formats(checkpoint.tokenizer, questions, fmts=fmts, max_len=max_len)
    resid, logprob, probe, stats = run_packed(
        model, packed, n_slots=len(fmts) * N_CHOICES, layer=layer, where=HOOKS[hook], max_len=max_len,
        token_budget=token_budget, d_model=checkpoint.config.d_model, progress=progress,
        desc=f"{'+'.join(fmts)} packed forwards", max_shapes=max_shapes)
    seconds = time.perf_counter() - start
    runs = {}
    for f, fmt in enumerate(fmts):
        kept, skipped = prepared[fmt]
        kept_ids = {q.qid for q, _ in kept}
        rows = np.array([i for i, q in enumerate(run_questions) if q.qid in kept_ids], np.int64)
        slots = slice(f * N_CHOICES, (f + 1) * N_CHOICES)
        runs[fmt] = _option_run(fmt, kept, skipped, resid=resid[rows, slots], logprob=logprob[rows, slots],
                                probe=probe[rows], layer=layer, hook=hook, n_sequences=len(run_questions),
                                stats=stats, seconds=seconds)
    return runs


def collect(model, checkpoint, questions, *, fmt: str, layer: int, hook: str = "resid_pre", batch_size: int = 16,
            progress: ProgressFn | None | bool = None, max_len: int | None = None, token_budget: int = 4096,
            packed: bool = True, max_shapes: int = MAX_SHAPES) -> OptionRun:
    """Run every option sequence of `questions` in format `fmt`; see OptionRun for what comes back.

    `packed` (default) scores a question's 4 options in one trie row over their shared context (collect_formats);
    `packed=False` runs 4 separate sequences per question, as the original did — the same numbers, 2–4× the cost.
    `max_len` (default: the model's context) bounds a sequence; `token_budget` bounds rows × padded length per batch;
    `max_shapes` bounds the distinct batch shapes (jit compiles). `progress(Progress)` is called after every batch
    (None or False: not at all); nothing is printed.
    """
    if packed:
        return collect_formats(model, checkpoint, questions, fmts=(fmt,), layer=layer, hook=hook, progress=progress,
                               max_len=max_len, token_budget=token_budget, max_shapes=max_shapes)[fmt]
    progress, max_len = _run_arguments(checkpoint, fmts=(fmt,), hook=hook, progress=progress, max_len=max_len,
                                       batch_size=batch_size, token_budget=token_budget, max_shapes=max_shapes)
    start = time.perf_counter()
    prepared, skipped = prepare(checkpoint.tokenizer, tuple(questions), fmt=fmt, max_len=max_len)
    nq = len(prepared)
    seqs = []
    for qi, (_, prompts) in enumerate(prepared):
        probe = (letter_probe(prompts) or ()) if fmt == "letter" else ()
        for oi, option in enumerate(prompts.options):
            seqs.append(_Seq(index=qi * N_CHOICES + oi, ids=option.ids, cont_start=option.cont_start,
                             probe=probe if oi == 0 else ()))
    resid, logprob, probe, stats = run_sequences(
        model, seqs, layer=layer, where=HOOKS[hook], max_len=max_len, batch_size=batch_size, token_budget=token_budget,
        d_model=checkpoint.config.d_model, progress=progress, desc=f"{fmt} forwards", max_shapes=max_shapes)
    probe = probe.reshape(nq, N_CHOICES, N_CHOICES)[:, 0]
    return _option_run(fmt, prepared, skipped, resid=resid, logprob=logprob, probe=probe, layer=layer, hook=hook,
                       n_sequences=len(seqs), stats=stats, seconds=time.perf_counter() - start)


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
