"""The activation cache: hits after a store, atomic files, corrupt and stale entries recomputed, clear."""

import numpy as np
import pytest

from harness.runs.cache import ActivationCache, code_version, digest_file


@pytest.fixture
def cache(tmp_path):
    return ActivationCache(directory=tmp_path / "cache")


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"resid": rng.normal(size=(3, 4, 5)).astype(np.float32), "logprob": rng.normal(size=(3, 4))}


def test_second_call_is_served_from_disk_with_equal_arrays(cache):
    calls = []
    key = {"weights": "abc", "layer": 15, "format": "cloze"}
    first = cache.get_or_compute(key, lambda: calls.append(1) or _arrays())
    second = cache.get_or_compute(key, lambda: calls.append(1) or _arrays(1))
    assert calls == [1] and (cache.hits, cache.misses) == (1, 1)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_a_different_key_is_a_different_entry(cache):
    cache.get_or_compute({"layer": 15}, _arrays)
    assert cache.load({"layer": 16}) is None


def test_corrupt_entry_is_rejected_and_recomputed(cache):
    key = {"layer": 15}
    path = cache.store(key, _arrays())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    got = cache.get_or_compute(key, lambda: _arrays(7))
    np.testing.assert_array_equal(got["resid"], _arrays(7)["resid"])
    assert cache.rejected == 1 and cache.misses == 1


def test_entry_whose_stored_key_differs_is_stale(cache):
    key = {"layer": 15}
    other = cache.store({"layer": 99}, _arrays())
    other.rename(cache.path_for(key))  # a file under the right name holding another key's arrays
    assert cache.load(key) is None and cache.rejected == 1
    assert not cache.path_for(key).exists()


def test_store_leaves_no_temporary_files_and_clear_empties(cache):
    cache.store({"a": 1}, _arrays())
    cache.store({"a": 2}, _arrays())
    assert sorted(p.suffix for p in cache.directory.iterdir()) == [".npz", ".npz"]
    assert cache.clear() == 2 and not list(cache.directory.iterdir())


def test_digests_change_with_content(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    before = digest_file(f)
    f.write_bytes(b"abd")
    assert digest_file(f) != before
    assert len(code_version()) == 64


def test_keys_differing_inside_a_large_array_are_different_entries(cache):
    a = np.arange(2000)
    b = a.copy()
    b[1000] = -1  # numpy prints both as [0 1 2 ... 1999]
    assert str(a) == str(b)
    cache.get_or_compute({"ids": a}, lambda: _arrays(1))
    got = cache.get_or_compute({"ids": b}, lambda: _arrays(2))
    np.testing.assert_array_equal(got["resid"], _arrays(2)["resid"])
    assert (cache.hits, cache.misses) == (0, 2)
    assert cache.path_for({"ids": a}) != cache.path_for({"ids": a.astype(np.int32)})  # dtype is part of the key
    assert cache.path_for({"ids": a}) != cache.path_for({"ids": a.reshape(40, 50)})  # and shape


def test_a_read_only_folder_serves_hits_and_skips_writes_once_said(tmp_path, monkeypatch):
    import harness.runs.cache as module

    writable = ActivationCache(directory=tmp_path / "cache")
    writable.get_or_compute({"layer": 1}, _arrays)
    cache = ActivationCache(directory=tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(module.tempfile, "mkstemp", refuse)  # as root a chmod would not stop writes
    with pytest.warns(UserWarning, match="cannot write") as caught:
        got = cache.get_or_compute({"layer": 2}, lambda: _arrays(3))
        cache.get_or_compute({"layer": 3}, lambda: _arrays(4))
    assert len(caught) == 1
    np.testing.assert_array_equal(got["resid"], _arrays(3)["resid"])
    hit = cache.get_or_compute({"layer": 1}, lambda: _arrays(9))
    np.testing.assert_array_equal(hit["resid"], _arrays()["resid"])
    assert (cache.hits, cache.misses, cache.writes_skipped) == (1, 2, 2)
    assert "read-only" in cache.summary() and "2 writes skipped" in cache.summary()
