"""Pack k continuations of one shared prefix into a single sequence, scored in one forward.

Layout: prefix, then each continuation in turn. Every continuation restarts its positions where the
prefix ends and sees only the prefix and itself (capture.ApplySegmentCausalMask), so each one's
residuals and log-probs equal those of running prefix + continuation alone — at the cost of one
prefix instead of k.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.errors import InputError

PAD_SEGMENT = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Packed:
    """One packed row. Arrays are [seq]; `last[i]` indexes continuation i's last token in the row."""

    ids: np.ndarray
    positions: np.ndarray
    segments: np.ndarray
    starts: tuple[int, ...]  # row index of each continuation's first token
    lengths: tuple[int, ...]  # tokens of each continuation
    prefix_len: int

    @property
    def last(self) -> tuple[int, ...]:
        return tuple(s + n - 1 for s, n in zip(self.starts, self.lengths))

    def predictors(self, i: int) -> np.ndarray:
        """Row indices whose logits predict continuation i's tokens (prefix end, then its own tokens)."""
        s, n = self.starts[i], self.lengths[i]
        return np.array([self.prefix_len - 1, *range(s, s + n - 1)], np.int64)

    def targets(self, i: int) -> np.ndarray:
        return self.ids[self.starts[i] : self.starts[i] + self.lengths[i]]


def pack_shared_prefix(prefix: list[int] | tuple[int, ...], continuations: list) -> Packed:
    """Pack `continuations` (each a non-empty token list) after `prefix` (non-empty) into one row."""
    if not prefix:
        raise InputError("packing: the shared prefix is empty; expected at least one token (e.g. BOS)")
    if any(len(c) == 0 for c in continuations):
        raise InputError("packing: a continuation is empty; expected at least one token each")
    p = len(prefix)
    ids, positions, segments, starts = [*prefix], list(range(p)), [0] * p, []
    for k, cont in enumerate(continuations, start=1):
        starts.append(len(ids))
        ids += list(cont)
        positions += range(p, p + len(cont))
        segments += [k] * len(cont)
    return Packed(
        ids=np.array(ids, np.int32),
        positions=np.array(positions, np.int32),
        segments=np.array(segments, np.int32),
        starts=tuple(starts),
        lengths=tuple(len(c) for c in continuations),
        prefix_len=p,
    )


def stack_rows(rows: list[Packed], length: int, *, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, positions, segments) [batch, length] of right-padded packed rows (padding: segment -1)."""
    n = len(rows)
    ids = np.full((n, length), pad_id, np.int32)
    positions = np.zeros((n, length), np.int32)
    segments = np.full((n, length), PAD_SEGMENT, np.int32)
    for r, row in enumerate(rows):
        m = len(row.ids)
        if m > length:
            raise InputError(f"packing: a row of {m} tokens does not fit the padded length {length}")
        ids[r, :m], positions[r, :m], segments[r, :m] = row.ids, row.positions, row.segments
    return ids, positions, segments
