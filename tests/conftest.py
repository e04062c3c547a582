"""Shared set-up of the library's tests (the hypothesis profiles are in the root conftest.py).

- The persistent compile cache the plugin turned on for this session (harness.claims.plugin, `.cache/jax`) stays on
  for every test: a test that runs the plugin in-process (pytester.runpytest_inprocess in test_claims_gate.py) calls
  its pytest_configure again from a temporary folder, which points JAX at a fresh, empty `<tmp>/.cache/jax` for the
  rest of the session; the settings found before each test are put back after it.
- Slow cases (`@pytest.mark.slow`: real-model runs, end-to-end pytest or script runs in a subprocess) are deselected
  by pyproject's addopts (`-m 'not benchmark and not slow'`); `pytest tests/ -m slow` runs them (`.ci/run` does).
"""

from __future__ import annotations

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from harness.runs import compile_cache


def _restore(settings: compile_cache.CacheSettings) -> None:
    """Put back the four settings compile_cache.enable / disabled() manage (as compile_cache does itself)."""
    jax.config.update("jax_compilation_cache_dir", settings.directory)
    jax.config.update("jax_enable_compilation_cache", settings.enabled)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", settings.min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", settings.min_entry_size_bytes)
    compilation_cache.reset_cache()  # JAX opens the cache folder once per process: forget it so the above applies


@pytest.fixture(autouse=True)
def _session_compile_cache():
    """The session's compile-cache settings, as they were before the test, hold after it."""
    before = compile_cache.current()
    yield
    if compile_cache.current() != before:
        _restore(before)
