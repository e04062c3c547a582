"""A content-addressed on-disk cache of computed arrays (activations, log-probs), so reruns are fast.

The key is a dict of everything the arrays depend on (weights hash, layer, dataset, format, code
version, ...); its SHA-256 names the file. Arrays inside a key are hashed by content (dtype, shape,
bytes), never by their printed form, which elides the middle of large arrays. Writes are atomic (temp
file + rename). On read the stored key and a checksum of the arrays are verified: a corrupt or stale
entry is counted, deleted and recomputed — never served. A folder that cannot be written is used
read-only: hits are served, writes skipped, and the summary says so.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable

import numpy as np

from harness.errors import InputError

HARNESS_DIR = pathlib.Path(__file__).resolve().parent.parent


def digest_file(path: str | pathlib.Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, or of every file under a directory (sorted by relative path)."""
    path = pathlib.Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


# The code an option run's arrays depend on: the model, its readers and tokenizer, prompts, batching, data records.
# Studies, scores, claims and reports read the arrays but cannot change them, so editing them keeps the cache warm.
ACTIVATION_CODE = ("model/**/*.py", "runs/options.py", "runs/batching.py", "runs/packing.py", "prompts/*.py", "data/records.py",
                   "errors.py", "validation.py")


def code_digest(*patterns: str) -> str:
    """SHA-256 of the harness source files matching `patterns` (relative to harness/, globs allowed); a pattern that
    matches no file is an error, so a renamed module cannot leave a stale key."""
    files = set()
    for pattern in patterns:
        matched = set(HARNESS_DIR.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"code_digest: no harness file matches {pattern!r}")
        files |= matched
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(HARNESS_DIR)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def code_version() -> str:
    """SHA-256 of the source the cached arrays depend on (ACTIVATION_CODE): a change there invalidates every entry."""
    return code_digest(*ACTIVATION_CODE)


def canonical_key(value):
    """A JSON-exact form of a cache key: arrays become (dtype, shape, SHA-256 of bytes), floats their repr.

    Unknown types are refused rather than printed: a printed form can collide (numpy elides big arrays).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"__float__": repr(value)}
    if isinstance(value, pathlib.PurePath):
        return {"__path__": str(value)}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cache key: dict keys must be str, got {sorted(map(repr, value))[:3]}")
        return {k: canonical_key(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical_key(v) for v in value]
    if isinstance(value, np.generic) or hasattr(value, "__array__"):
        a = np.ascontiguousarray(np.asarray(value))
        if a.dtype.hasobject:
            raise TypeError("cache key: object arrays cannot be hashed by content")
        return {"__array__": [a.dtype.str, list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]}
    raise TypeError(f"cache key: values of type {type(value).__name__} are not supported (use str, numbers, lists, dicts, arrays)")


def _key_json(key: dict) -> str:
    return json.dumps(canonical_key(key), sort_keys=True)


def _key_digest(key: dict) -> str:
    return hashlib.sha256(_key_json(key).encode()).hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(kw_only=True)
class ActivationCache:
    """Arrays by key under `directory`; `hits`, `misses` and `rejected` (corrupt or stale) are counted."""

    directory: pathlib.Path
    hits: int = 0
    misses: int = 0
    rejected: int = 0
    writes_skipped: int = 0
    read_only: str | None = None  # why the folder cannot be written (set at the first failed write)

    def path_for(self, key: dict) -> pathlib.Path:
        return pathlib.Path(self.directory) / f"{_key_digest(key)}.npz"

    def load(self, key: dict) -> dict[str, np.ndarray] | None:
        """The arrays stored under `key`, or None (absent, or rejected as corrupt/stale and deleted)."""
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(bytes(arrays.pop("__meta__")).decode())
            ok = meta["key"] == json.loads(_key_json(key)) and meta["checksum"] == _arrays_digest(arrays)
        except Exception:  # any unreadable file is corrupt by definition
            ok = False
        if not ok:
            self.rejected += 1
            try:
                path.unlink(missing_ok=True)
            except OSError as err:  # a read-only folder (or a folder in its place): the entry stays, never served
                if isinstance(err, PermissionError) or err.errno == errno.EROFS:
                    self._cannot_write(err)
            return None
        return arrays

    def _cannot_write(self, err: OSError) -> None:
        """Note once that the folder is read-only; reads go on, writes are skipped and counted."""
        if self.read_only is None:
            self.read_only = f"{type(err).__name__}: {err.strerror or err}"
            warnings.warn(f"activation cache {self.directory}: cannot write ({self.read_only}); using it read-only",
                          stacklevel=3)

    def store(self, key: dict, arrays: dict[str, np.ndarray]) -> pathlib.Path | None:
        """Write atomically: readers see the old entry or the whole new one, never a partial file.

        Returns None (and counts a skipped write) when the folder cannot be written.
        """
        path = self.path_for(key)
        meta = json.dumps({"key": json.loads(_key_json(key)), "checksum": _arrays_digest(arrays)})
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.frombuffer(meta.encode(), np.uint8), **arrays)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError as err:
            self._cannot_write(err)
            self.writes_skipped += 1
            return None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
        except OSError as err:  # disk full, folder made read-only meanwhile: skip the write, keep the arrays
            pathlib.Path(tmp).unlink(missing_ok=True)
            self._cannot_write(err)
            self.writes_skipped += 1
            return None
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(self, key: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        arrays = self.load(key)
        if arrays is not None:
            self.hits += 1
            return arrays
        self.misses += 1
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        self.store(key, arrays)
        return arrays

    def clear(self) -> int:
        """Delete every entry; returns how many were deleted (a folder that cannot be written is an InputError)."""
        entries = list(pathlib.Path(self.directory).glob("*.npz")) if pathlib.Path(self.directory).exists() else []
        for p in entries:
            try:
                p.unlink()
            except OSError as err:
                raise InputError(f"{self.directory}: cannot clear the activation cache ({err.strerror or err})") from None
        return len(entries)

    def summary(self) -> str:
        text = f"activation cache {self.directory}: {self.hits} hits, {self.misses} computed, {self.rejected} corrupt/stale rejected"
        if self.read_only is not None:
            text += f"; read-only ({self.read_only}), {self.writes_skipped} writes skipped"
        return text
