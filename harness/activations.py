"""Batched forwards over a question set in one format: the residual at the scored position and the log-probs.

Every (question, option) sequence from `harness.prompts` is run once: sequences are sorted by length and right-padded
into at most MAX_SHAPES (rows, length) batch shapes per run (each new shape compiles the jit once; plan_batches picks
the shapes that waste fewest padded tokens), and one forward per batch gives both the residual at the SAE's
layer/hook and the logits. Attention is causal, so right padding changes nothing at the real positions. Questions
whose sequence exceeds the context are skipped and listed. What the batching cost is returned as BatchStats.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harness import compile_cache
from harness.data.records import N_CHOICES, MCQuestion
from harness.errors import InputError
from harness.model import capture
from harness.model.packing import pack_shared_prefix, stack_rows
from harness.model.parallel import batch_multiple
from harness.prompts import PromptTooLong, QuestionPrompts, build_prompts, check_format, letter_probe

HOOKS = {"resid_pre": "pre", "resid_post": "post"}
# At most this many distinct (rows, length) batch shapes, i.e. jit compiles of the forward, per plan_batches call.
MAX_SHAPES = 8
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchStats:
    """What one run's batching cost: its compiled shapes, padding and where the wall time went.

    Timings are zero for a plan that was not run (`plan_stats`); `compile_seconds` counts every JAX compile in the run.
    """

    n_sequences: int                      # sequences run (packed path: one packed row per question)
    n_batches: int
    shapes: tuple[tuple[int, int], ...]   # distinct (rows, length) batch shapes, ascending by length
    real_tokens: int                      # sum of the sequences' own lengths
    padded_tokens: int                    # sum of rows x length over the batches (padding rows included)
    seconds: float = 0.0                  # wall time of the batch loop
    forward_seconds: float = 0.0          # forward + gather until the results exist (compiles included)
    host_seconds: float = 0.0             # the rest of the loop: building batches, copying results to numpy
    compile_seconds: float = 0.0          # JAX backend compiles or persistent-cache loads (compile_cache.watch)
    trace_seconds: float = 0.0            # JAX tracing + lowering to MLIR before those compiles
    n_compiles: int = 0                   # how many of those
    cache_hits: int = 0                   # of those, loaded from the persistent compilation cache

    @property
    def n_shapes(self) -> int:
        return len(self.shapes)

    @property
    def waste(self) -> float:
        """Padded tokens / real tokens: 1.0 is no padding at all (NaN for an empty run)."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else float("nan")

    def summary(self) -> str:
        """One line for logs and benchmarks."""
        return (f"{self.n_sequences} sequences in {self.n_batches} batches of {self.n_shapes} shapes, "
                f"{self.padded_tokens} padded / {self.real_tokens} real tokens (x{self.waste:.2f}), "
                f"{self.seconds:.1f}s: forward {self.forward_seconds:.1f}s (compile {self.compile_seconds:.1f}s, "
                f"{self.n_compiles} compiles, {self.cache_hits} from cache), host {self.host_seconds:.1f}s")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Progress:
    """Where a run is, passed to the `progress` callback of collect() after every batch."""

    label: str             # what runs, e.g. "letter packed forwards"
    done: int              # sequences finished (packed path: questions)
    total: int
    tokens: int            # real tokens finished
    padded_tokens: int     # tokens run, padding included
    seconds: float         # wall time since the run started

    @property
    def tokens_per_s(self) -> float:
        """Real (unpadded) tokens per second so far."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[Progress], None]


def _snap(n: int, *, fine: int, least: int) -> int:
    """`n` rounded up to a step of 1/`fine` of its next power of two (at least `least`): a small fixed family of sizes.

    Shapes from a fixed family recur across runs and processes, so the jit and the persistent compile cache reuse them.
    """
    step = max(least, (1 << max(0, (n - 1).bit_length())) // fine)
    return -(-n // step) * step


def grid_length(length: int, max_len: int) -> int:
    """The padded length a sequence of `length` tokens may run at: steps of <= 1/16 (at least 16), capped at max_len."""
    return min(_snap(length, fine=16, least=16), max_len)


def _rows(members: int, cap: int, multiple: int) -> tuple[int, int]:
    """(batches, rows per batch) for `members` sequences with at most `cap` rows: equal batches, rows snapped to 1/8."""
    n_batches = -(-members // cap)
    rows = min(cap, _snap(-(-members // n_batches), fine=8, least=1))
    rows += (-rows) % multiple
    return -(-members // rows), rows


def plan_batches(lengths: Sequence[int], *, max_len: int, batch_size: int, token_budget: int,
                 multiple: int = 1, max_shapes: int = MAX_SHAPES) -> list[tuple[int, int, list[int]]]:
    """[(padded length, rows, sequence indices)] covering every sequence once, in at most `max_shapes` distinct shapes.

    Sequences are sorted by length and cut into at most `max_shapes` contiguous groups (dynamic programming over the
    distinct grid lengths, minimising padded tokens); a group runs at its longest grid length in equal batches of at
    most min(batch_size, token_budget // length) rows, rows a multiple of `multiple` (the device count).
    """
    if batch_size < 1 or token_budget < 1 or multiple < 1 or max_shapes < 1:
        raise InputError(f"batch_size={batch_size}, token_budget={token_budget}, multiple={multiple}, "
                         f"max_shapes={max_shapes}: expected positive integers")
    bad = [n for n in lengths if not 1 <= n <= max_len]
    if bad:
        raise InputError(f"sequence length {bad[0]}: expected 1..{max_len} (max_len)")
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    on_grid = np.sort([grid_length(int(n), max_len) for n in lengths])
    grid = [int(g) for g in np.unique(on_grid)]
    counts = np.concatenate([[0], np.searchsorted(on_grid, grid, side="right")])   # sequences at grid[< j]: counts[j]

    def cap(length: int) -> int:
        rows = max(1, min(batch_size, token_budget // length))
        return max(multiple, rows - rows % multiple)

    def cost(i: int, j: int) -> int:  # padded tokens of one group holding grid[i..j] (inclusive)
        n_batches, rows = _rows(int(counts[j + 1] - counts[i]), cap(grid[j]), multiple)
        return n_batches * rows * grid[j]

    # best[k][j]: least padded tokens of grid[0..j] in k+1 groups; cut[k][j]: where the last group starts.
    n, k_max = len(grid), min(max_shapes, len(grid))
    best = [[cost(0, j) for j in range(n)]]
    cut = [[0] * n]
    for k in range(1, k_max):
        row, where = [float("inf")] * n, [0] * n
        for j in range(k, n):
            for i in range(k, j + 1):
                c = best[k - 1][i - 1] + cost(i, j)
                if c < row[j]:
                    row[j], where[j] = c, i
        best.append(row)
        cut.append(where)
    k = min(range(k_max), key=lambda k: (best[k][n - 1], k))   # fewest groups among the cheapest
    groups, j = [], n - 1
    while k >= 0:
        i = cut[k][j] if k else 0
        groups.append((i, j))
        j, k = i - 1, k - 1
    plan = []
    for i, j in reversed(groups):
        members = order[int(counts[i]) : int(counts[j + 1])]
        n_batches, rows = _rows(len(members), cap(grid[j]), multiple)
        plan.extend((grid[j], rows, [int(i) for i in chunk]) for chunk in np.array_split(members, n_batches))
    return plan


def plan_stats(plan: list[tuple[int, int, list[int]]], lengths: Sequence[int]) -> BatchStats:
    """Shapes and padding of a plan from plan_batches over `lengths` (no timings)."""
    return BatchStats(
        n_sequences=sum(len(m) for _, _, m in plan),
        n_batches=len(plan),
        shapes=tuple(sorted({(rows, length) for length, rows, _ in plan}, key=lambda s: (s[1], s[0]))),
        real_tokens=sum(int(lengths[i]) for _, _, m in plan for i in m),
        padded_tokens=sum(rows * length for length, rows, _ in plan),
    )


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


class _Meter:
    """Splits a batch loop's wall time into forward (until its results exist) and host work, and reports progress.

    Mutable on purpose: one per run, filled batch by batch.
    """

    def __init__(self, plan, lengths: Sequence[int], progress: ProgressFn | None, label: str):
        self.plan, self.lengths, self.progress, self.label = plan, lengths, progress, label
        self.total = sum(len(m) for _, _, m in plan)
        self.done = self.tokens = self.padded = 0
        self.forward_seconds = 0.0
        self.start = time.perf_counter()

    def forward(self, call):
        """Run `call()` and wait for every array it returns; the wait counts as forward time."""
        t = time.perf_counter()
        out = jax.block_until_ready(call())
        self.forward_seconds += time.perf_counter() - t
        return out

    def batch_done(self, members, rows: int, length: int) -> None:
        self.done += len(members)
        self.tokens += sum(int(self.lengths[i]) for i in members)
        self.padded += rows * length
        if self.progress is not None:
            self.progress(Progress(label=self.label, done=self.done, total=self.total, tokens=self.tokens,
                                   padded_tokens=self.padded, seconds=time.perf_counter() - self.start))

    def stats(self, log: compile_cache.CompileLog) -> BatchStats:
        seconds = time.perf_counter() - self.start
        return dataclasses.replace(
            plan_stats(self.plan, self.lengths), seconds=seconds, forward_seconds=self.forward_seconds,
            host_seconds=seconds - self.forward_seconds, compile_seconds=log.compile_seconds,
            trace_seconds=log.trace_seconds, n_compiles=log.n_compiles, cache_hits=log.cache_hits)


def run_sequences(model, seqs: list[_Seq], *, layer: int, where: str, max_len: int, batch_size: int,
                  token_budget: int, d_model: int, progress: ProgressFn | None, desc: str,
                  max_shapes: int = MAX_SHAPES):
    """(resid [n, embedding], logprob [n], probe logits [n, 4], BatchStats) for `seqs`, in their order."""
    n = len(seqs)
    resid = np.zeros((n, d_model), np.float32)
    logprob = np.zeros(n, np.float64)
    probe = np.full((n, N_CHOICES), np.nan, np.float32)
    ids = [s.ids for s in seqs]
    plan = plan_batches([len(i) for i in ids], max_len=max_len, batch_size=batch_size, token_budget=token_budget,
                        max_shapes=max_shapes)
    meter = _Meter(plan, [len(i) for i in ids], progress, desc)
    with compile_cache.watch() as compiles:
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
            got = meter.forward(lambda: _gather(
                *capture.residual_and_logits(model, tokens, layer=layer, where=where, max_context=max_len),
                jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(cont), jnp.asarray(probe_ids)))
            got_resid, got_logprob, got_probe = (np.asarray(g) for g in got)
            k = len(members)
            resid[members] = got_resid[:k]
            logprob[members] = got_logprob[:k]
            has_probe = np.array([bool(seqs[i].probe) for i in members])
            probe[np.asarray(members)[has_probe]] = got_probe[:k][has_probe]
            meter.batch_done(members, rows, length)
    return resid, logprob, probe, meter.stats(compiles)


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
               d_model: int, batch_multiple: int, progress: ProgressFn | None, desc: str, max_shapes: int = MAX_SHAPES):
    """The packed path: each question's 4 continuations after one shared context in one row (see harness.model.packing).

    Returns (resid [q, 4, embedding], logprob [q, 4], letter logits [q, 4] or NaN, BatchStats).
    """
    with compile_cache.watch() as compiles:
        resid, logprob, probe, meter = _run_packed(
            model, prompts, layer=layer, where=where, max_len=max_len, token_budget=token_budget, d_model=d_model,
            batch_multiple=batch_multiple, progress=progress, desc=desc, max_shapes=max_shapes)
    return resid, logprob, probe, meter.stats(compiles)


def _run_packed(model, prompts, *, layer, where, max_len, token_budget, d_model, batch_multiple, progress, desc,
                max_shapes):
    """run_packed's batch loop; returns its arrays and the _Meter that timed it."""
    nq = len(prompts)
    rows, plan, n_pred_at = packed_plan(prompts, max_len=max_len, token_budget=token_budget, multiple=batch_multiple,
                                        max_shapes=max_shapes)
    resid = np.zeros((nq, N_CHOICES, d_model), np.float32)
    logprob = np.zeros((nq, N_CHOICES), np.float64)
    probe = np.full((nq, N_CHOICES), np.nan, np.float32)
    meter = _Meter(plan, [len(r.ids) for r in rows], progress, desc)
    for length, n_rows, members in plan:
        ids, positions, segments = stack_rows([rows[i] for i in members], length, pad_id=PAD_ID)
        ids, positions, segments = (np.concatenate([a, np.repeat(a[-1:], n_rows - len(members), 0)]) for a in (ids, positions, segments))
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
        # Every position is within the context (build_prompts checked each option); the packed row may be longer.
        pred_idx = np.broadcast_to(np.arange(n_pred, dtype=np.int32), (n_rows, n_pred))
        logits, got = meter.forward(lambda: _forward_packed(model, ids, layer=layer, where=where, length=length,
                                                            positions=positions, segments=segments, pred_pos=pred_pos,
                                                            gather=(score_pos, pred_idx, target_ids, target_opt)))
        got_resid, got_logprob = (np.asarray(g) for g in got)
        k = len(members)
        resid[members], logprob[members] = got_resid[:k], got_logprob[:k]
        # The letter logits are read at the end of the shared context: every option's first predictor.
        first = np.asarray(logits)[:k, 0]                                                   # [k, vocab]
        for r, i in enumerate(members):
            if prompts[i].fmt == "letter":
                ids = letter_probe(prompts[i])
                probe[i] = first[r, list(ids)] if ids is not None else got_logprob[r]
        meter.batch_done(members, n_rows, length)
    return resid, logprob, probe, meter


def _forward_packed(model, ids, *, layer, where, length, positions, segments, pred_pos, gather):
    """(logits at the predictor positions, _gather_packed's (residuals, log-probs)) of one packed batch."""
    r_all, logits = capture.residual_and_logits(model, ids, layer=layer, where=where, max_context=length,
                                                positions=positions, segments=segments, logit_positions=pred_pos)
    return logits, _gather_packed(r_all, logits, *gather)


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
            d_model=d_model, batch_multiple=batch_multiple(), progress=progress, desc=f"{fmt} packed forwards",
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
