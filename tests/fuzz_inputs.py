"""Shared pieces of the loader fuzz suites: byte mutations, the contract check, and the case budget.

The contract (README "Reliability"): a mutated input either raises `InputError` with a one-line message
naming the file, or — where the mutation is benign (a BOM, other line endings, a harmless extra key) —
loads to the same result as the unmutated input. Any other exception fails the suite. Mutations whose
effect cannot be predicted (a truncation, flipped bytes) may load to a different result, but only
through a clean error or a valid load.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import struct
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from harness.errors import InputError

FUZZ_EXAMPLES = 1500  # per suite when the fuzz marker is selected (`pytest tests/ -m fuzz`)
BENIGN, MALIGN, ANY = "benign", "malign", "any"
COUNTS: collections.Counter = collections.Counter()  # (suite, kind) -> cases run in this process
INVALID_UTF8 = [*range(0x80, 0xC0), *range(0xF8, 0x100)]  # bytes that can never start or continue valid UTF-8 here


def fuzz_selected(request) -> bool:
    """Whether the run selected the fuzz marker (`-m fuzz`), which asks for the long budget."""
    expression = request.config.option.markexpr or ""
    return bool(re.search(r"(?<!not )\bfuzz\b", expression))


def fuzz_settings(request, default: int) -> settings:
    """`default` cases under the loaded profile (ci: the whole fuzz run within a minute), FUZZ_EXAMPLES under -m fuzz."""
    return settings(max_examples=FUZZ_EXAMPLES if fuzz_selected(request) else default, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One change to a valid input: what it is (for the failure message), its kind and how to apply it."""

    kind: str
    what: str
    apply: Callable
    on_path: bool = False  # apply(path) changes the file system instead of mapping bytes to bytes
    check: Callable | None = None  # further assertion on a result that loaded (e.g. the extra file is listed)

    def to(self, path) -> None:
        """Apply this mutation to the file at `path`."""
        if self.on_path:
            self.apply(path)
        else:
            path.write_bytes(self.apply(path.read_bytes()))


def _to_folder(path):
    path.unlink()
    path.mkdir()


def _to_loop(path):
    path.unlink()
    path.symlink_to(path.name)


def _to_link(path):
    real = path.parent.parent / f"real-{path.name}"
    path.rename(real)
    path.symlink_to(real)


def path_mutations(*, required: bool = True) -> st.SearchStrategy[Mutation]:
    """The file replaced by a folder, a symlink loop, removed (when required), or reached through a symlink (benign)."""
    options = [Mutation(MALIGN, "file replaced by a folder", _to_folder, True),
               Mutation(MALIGN, "file replaced by a symlink loop", _to_loop, True),
               Mutation(BENIGN, "file reached through a symlink", _to_link, True)]
    if required:
        options.append(Mutation(MALIGN, "file removed", lambda p: p.unlink(), True))
    return st.sampled_from(options)


def run_case(suite: str, mutation: Mutation, load: Callable, summary: Callable, baseline, names: tuple[str, ...]):
    """Apply the contract to one mutated input: one-line InputError naming a file, or (benign) the baseline result."""
    COUNTS[(suite, mutation.kind)] += 1
    try:
        result = load()
    except InputError as error:
        message = str(error)
        assert "\n" not in message, (mutation.what, message)
        assert any(name in message for name in names), (mutation.what, "error does not name the file", message)
        assert mutation.kind != BENIGN, (mutation.what, "a benign change was refused", message)
        return None
    got = summary(result)
    if mutation.kind == MALIGN:
        raise AssertionError(f"{suite}: {mutation.what} was accepted silently")
    if mutation.kind == BENIGN:
        assert got == baseline, (mutation.what, "a benign change altered the result")
    if mutation.check is not None:
        mutation.check(result)
    return result


def byte_mutations(data: bytes, *, header: int | None = None) -> st.SearchStrategy[Mutation]:
    """Truncations and byte flips of `data` (flips biased to the first `header` bytes, where the structure is)."""
    size = len(data)
    limit = min(size, header or size)
    truncate = st.integers(0, size - 1).map(
        lambda n: Mutation(ANY, f"truncated to {n} of {size} bytes", lambda b, n=n: b[:n]))
    positions = st.lists(st.one_of(st.integers(0, limit - 1), st.integers(0, size - 1)), min_size=1, max_size=4)
    flip = st.tuples(positions, st.integers(1, 255)).map(
        lambda pv: Mutation(ANY, f"bytes {pv[0]} xor {pv[1]}", lambda b, pv=pv: _flip(b, *pv)))
    return st.one_of(truncate, flip)


def _flip(data: bytes, positions: list[int], xor: int) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p] ^= xor
    return bytes(out)


def non_utf8(data: bytes) -> st.SearchStrategy[Mutation]:
    """Insert a byte that is never valid UTF-8 at a random place of a text file."""
    return st.tuples(st.integers(0, len(data)), st.sampled_from(INVALID_UTF8)).map(
        lambda pb: Mutation(MALIGN, f"byte 0x{pb[1]:02x} inserted at {pb[0]}",
                            lambda b, pb=pb: b[:pb[0]] + bytes([pb[1]]) + b[pb[0]:]))


def with_bom() -> Mutation:
    return Mutation(BENIGN, "UTF-8 BOM added", lambda b: b"\xef\xbb\xbf" + b)


def json_edit(key_path: tuple[str, ...], value, kind: str = MALIGN) -> Mutation:
    """Set (or with value=... delete) a key of a JSON object file; the raw JSON text is written back."""
    def apply(data: bytes) -> bytes:
        obj = json.loads(data)
        target = obj
        for key in key_path[:-1]:
            target = target.setdefault(key, {})
        if value is ...:
            target.pop(key_path[-1], None)
        else:
            target[key_path[-1]] = value
        return json.dumps(obj, allow_nan=True).encode()
    return Mutation(kind, f"{'.'.join(key_path)} = {'<deleted>' if value is ... else repr(value)}", apply)


def safetensors_relabel(data: bytes, tensor: str, dtype: str) -> bytes:
    """A safetensors file whose header says `dtype` for `tensor` (same byte size: e.g. F32 bits read as I32)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header[tensor]["dtype"] = dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n, "relabelled header must keep its length"
    return data[:8] + text + data[8 + n:]


def report_counts(prefix: str = "") -> str:
    """Cases run by kind for the suites named `prefix`... (printed at the end of each suite; see README Reliability)."""
    suites = sorted({s for s, _ in COUNTS if s.startswith(prefix)})
    return "; ".join(f"{s}: " + ", ".join(f"{k} {COUNTS[(s, k)]}" for k in (BENIGN, MALIGN, ANY) if COUNTS[(s, k)])
                     for s in suites)
