"""harness.runs.compile_cache: a second process loads from the folder what the first compiled (JAX's own cache-hit
events, no new cache files), and `disabled()` really bypasses the cache even after the cache was in use."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest

from harness.errors import InputError
from harness.runs import compile_cache

# Run in a fresh interpreter: compiles a small jitted function with the cache on, then under disabled(), then on again.
CHILD = textwrap.dedent("""
    import json, pathlib, sys
    import jax, jax.numpy as jnp
    from jax import monitoring
    from harness.runs import compile_cache

    events = []
    monitoring.register_event_listener(lambda name, **_: events.append(name))
    folder = pathlib.Path(sys.argv[1])
    set_once = compile_cache.enable(folder)
    assert compile_cache.enable(folder) == set_once == compile_cache.current()
    x = jnp.ones((8, 8))

    def compile_once():
        events.clear()
        jax.clear_caches()
        jax.jit(lambda a: jnp.tanh(a @ a.T).sum() * 3.0).lower(x).compile()
        return {"requests": events.count("/jax/compilation_cache/compile_requests_use_cache"),
                "hits": events.count("/jax/compilation_cache/cache_hits"),
                "files": sum(1 for p in folder.rglob("*") if p.is_file())}

    on = compile_once()
    with compile_cache.disabled() as restored:
        off = compile_once()
        off_enabled = compile_cache.current().enabled
    again = compile_once()
    print(json.dumps({"on": on, "off": off, "again": again, "off_enabled": off_enabled,
                      "restored": restored == set_once == compile_cache.current()}))
""")


def _child(folder) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh interpreters importing jax (~5-10 s)
def test_a_second_process_compiles_nothing_the_first_compiled(tmp_path):
    first = _child(tmp_path / "jax")
    # first process: one cacheable compile, a miss that wrote an entry
    assert first["on"]["requests"] == 1 and first["on"]["hits"] == 0 and first["on"]["files"] >= 1
    # disabled(): the cache is not even consulted, nothing written, and the flag reads off inside the block
    assert first["off"]["requests"] == 0 and first["off"]["files"] == first["on"]["files"]
    assert first["off_enabled"] is False and first["restored"] is True
    # after the block the entry written before is found again
    assert first["again"] == {"requests": 1, "hits": 1, "files": first["on"]["files"]}

    second = _child(tmp_path / "jax")
    assert second["on"] == {"requests": 1, "hits": 1, "files": first["on"]["files"]}
    assert second["off"]["requests"] == 0


def test_enable_rejects_a_file_and_a_negative_threshold(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        compile_cache.enable(tmp_path / "f")
    with pytest.raises(InputError, match="min_compile_time_secs"):
        compile_cache.enable(tmp_path / "d", min_compile_time_secs=-1)
    assert not (tmp_path / "d").exists()


def test_disabled_restores_the_settings_it_found():
    before = compile_cache.current()
    with compile_cache.disabled() as restored:
        assert restored == before and jax.config.jax_enable_compilation_cache is False
    assert compile_cache.current() == before


def test_the_session_still_compiles_through_the_folder_the_plugin_named(pytestconfig):
    """After any earlier test (test_claims_gate.py re-runs the plugin in-process from a temporary folder, which points
    JAX at an empty <tmp>/.cache/jax), this session's compiles still go through --compile-cache's folder
    (tests/conftest.py puts the settings back): otherwise the rest of the suite silently compiles everything afresh."""
    option = pytestconfig.getoption("--compile-cache")
    if option == "off":
        pytest.skip("--compile-cache off: the plugin left JAX's settings alone")
    expected = (pytestconfig.invocation_params.dir / pathlib.Path(option).expanduser()).resolve()  # as enable() resolves it
    settings = compile_cache.current()
    assert settings.enabled and settings.directory == str(expected), settings
