"""Pack sequences that share prefixes into one row as a token trie, scored in one forward.

Every distinct token path is stored once: the row holds the trie's segments (runs of tokens without a branch) in
depth-first order, each token at its depth as position. A token sees its own segment's earlier tokens and its
ancestors' (model.blocks.CausalMask), so every sequence's residuals and log-probs equal those of running it
alone — a question's 4 options, or its 12 sequences of three formats, pay for their shared prefixes once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from harness.errors import InputError

PAD_SEGMENT = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Packed:
    """One packed row; arrays are [seq]. `paths[i]` holds the row index of each token of sequence i, in order."""

    ids: np.ndarray
    positions: np.ndarray      # depth in the trie = the token's position in each sequence through it
    segments: np.ndarray       # depth-first segment id
    segment_ends: np.ndarray   # last segment id of that segment's subtree
    paths: tuple[np.ndarray, ...]

    def predictors(self, i: int, start: int) -> np.ndarray:
        """Row indices whose logits predict sequence i's tokens from index `start` on (the token before each)."""
        return self.paths[i][start - 1 : -1]


def pack_trie(sequences: Sequence[Sequence[int]]) -> Packed:
    """Pack `sequences` (each non-empty) into one row: a trie of their tokens, segments in depth-first order."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise InputError("packing: expected one or more sequences, each of at least one token (e.g. BOS)")
    children: list[dict[int, int]] = [{}]   # node 0 is the root (no token); node n > 0 holds token[n]
    token, node_of = [-1], []
    for seq in sequences:
        node, path = 0, []
        for t in seq:
            t = int(t)
            if t not in children[node]:
                children[node][t] = len(token)
                children.append({})
                token.append(t)
            node = children[node][t]
            path.append(node)
        node_of.append(path)
    # Depth-first layout: a node continues its parent's segment when it is the parent's only child.
    row_of = np.zeros(len(token), np.int64)
    ids, positions, segments, seg_parent = [], [], [], []
    stack = [(child, 0, -1) for child in reversed(children[0].values())]   # (node, depth, parent segment)
    while stack:
        node, depth, parent_seg = stack.pop()
        seg = len(seg_parent)
        seg_parent.append(parent_seg)
        while True:   # walk the segment: one token per step until a branch or a leaf
            row_of[node] = len(ids)
            ids.append(token[node])
            positions.append(depth)
            segments.append(seg)
            depth += 1
            kids = list(children[node].values())
            if len(kids) != 1:
                stack.extend((child, depth, seg) for child in reversed(kids))
                break
            node = kids[0]
    # Preorder numbering: a segment's subtree is the id range [seg, end(seg)]; end = the largest descendant's id.
    ends = list(range(len(seg_parent)))
    for seg in range(len(seg_parent) - 1, 0, -1):
        parent = seg_parent[seg]
        if parent >= 0:
            ends[parent] = max(ends[parent], ends[seg])
    segments = np.array(segments, np.int32)
    return Packed(ids=np.array(ids, np.int32), positions=np.array(positions, np.int32), segments=segments,
                  segment_ends=np.array(ends, np.int32)[segments],
                  paths=tuple(row_of[np.array(p)] for p in node_of))


def stack_rows(rows: Sequence[Packed], length: int, *, n_rows: int | None = None, pad_id: int = 0):
    """(ids, (positions, segments, segment_ends)) [n_rows, length] of right-padded packed rows (padding: segment -1).

    Rows past len(rows) (up to `n_rows`) repeat the last row, so that a batch of fixed shape computes nothing invalid.
    """
    n = len(rows) if n_rows is None else n_rows
    if not rows or n < len(rows):
        raise InputError(f"packing: {len(rows)} rows for a batch of {n}; expected 1..{n}")
    ids = np.full((n, length), pad_id, np.int32)
    positions = np.zeros((n, length), np.int32)
    segments = np.full((n, length), PAD_SEGMENT, np.int32)
    ends = np.full((n, length), PAD_SEGMENT, np.int32)
    for r in range(n):
        row = rows[min(r, len(rows) - 1)]
        m = len(row.ids)
        if m > length:
            raise InputError(f"packing: a row of {m} tokens does not fit the padded length {length}")
        ids[r, :m], positions[r, :m], segments[r, :m], ends[r, :m] = row.ids, row.positions, row.segments, row.segment_ends
    return ids, (positions, segments, ends)
