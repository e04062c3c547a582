"""Batched forwards over a question set in one format: the residual at the scored position and the log-probs.

Every (question, option) sequence from `harness.prompts` is run once: sequences are sorted by length, right-padded
to a few bucket lengths (each new shape recompiles the jit) with a fixed number of rows per bucket, and one
forward per batch gives both the residual at the SAE's layer/hook and the logits. Attention is causal, so right
padding changes nothing at the real positions. Questions whose sequence exceeds the context are skipped and listed.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from harness.data.records import N_CHOICES, MCQuestion
from harness.errors import InputError
from harness.model import capture
from harness.model.packing import pack_shared_prefix, stack_rows
from harness.model.parallel import batch_multiple
from harness.prompts import PromptTooLong, QuestionPrompts, build_prompts, check_format, letter_token_ids

HOOKS = {"resid_pre": "pre", "resid_post": "post"}
# Padded lengths: a sequence runs at the smallest bucket that holds it (capped by the model's context).
BUCKETS: tuple[int, ...] = (32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072,
                            4096, 6144, 8192)
PAD_ID = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptionRun:
    """One format's forward results on a question set (axis order documented per field)."""

    fmt: str                                   # "letter" | "text" | "cloze"
    questions: tuple[MCQuestion, ...]          # the scored questions (skipped ones excluded)
    resid: np.ndarray                          # [question, option, embedding] float32 residual at layer/hook, scored position
    logprob: np.ndarray                        # [question, option] summed log-prob of the option's continuation tokens
    n_tokens: np.ndarray                       # [question, option] continuation token counts
    n_chars: np.ndarray                        # [question, option] continuation characters (acc_norm)
    letter_logits: np.ndarray | None           # [question, 4] next-token logits of the letter tokens after "Answer: (" (letter only)
    layer: int
    hook: str                                  # "resid_pre" | "resid_post"
    skipped: tuple[tuple[str, str], ...]       # (qid, reason) of questions not scored
    boundary_mismatches: int                   # sequences where tokenize(ctx)+tokenize(cont) != tokenize(ctx+cont)
    n_sequences: int = 0                       # option sequences run
    padded_tokens: int = 0                     # tokens processed including padding (cost)
    seconds: float = 0.0                       # wall time of the collection

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


def bucket_length(length: int, max_len: int) -> int:
    """Smallest bucket holding `length`, at most `max_len` (a sequence longer than max_len never reaches here)."""
    for b in BUCKETS:
        if b >= length:
            return min(b, max_len)
    return max_len


def plan_batches(lengths: list[int], *, max_len: int, batch_size: int, token_budget: int,
                 multiple: int = 1) -> list[tuple[int, int, list[int]]]:
    """[(padded length, rows, sequence indices)]: length-sorted, rows fixed per bucket so each shape compiles once.

    Rows are a multiple of `multiple` (the device count) so that a batch splits evenly over the devices.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    by_bucket: dict[int, list[int]] = {}
    for i in order:
        by_bucket.setdefault(bucket_length(lengths[i], max_len), []).append(i)
    plan = []
    for length, members in sorted(by_bucket.items()):
        rows = max(1, min(batch_size, token_budget // length))
        rows = max(multiple, rows - rows % multiple)
        for k in range(0, len(members), rows):
            chunk = members[k : k + rows]
            # A short (last) chunk runs at the next power of two rows, not a full batch of padding rows.
            n = min(rows, max(multiple, 1 << (len(chunk) - 1).bit_length()))
            plan.append((length, n + (-n) % multiple, chunk))
    return plan


def padded_batch(sequences, members: list[int], rows: int, length: int) -> np.ndarray:
    """Token ids [rows, length] of `sequences[members]`, right-padded with PAD_ID (rows past the members: all padding)."""
    tokens = np.full((rows, length), PAD_ID, np.int32)
    for r, i in enumerate(members):
        tokens[r, : len(sequences[i])] = sequences[i]
    return tokens


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
                  token_budget: int, d_model: int, progress: bool, desc: str):
    """(resid [n, embedding], logprob [n], probe logits [n, 4], padded tokens) for `seqs`, in their order."""
    n = len(seqs)
    resid = np.zeros((n, d_model), np.float32)
    logprob = np.zeros(n, np.float64)
    probe = np.full((n, N_CHOICES), np.nan, np.float32)
    ids = [s.ids for s in seqs]
    plan = plan_batches([len(i) for i in ids], max_len=max_len, batch_size=batch_size, token_budget=token_budget)
    padded = 0
    bar = tqdm(total=n, desc=desc, unit="seq", leave=False, disable=not progress)
    for length, rows, members in plan:
        tokens = padded_batch(ids, members, rows, length)
        lengths = np.ones(rows, np.int32)
        cont = np.ones(rows, np.int32)
        probe_ids = np.zeros((rows, N_CHOICES), np.int32)
        for r, i in enumerate(members):
            s = seqs[i]
            lengths[r], cont[r] = len(s.ids), s.cont_start
            if s.probe:
                probe_ids[r] = s.probe
        r_all, logits = capture.residual_and_logits(model, tokens, layer=layer, where=where, max_context=max_len)
        got = _gather(r_all, logits, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(cont), jnp.asarray(probe_ids))
        got_resid, got_logprob, got_probe = (np.asarray(g) for g in got)
        k = len(members)
        resid[members] = got_resid[:k]
        logprob[members] = got_logprob[:k]
        has_probe = np.array([bool(seqs[i].probe) for i in members])
        probe[np.asarray(members)[has_probe]] = got_probe[:k][has_probe]
        padded += rows * length
        bar.update(k)
    bar.close()
    return resid, logprob, probe, padded


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


def run_packed(model, prompts: list[QuestionPrompts], *, layer: int, where: str, max_len: int, token_budget: int,
               d_model: int, batch_multiple: int, progress: bool, desc: str):
    """The packed path: each question's 4 continuations after one shared context in one row (see harness.model.packing).

    Returns (resid [q, 4, embedding], logprob [q, 4], letter logits [q, 4] or NaN, padded tokens).
    """
    nq = len(prompts)
    rows = [pack_shared_prefix(p.options[0].ids[: p.options[0].cont_start], [o.ids[o.cont_start :] for o in p.options])
            for p in prompts]
    resid = np.zeros((nq, N_CHOICES, d_model), np.float32)
    logprob = np.zeros((nq, N_CHOICES), np.float64)
    probe = np.full((nq, N_CHOICES), np.nan, np.float32)
    plan = plan_batches([len(r.ids) for r in rows], max_len=max(BUCKETS[-1], max_len), batch_size=token_budget,
                        token_budget=token_budget, multiple=batch_multiple)
    padded = 0
    bar = tqdm(total=nq, desc=desc, unit="question", leave=False, disable=not progress)
    for length, n_rows, members in plan:
        ids, positions, segments = stack_rows([rows[i] for i in members], length, pad_id=PAD_ID)
        ids, positions, segments = (np.concatenate([a, np.repeat(a[-1:], n_rows - len(members), 0)]) for a in (ids, positions, segments))
        n_pred = max(sum(rows[i].lengths) for i in members)
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
        # Every position is within the context (build_prompts checked each option); the packed row may be longer.
        r_all, logits = capture.residual_and_logits(model, ids, layer=layer, where=where, max_context=length,
                                                    positions=positions, segments=segments, logit_positions=pred_pos)
        pred_idx = np.broadcast_to(np.arange(n_pred, dtype=np.int32), (n_rows, n_pred))
        got_resid, got_logprob = (np.asarray(g) for g in _gather_packed(r_all, logits, score_pos, pred_idx, target_ids, target_opt))
        k = len(members)
        resid[members], logprob[members] = got_resid[:k], got_logprob[:k]
        # The letter logits are read at the end of the shared context: every option's first predictor.
        first = np.asarray(logits)[:k, 0]                                                   # [k, vocab]
        for r, i in enumerate(members):
            if prompts[i].fmt == "letter":
                probe[i] = first[r, list(letter_token_ids(prompts[i]))]
        padded += n_rows * length
        bar.update(k)
    bar.close()
    return resid, logprob, probe, padded


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
            progress: bool = True, max_len: int | None = None, token_budget: int = 4096, packed: bool = True) -> OptionRun:
    """Run every option sequence of `questions` in format `fmt`; see OptionRun for what comes back.

    `packed` (default) scores a question's 4 options in one row over their shared context (run_packed);
    `packed=False` runs 4 separate sequences per question, as the original did — the same numbers, 2–4× the cost.
    `max_len` (default: the model's context) bounds a sequence; `token_budget` bounds rows × padded length per batch.
    """
    check_format(fmt)
    if hook not in HOOKS:
        raise InputError(f"hook {hook!r}: expected one of {tuple(HOOKS)}")
    context = checkpoint.config.max_context
    max_len = context if max_len is None else min(int(max_len), context)
    if batch_size < 1 or token_budget < 1:
        raise InputError(f"batch_size={batch_size}, token_budget={token_budget}: expected positive integers")
    start = time.perf_counter()
    prepared, skipped = prepare(checkpoint.tokenizer, tuple(questions), fmt=fmt, max_len=max_len)
    d_model, nq = checkpoint.config.d_model, len(prepared)
    if packed:
        resid, logprob, probe, padded = run_packed(
            model, [p for _, p in prepared], layer=layer, where=HOOKS[hook], max_len=max_len, token_budget=token_budget,
            d_model=d_model, batch_multiple=batch_multiple(), progress=progress, desc=f"{fmt} packed forwards",
        )
        n_sequences = nq
    else:
        seqs = []
        for qi, (_, prompts) in enumerate(prepared):
            probe = letter_token_ids(prompts) if fmt == "letter" else ()
            for oi, option in enumerate(prompts.options):
                seqs.append(_Seq(index=qi * N_CHOICES + oi, ids=option.ids, cont_start=option.cont_start,
                                 probe=probe if oi == 0 else ()))
        resid, logprob, probe, padded = run_sequences(
            model, seqs, layer=layer, where=HOOKS[hook], max_len=max_len, batch_size=batch_size,
            token_budget=token_budget, d_model=d_model, progress=progress, desc=f"{fmt} forwards",
        )
        probe = probe.reshape(nq, N_CHOICES, N_CHOICES)[:, 0]
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
        padded_tokens=padded,
        seconds=time.perf_counter() - start,
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
