"""Compile-time measurements of the three execution forms (unrolled, LayerStack, true scan).

Why: the original work ran the layers with `jax.lax.scan` "mainly to improve compilation time"; this
module measures that. A model of any ModelConfig shape is built in any form from *abstract* params
(`jax.ShapeDtypeStruct` leaves inside penzai NamedArrays: nothing materialised, so the Phi-3-mini
shape costs no memory) or from random weights; `jax.jit(forward).lower(...)` and `.compile()` are
timed separately, each from a fresh trace with the persistent compilation cache off.

Token inputs and logits use capture's axis order: tokens [batch, seq], logits [batch, seq, vocabulary].
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from penzai import pz

from harness.errors import InputError
from harness.model.capture import BATCH, SEQ, VOCAB
from harness.model.config import ModelConfig, RopeScaling
from harness.model.forms import LAYER_AXIS, Form, assemble, block_param_table, global_param_axes
from harness.runs import compile_cache

# SmolLM2-135M-Instruct (the default profile's model): 9 query heads sharing 3 KV heads, tied embeddings.
SMOLLM2_SHAPE = ModelConfig(
    architecture="llama", d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, d_ffn=1536,
    vocab_size=49152, rope_base=100000.0, norm_eps=1e-5, tie_embeddings=True, max_context=8192,
)
# Phi-3-mini-4k-instruct (the original work's model), as its Hugging Face config.json gives it.
PHI3_MINI_SHAPE = ModelConfig(
    architecture="phi3", d_model=3072, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=96, d_ffn=8192,
    vocab_size=32064, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=False, max_context=4096,
    sliding_window=2047,
)


def _pattern(period: int, n: int) -> tuple[str, ...]:
    """transformers' Gemma layer_types: every `period`-th layer full attention, the others sliding."""
    return tuple("full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n))


# The real shapes of the families' best-known checkpoints (their Hugging Face config.json), for C5 and memory figures.
FAMILY_SHAPES: dict[str, ModelConfig] = {
    "gemma2-2b": ModelConfig(
        architecture="gemma2", d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256, d_ffn=9216,
        vocab_size=256000, rope_base=10000.0, norm_eps=1e-6, tie_embeddings=True, max_context=8192,
        sliding_window=4096, layer_types=_pattern(2, 26), norm_offset=1.0, mlp="geglu_tanh", post_norms=True,
        query_scale=256 ** -0.5, attn_softcap=50.0, final_softcap=30.0, embed_scale=2304 ** 0.5),
    "gemma3-270m": ModelConfig(
        architecture="gemma3", d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, d_ffn=2048,
        vocab_size=262144, rope_base=1e6, local_rope_base=1e4, norm_eps=1e-6, tie_embeddings=True, max_context=32768,
        sliding_window=512, layer_types=_pattern(6, 18), norm_offset=1.0, mlp="geglu_tanh", post_norms=True,
        qk_norm=True, query_scale=256 ** -0.5, embed_scale=640 ** 0.5),
    "gpt2-small": ModelConfig(
        architecture="gpt2", d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, head_dim=64, d_ffn=3072,
        vocab_size=50257, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=True, max_context=1024, norm="layer",
        mlp="gelu_tanh", attention_bias=True, output_bias=True, mlp_bias=True, positions="learned"),
    "pythia-70m": ModelConfig(
        architecture="gpt_neox", d_model=512, n_layers=6, n_heads=8, n_kv_heads=8, head_dim=64, d_ffn=2048,
        vocab_size=50304, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=False, max_context=2048, norm="layer",
        mlp="gelu", attention_bias=True, output_bias=True, mlp_bias=True, rotary_dim=16, parallel_residual=True),
    "qwen2.5-0.5b": ModelConfig(
        architecture="qwen2", d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64, d_ffn=4864,
        vocab_size=151936, rope_base=1e6, norm_eps=1e-6, tie_embeddings=True, max_context=32768, attention_bias=True),
    "mistral-7b": ModelConfig(
        architecture="mistral", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, d_ffn=14336,
        vocab_size=32000, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=False, max_context=32768,
        sliding_window=4096),
    "llama-3.1-8b": ModelConfig(
        architecture="llama", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, d_ffn=14336,
        vocab_size=128256, rope_base=500000.0, norm_eps=1e-5, tie_embeddings=False, max_context=131072,
        rope_scaling=RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max=8192)),
}
SHAPES: dict[str, ModelConfig] = {"smollm2-135m": SMOLLM2_SHAPE, "phi3-mini": PHI3_MINI_SHAPE, **FAMILY_SHAPES}

_WHILE_OP = re.compile(r"\bstablehlo\.while\b")


def shape_named(name: str, *, n_layers: int) -> ModelConfig:
    """The named model shape (a key of SHAPES) with `n_layers` decoder blocks."""
    if name not in SHAPES:
        raise InputError(f"model shape {name!r}: expected one of {sorted(SHAPES)}")
    if n_layers < 1:
        raise InputError(f"n_layers={n_layers}: expected at least 1 decoder block")
    shape = SHAPES[name]
    types = shape.layer_types  # the family's local/global pattern, continued to the new depth
    return dataclasses.replace(shape, n_layers=n_layers,
                               layer_types=None if types is None else tuple(types[i % len(types)] for i in range(n_layers)))


def random_params(config: ModelConfig, *, seed: int = 0, param_dtype=jnp.float32) -> tuple[dict, dict]:
    """Random (global, stacked block) params of `config`'s shape; the same seed gives the same weights.

    Matrices are N(0, 0.02²) (Hugging Face's initializer_range), norm scales are 1; drawn with numpy,
    which is many times faster than penzai's initialiser at these sizes.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf: jax.ShapeDtypeStruct):
        label = path[0].key
        if "norm" in label:
            values = np.ones(leaf.shape, np.float32)
        else:
            values = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(0.02)
        return jnp.asarray(values, leaf.dtype)

    global_abs, blocks_abs = abstract_params(config, param_dtype=param_dtype)
    return (
        jax.tree_util.tree_map_with_path(fill, global_abs),
        jax.tree_util.tree_map_with_path(fill, blocks_abs),
    )


def abstract_params(config: ModelConfig, *, param_dtype=jnp.float32) -> tuple[dict, dict]:
    """(global, stacked block) params whose leaves are jax.ShapeDtypeStruct: shapes only, no memory."""
    def zeros(axes: dict[str, int]) -> pz.nx.NamedArray:
        return pz.nx.wrap(jnp.zeros(tuple(axes.values()), param_dtype)).tag(*axes)

    blocks = {label: {LAYER_AXIS: config.n_layers, **axes} for label, (_, axes) in block_param_table(config).items()}
    return jax.eval_shape(lambda: ({k: zeros(a) for k, a in global_param_axes(config).items()},
                                   {k: zeros(a) for k, a in blocks.items()}))


def model_in_form(config: ModelConfig, params: tuple[dict, dict], form: Form | str):
    """The frozen penzai model of `form` holding `params` (concrete or abstract), ready for jit.

    Abstract params are assembled under jax.eval_shape, so the unrolled form gets one abstract
    argument per block, exactly as a model built from real weights would.
    """
    form = Form(form)
    global_params, blocks = params
    leaves = jax.tree_util.tree_leaves((global_params, blocks))
    if leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        return jax.eval_shape(lambda g, b: pz.freeze_params(assemble(config, g, b, form)), global_params, blocks)
    return pz.freeze_params(assemble(config, global_params, blocks, form))


def token_spec(*, batch: int, seq: int) -> jax.ShapeDtypeStruct:
    """Abstract token ids [batch, seq] (int32), for lowering without data."""
    if batch < 1 or seq < 1:
        raise InputError(f"tokens batch={batch}, seq={seq}: expected both >= 1")
    return jax.ShapeDtypeStruct((batch, seq), jnp.int32)


def random_tokens(config: ModelConfig, *, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """Uniform random token ids [batch, seq] in the config's vocabulary."""
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, seq), dtype=np.int32)


def forward(model, tokens) -> jax.Array:
    """Logits [batch, seq, vocabulary] of a frozen model on token ids [batch, seq] (traceable)."""
    named = pz.nx.wrap(jnp.asarray(tokens, jnp.int32)).tag(BATCH, SEQ)
    positions = pz.nx.arange(SEQ, tokens.shape[1])
    return model(named, token_positions=positions).unwrap(BATCH, SEQ, VOCAB)


@contextlib.contextmanager
def compilation_cache_off() -> Iterator[None]:
    """Within the block JAX's persistent compilation cache is off (restored on exit): see harness.runs.compile_cache."""
    with compile_cache.disabled():  # the flag alone is ignored once this process has used the cache
        yield


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seconds:
    """Wall-clock and process CPU seconds (all threads) of one step.

    CPU seconds are what a claim compares on a shared machine: other processes inflate wall time.
    """

    wall: float
    cpu: float

    def __add__(self, other: "Seconds") -> "Seconds":
        return Seconds(wall=self.wall + other.wall, cpu=self.cpu + other.cpu)


@contextlib.contextmanager
def _clock(out: list) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out.append(Seconds(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu))


def lower_fresh(model, tokens) -> tuple[jax.stages.Lowered, Seconds]:
    """(lowered forward, time to trace + lower it); a new function and cleared caches each call."""
    jax.clear_caches()

    def fresh_forward(m, t):  # a new function object: no trace or lowering can be reused
        return forward(m, t)

    took: list[Seconds] = []
    with _clock(took):
        lowered = jax.jit(fresh_forward).lower(model, tokens)
    return lowered, took[0]


def compile_lowered(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled, Seconds]:
    """(compiled executable, time to compile); `lowered` must be fresh (a Lowered caches its executable)."""
    took: list[Seconds] = []
    with compilation_cache_off(), _clock(took):
        compiled = lowered.compile()
    return compiled, took[0]


def count_while_loops(lowered_text: str) -> int:
    """Number of `stablehlo.while` ops in a lowered module's text (`Lowered.as_text()`)."""
    return len(_WHILE_OP.findall(lowered_text))


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompileTiming:
    """Time to lower and to compile one forward (the attempt with least lower+compile CPU time of
    `repeats` fresh ones), and the number of while loops in its lowered program."""

    shape: str
    form: Form
    n_layers: int
    batch: int
    seq: int
    lower: Seconds
    compile: Seconds
    while_loops: int
    repeats: int = 1
    rounds: tuple[Seconds, ...] = ()  # lower+compile of every fresh attempt, for the timing claims' intervals

    @property
    def total(self) -> Seconds:
        return self.lower + self.compile


def time_compile(
    model, tokens, *, shape: str, form: Form | str, n_layers: int, repeats: int = 1
) -> tuple[CompileTiming, jax.stages.Compiled]:
    """Lower and compile `model`'s forward `repeats` times from scratch; keep the fastest lower+compile.

    `model` may be abstract (from abstract_params) or concrete, `tokens` a token_spec or an array.
    Returns the timing and the last compiled executable (for a steady-forward measurement).
    """
    if repeats < 1:
        raise InputError(f"repeats={repeats}: expected at least 1")
    best, compiled, rounds = None, None, []
    for _ in range(repeats):
        lowered, lower_took = lower_fresh(model, tokens)
        compiled, compile_took = compile_lowered(lowered)
        rounds.append(lower_took + compile_took)
        if best is None or (lower_took + compile_took).cpu < (best[0] + best[1]).cpu:
            best = (lower_took, compile_took, count_while_loops(lowered.as_text()))
    batch, seq = tokens.shape
    timing = CompileTiming(
        shape=shape, form=Form(form), n_layers=n_layers, batch=batch, seq=seq,
        lower=best[0], compile=best[1], while_loops=best[2], repeats=repeats, rounds=tuple(rounds),
    )
    return timing, compiled


def steady_forward(compiled: jax.stages.Compiled, model, tokens, *, repeats: int = 3) -> Seconds:
    """Time of one already-compiled forward, the least-CPU of `repeats` calls after one warm-up call."""
    if repeats < 1:
        raise InputError(f"repeats={repeats}: expected at least 1")
    jax.block_until_ready(compiled(model, tokens))
    took: list[Seconds] = []
    for _ in range(repeats):
        with _clock(took):
            jax.block_until_ready(compiled(model, tokens))
    return min(took, key=lambda s: s.cpu)


def _find(timings: Iterable[CompileTiming], *, shape: str, form: Form | str, n_layers: int) -> CompileTiming:
    matches = [t for t in timings if t.shape == shape and t.form == Form(form) and t.n_layers == n_layers]
    if not matches:
        raise InputError(f"no compile timing for shape={shape}, form={Form(form).value}, n_layers={n_layers}")
    return matches[0]


def growth(
    timings: Sequence[CompileTiming], *, shape: str, form: Form | str, few: int, many: int, clock: str = "cpu"
) -> float:
    """Lower+compile seconds (`clock` "cpu" or "wall") at `many` layers over those at `few` layers."""
    many_s = getattr(_find(timings, shape=shape, form=form, n_layers=many).total, clock)
    return many_s / getattr(_find(timings, shape=shape, form=form, n_layers=few).total, clock)


def speedup(
    timings: Sequence[CompileTiming], *, shape: str, n_layers: int, slow: Form | str, fast: Form | str,
    clock: str = "cpu",
) -> float:
    """How many times faster `fast` lowers+compiles than `slow` at `n_layers` (slow seconds / fast seconds)."""
    slow_s = getattr(_find(timings, shape=shape, form=slow, n_layers=n_layers).total, clock)
    return slow_s / getattr(_find(timings, shape=shape, form=fast, n_layers=n_layers).total, clock)


class Measurements:
    """Compile timings, steady forwards and the scan-vs-unrolled check of one model shape, each measured once
    per session (the C5 claims share them); forms are named by their value ("scan", "unrolled", "layerstack")."""

    def __init__(self, *, shape: str, batch: int, seq: int):
        self.shape, self.batch, self.seq = shape, batch, seq
        self._timings: dict[tuple[Form, int], CompileTiming] = {}
        self._forward: dict[tuple[Form, int], list[float]] = {}
        self._others: dict[str, Measurements] = {}

    def of(self, shape: str | None) -> "Measurements":
        """The measurements of another shape (same batch and sequence), kept beside these; None or this shape: self."""
        if shape is None or shape == self.shape:
            return self
        shape_named(shape, n_layers=1)  # a one-line InputError for an unknown shape
        return self._others.setdefault(shape, Measurements(shape=shape, batch=self.batch, seq=self.seq))

    def timing(self, form: Form | str, n_layers: int, *, repeats: int = 1) -> CompileTiming:
        """Lower+compile timing with at least `repeats` fresh rounds (a later call asking more re-measures)."""
        key = (Form(form), n_layers)
        if key not in self._timings or self._timings[key].repeats < repeats:
            config = shape_named(self.shape, n_layers=n_layers)
            model = model_in_form(config, abstract_params(config), key[0])
            self._timings[key], _ = time_compile(model, token_spec(batch=self.batch, seq=self.seq), shape=self.shape,
                                                 form=key[0], n_layers=n_layers, repeats=repeats)
        return self._timings[key]

    def forward(self, form: Form | str, n_layers: int, *, repeats: int = 3) -> list[float]:
        """CPU seconds of `repeats` steady forwards (after one warm-up) on random weights."""
        key = (Form(form), n_layers)
        if key not in self._forward:
            config = shape_named(self.shape, n_layers=n_layers)
            model = model_in_form(config, random_params(config, seed=0), key[0])
            tokens = random_tokens(config, batch=self.batch, seq=self.seq)
            _, compiled = time_compile(model, tokens, shape=self.shape, form=key[0], n_layers=n_layers)
            self._forward[key] = [steady_forward(compiled, model, tokens, repeats=1).cpu for _ in range(repeats)]
        return self._forward[key]

    def scan_vs_unrolled(self, n_layers: int, *, batch: int = 2, seq: int = 32) -> tuple[float, float]:
        """(max |logits(scan) - logits(unrolled)|, max |logits(unrolled)|) on random weights and tokens."""
        config = shape_named(self.shape, n_layers=n_layers)
        params = random_params(config, seed=0)
        tokens = random_tokens(config, batch=batch, seq=seq, seed=1)
        logits = {}
        for form in (Form.UNROLLED, Form.SCAN):
            model = model_in_form(config, params, form)
            _, compiled = time_compile(model, tokens, shape=self.shape, form=form, n_layers=n_layers)
            logits[form] = np.asarray(compiled(model, tokens))
        return (float(np.abs(logits[Form.SCAN] - logits[Form.UNROLLED]).max()),
                float(np.abs(logits[Form.UNROLLED]).max()))
