"""The one batched forward runner: a bucket plan over sequence lengths, right padding, timing and progress.

plan_batches cuts sequences (sorted by length) into at most MAX_SHAPES (rows, length) batch shapes from a fixed grid
(each new shape compiles the jit once; the grid makes shapes recur across runs); run_plan runs a plan batch by batch,
splitting wall time into forward (until the outputs exist) and host work, and reports Progress after every batch.
Every study's forwards go through run_plan or run_batches, so the bucket policy, padding and mesh rows live here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from harness.errors import InputError
from harness.model.parallel import batch_multiple, to_host
from harness.runs import compile_cache

# At most this many distinct (rows, length) batch shapes, i.e. jit compiles of the forward, per plan_batches call.
MAX_SHAPES = 8
PAD_ID = 0


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
        """Run `call()` and wait for every array it returns; the wait counts as forward time.

        With several processes each gets every result whole (`to_host`), so a `take` reads it as numpy."""
        t = time.perf_counter()
        out = jax.block_until_ready(call())
        if jax.process_count() > 1:
            out = jax.tree.map(to_host, out)
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


Plan = list[tuple[int, int, list[int]]]   # [(padded length, rows, sequence indices)] from plan_batches


@dataclasses.dataclass(frozen=True, kw_only=True)
class Batch:
    """One batch of run_batches: sequences `members` right-padded with PAD_ID into `tokens` [rows, length]."""

    members: list[int]
    tokens: np.ndarray

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


def run_plan(plan: Plan, lengths: Sequence[int], *, build: Callable, forward: Callable, take: Callable,
             progress: ProgressFn | None = None, label: str = "forwards") -> BatchStats:
    """For each (length, rows, members) of `plan`: inputs = build(members, rows, length) on the host, outputs =
    forward(inputs) on the device (waited for: forward time, compiles included), then take(inputs, outputs) on the host."""
    meter = _Meter(plan, lengths, progress, label)
    with compile_cache.watch() as compiles:
        for length, rows, members in plan:
            inputs = build(members, rows, length)
            take(inputs, meter.forward(lambda: forward(inputs)))
            meter.batch_done(members, rows, length)
    return meter.stats(compiles)


def run_batches(sequences: Sequence[Sequence[int]], *, forward: Callable[[Batch], object],
                take: Callable[[Batch, object], None], max_len: int, batch_size: int = 16, token_budget: int = 4096,
                max_shapes: int = MAX_SHAPES, progress: ProgressFn | None = None, label: str = "forwards") -> BatchStats:
    """run_plan over token sequences: planned by plan_batches (rows a multiple of the device count), each batch a
    right-padded Batch; `forward(batch)` runs the model, `take(batch, outputs)` stores what it needs."""
    lengths = [len(s) for s in sequences]
    plan = plan_batches(lengths, max_len=max_len, batch_size=batch_size, token_budget=token_budget,
                        multiple=batch_multiple(), max_shapes=max_shapes)
    return run_plan(plan, lengths, build=lambda members, rows, length: Batch(
        members=members, tokens=padded_batch(sequences, members, rows, length)), forward=forward, take=take,
        progress=progress, label=label)
