"""JAX's persistent compilation cache: a process loads what an earlier process compiled instead of compiling it again.

`enable(directory)` turns it on for every compile (JAX's defaults skip compiles under 1 s, which on CPU is most
of them); `disabled()` turns it off for a block, as compile-time benchmarks must (BRIEF §5). Neither touches the
in-memory jit caches: a function already compiled in this process is reused either way (`jax.clear_caches()`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Iterator

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as _cc

from harness.errors import InputError

# JAX's monitoring event names (jax._src.dispatch / compiler, jax 0.10.2): one backend compile or cache load,
# the Python trace and the lowering to MLIR, and a persistent-cache hit.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """The four JAX options that decide whether and what the persistent cache stores (what `enable` set)."""

    directory: str | None          # jax_compilation_cache_dir
    enabled: bool                  # jax_enable_compilation_cache
    min_compile_time_secs: float   # jax_persistent_cache_min_compile_time_secs: faster compiles are not stored
    min_entry_size_bytes: int      # jax_persistent_cache_min_entry_size_bytes: -1 = no size floor


def current() -> CacheSettings:
    """The settings in force now."""
    return CacheSettings(
        directory=jax.config.jax_compilation_cache_dir,
        enabled=bool(jax.config.jax_enable_compilation_cache),
        min_compile_time_secs=float(jax.config.jax_persistent_cache_min_compile_time_secs),
        min_entry_size_bytes=int(jax.config.jax_persistent_cache_min_entry_size_bytes),
    )


def _apply(settings: CacheSettings) -> None:
    jax.config.update("jax_compilation_cache_dir", settings.directory)
    jax.config.update("jax_enable_compilation_cache", settings.enabled)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", settings.min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", settings.min_entry_size_bytes)
    # JAX decides once per process whether the cache is used and opens its folder once; forget both so the
    # settings above take effect for the next compile (the flag alone does not, once anything was compiled).
    _cc.reset_cache()


def enable(directory: str | pathlib.Path, *, min_compile_time_secs: float = 0.0) -> CacheSettings:
    """Store and reuse every compile (at least `min_compile_time_secs` long) under `directory`; returns the settings.

    Idempotent: a second call with the same arguments changes nothing. The folder is created if missing.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"compile cache directory {str(path)!r}: exists and is not a folder")
    if min_compile_time_secs < 0:
        raise InputError(f"min_compile_time_secs={min_compile_time_secs}: expected >= 0")
    path.mkdir(parents=True, exist_ok=True)
    wanted = CacheSettings(directory=str(path), enabled=True, min_compile_time_secs=float(min_compile_time_secs),
                           min_entry_size_bytes=-1)
    if current() != wanted:
        _apply(wanted)
    return wanted


@contextlib.contextmanager
def disabled() -> Iterator[CacheSettings]:
    """Within the block nothing is read from or written to the persistent cache; the settings before it come back after.

    Yields the settings that will be restored.
    """
    before = current()
    _apply(dataclasses.replace(before, enabled=False))
    try:
        yield before
    finally:
        _apply(before)


@dataclasses.dataclass(kw_only=True)
class CompileLog:
    """What JAX compiled while `watch()` was open, from its own monitoring events (filled in as they arrive)."""

    n_compiles: int = 0            # backend compiles, persistent-cache loads included
    compile_seconds: float = 0.0   # their wall seconds
    cache_hits: int = 0            # of those, loaded from the persistent cache
    trace_seconds: float = 0.0     # Python tracing + lowering to MLIR (before the backend compile)
    names: list[str] = dataclasses.field(default_factory=list)   # the compiled modules, e.g. "jit__resid_and_logits_jit"


@contextlib.contextmanager
def watch() -> Iterator[CompileLog]:
    """Count the compiles (and their seconds) that happen inside the block, in any thread of this process."""
    log = CompileLog()

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            log.n_compiles += 1
            log.compile_seconds += seconds
            log.names.append(str(kwargs.get("fun_name", "?")))
        elif event in TRACE_EVENTS:
            log.trace_seconds += seconds

    def on_event(event: str, **_) -> None:
        if event == CACHE_HIT_EVENT:
            log.cache_hits += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    try:
        yield log
    finally:
        monitoring.unregister_event_duration_listener(on_duration)
        monitoring.unregister_event_listener(on_event)
