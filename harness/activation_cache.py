"""A content-addressed on-disk cache of computed arrays (activations, log-probs), so reruns are fast.

The key is a dict of everything the arrays depend on (weights hash, layer, dataset, format, code
version, ...); its SHA-256 names the file. Writes are atomic (temp file + rename). On read the stored
key and a checksum of the arrays are verified: a corrupt or stale entry is counted, deleted and
recomputed — never served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np

HARNESS_DIR = pathlib.Path(__file__).resolve().parent


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


def code_version() -> str:
    """SHA-256 of the harness's own source: any code change invalidates every entry (conservative)."""
    h = hashlib.sha256()
    for f in sorted(HARNESS_DIR.rglob("*.py")):
        h.update(str(f.relative_to(HARNESS_DIR)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


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
            ok = meta["key"] == json.loads(json.dumps(key, sort_keys=True, default=str)) and meta[
                "checksum"
            ] == _arrays_digest(arrays)
        except Exception:  # any unreadable file is corrupt by definition
            ok = False
        if not ok:
            self.rejected += 1
            path.unlink(missing_ok=True)
            return None
        return arrays

    def store(self, key: dict, arrays: dict[str, np.ndarray]) -> pathlib.Path:
        """Write atomically: readers see the old entry or the whole new one, never a partial file."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"key": json.loads(json.dumps(key, sort_keys=True, default=str)), "checksum": _arrays_digest(arrays)})
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.frombuffer(meta.encode(), np.uint8), **arrays)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
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
        """Delete every entry; returns how many were deleted."""
        entries = list(pathlib.Path(self.directory).glob("*.npz")) if pathlib.Path(self.directory).exists() else []
        for p in entries:
            p.unlink()
        return len(entries)

    def summary(self) -> str:
        return f"activation cache {self.directory}: {self.hits} hits, {self.misses} computed, {self.rejected} corrupt/stale rejected"
