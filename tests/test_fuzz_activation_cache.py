"""Fuzz the activation cache: corrupted entries are rejected or served intact, keys are exact in their arrays."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
import pytest
from fuzz_inputs import ANY, COUNTS, Mutation, byte_mutations, fuzz_settings, path_mutations, report_counts
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.runs.cache import ActivationCache

pytestmark = pytest.mark.fuzz
KEY = {"weights": "abc", "layer": 3, "qids": ["q:0", "q:1"], "ids": np.arange(3000)}
ARRAYS = {"resid": np.linspace(-1, 1, 48, dtype=np.float32).reshape(4, 12), "mask": np.array([True, False, True])}


def _entry_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return ActivationCache(directory=pathlib.Path(tmp)).store(KEY, ARRAYS).read_bytes()


def test_corrupted_entries_are_rejected_or_served_intact(request):
    data = _entry_bytes()

    @fuzz_settings(request, 150)
    @given(st.one_of(byte_mutations(data, header=600), path_mutations()))
    def case(mutation: Mutation):
        COUNTS[("activation cache", ANY)] += 1
        with tempfile.TemporaryDirectory() as tmp:
            cache = ActivationCache(directory=pathlib.Path(tmp) / "in" / "cache")
            path = cache.store(KEY, ARRAYS)
            mutation.to(path)
            got = cache.get_or_compute(KEY, lambda: {k: v + 1 if v.dtype != bool else ~v for k, v in ARRAYS.items()})
            if cache.hits:  # served from disk: exactly what was stored
                assert cache.rejected == 0 and all(np.array_equal(got[k], ARRAYS[k]) for k in ARRAYS), mutation.what
            else:  # recomputed: the corrupt entry was never served
                assert not np.array_equal(got["resid"], ARRAYS["resid"]), mutation.what

    case()
    print(f"\nfuzz cases: {report_counts('activation cache')}")


arrays = hnp.arrays(st.sampled_from([np.int64, np.int32, np.float32, np.uint8]), hnp.array_shapes(max_dims=2, max_side=1200),
                    elements=st.integers(0, 3))


def test_keys_are_equal_exactly_when_their_arrays_are(request):
    cache = ActivationCache(directory=pathlib.Path("unused"))

    @fuzz_settings(request, 150)
    @given(arrays, arrays)
    def case(a, b):
        COUNTS[("activation cache keys", ANY)] += 1
        same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert (cache.path_for({"x": a}) == cache.path_for({"x": b})) == same
        assert cache.path_for({"x": a}) == cache.path_for({"x": a.copy()})
        if a.size:
            changed = a.copy()
            changed.flat[a.size // 2] += 1  # one element inside: printed forms of big arrays would not differ
            assert cache.path_for({"x": a}) != cache.path_for({"x": changed})

    case()
    print(f"\nfuzz cases: {report_counts('activation cache keys')}")
