"""What every checkpoint reader produces: a model config and weights in one canonical layout.

Readers (GGUF, Hugging Face directories) translate their files into this layout so that one
builder turns any of them into a penzai model.

Canonical weights are a flat ``dict[str, np.ndarray]`` keyed by Hugging Face *Llama* names, with
Hugging Face shapes ([out, in] for projections) and Hugging Face's rotate-half RoPE layout for
the Q/K rows:

    model.embed_tokens.weight                     [vocab, d_model]
    model.norm.weight                             [d_model]
    lm_head.weight                                [vocab, d_model]   (absent when tied)
    model.layers.{i}.input_layernorm.weight       [d_model]
    model.layers.{i}.post_attention_layernorm.weight  [d_model]
    model.layers.{i}.self_attn.q_proj.weight      [n_heads * head_dim, d_model]
    model.layers.{i}.self_attn.k_proj.weight      [n_kv_heads * head_dim, d_model]
    model.layers.{i}.self_attn.v_proj.weight      [n_kv_heads * head_dim, d_model]
    model.layers.{i}.self_attn.o_proj.weight      [d_model, n_heads * head_dim]
    model.layers.{i}.mlp.gate_proj.weight         [d_ffn, d_model]
    model.layers.{i}.mlp.up_proj.weight           [d_ffn, d_model]
    model.layers.{i}.mlp.down_proj.weight         [d_model, d_ffn]

Roles Llama lacks get names in the same style (each family module in harness.model.families maps its own names onto
these): ``*.bias`` beside a weight (LayerNorm shifts, attention and MLP biases), ``self_attn.{q,k}_norm.weight``
[head_dim] (Gemma-3), ``attn_out_norm`` / ``mlp_out_norm`` (Gemma-2/3's norms on each sub-block's output; their
``pre_feedforward_layernorm`` is the canonical ``post_attention_layernorm``, the norm before the MLP), and
``model.embed_positions.weight`` [max_context, d_model] (GPT-2's learned positions). A plain MLP has no gate_proj.

The weights are a `Weights` mapping read on demand from the memory-mapped files: a session holds the model's device
arrays and nothing else, and the builder converts layer by layer (peak memory ≈ the weights once).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
import numpy as np

from harness.errors import InputError

# The parameters' dtypes a model can be built in (float32: exact against transformers; bfloat16: half the memory).
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
NORMS = ("rms", "layer")  # RMSNorm (llama-likes) or LayerNorm with a bias (GPT-2, GPT-NeoX)
# swiglu / geglu_tanh: gated MLPs (silu / tanh-approximated GELU on the gate); gelu_tanh / gelu: plain two-layer MLPs.
MLPS = ("swiglu", "geglu_tanh", "gelu_tanh", "gelu")
ROPE_KINDS = ("default", "linear", "llama3", "longrope")
LAYER_TYPES = ("full_attention", "sliding_attention")
POSITIONS = ("rope", "learned")
_LAYER_PREFIX = re.compile(r"^model\.layers\.(\d+)\.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """How a family stretches RoPE beyond its training context (Hugging Face's rope_type and its parameters)."""

    kind: str
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max: int | None = None  # llama3, longrope: the pre-training context
    short_factor: tuple[float, ...] | None = None  # longrope: per-frequency divisors used up to original_max
    attention_factor: float = 1.0  # longrope: scales cos and sin

    def __post_init__(self):
        if self.kind not in ROPE_KINDS:
            raise InputError(f"rope scaling: expected one of {ROPE_KINDS}, got {self.kind!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer; enough to build it and check weights against it.

    The switches below (norm, MLP, biases, q/k norms, post-norms, soft caps, positions, per-layer attention) cover the
    families of harness.model.families; their defaults are Llama's.
    """

    architecture: str  # the family's name (harness.model.families)
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ffn: int
    vocab_size: int
    rope_base: float
    norm_eps: float
    tie_embeddings: bool
    max_context: int
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # per layer (LAYER_TYPES); None: every layer sliding iff sliding_window
    norm: str = "rms"
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight); the builder adds it to the stored weight
    mlp: str = "swiglu"
    attention_bias: bool = False  # q/k/v biases
    output_bias: bool = False  # attention output projection bias
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Gemma-3)
    post_norms: bool = False  # a norm on the attention and MLP outputs before they join the residual (Gemma-2/3)
    parallel_residual: bool = False  # x + attn(norm1 x) + mlp(norm2 x) (GPT-NeoX)
    positions: str = "rope"
    rotary_dim: int | None = None  # RoPE on the first rotary_dim dims of each head (GPT-NeoX); None: all of them
    rope_scaling: RopeScaling | None = None
    local_rope_base: float | None = None  # sliding layers' RoPE base (Gemma-3), unscaled; None: rope_base
    query_scale: float | None = None  # None: head_dim ** -0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_scale: float | None = None  # embeddings multiplied by it (Gemma: sqrt(d_model))

    def __post_init__(self):
        for field, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, field) not in allowed:
                raise InputError(f"{field}: expected one of {allowed}, got {getattr(self, field)!r}")
        if self.n_heads % self.n_kv_heads:
            raise InputError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.layer_types is not None:
            bad = next((t for t in self.layer_types if t not in LAYER_TYPES), None)
            if bad is not None or len(self.layer_types) != self.n_layers:
                raise InputError(f"layer_types: expected {self.n_layers} entries of {LAYER_TYPES}, got "
                                 f"{len(self.layer_types)}" + (f" including {bad!r}" if bad is not None else ""))
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise InputError("layer_types has sliding_attention layers but sliding_window is not set")
        rotary = self.head_dim if self.rotary_dim is None else self.rotary_dim
        if self.positions == "rope" and not (0 < rotary <= self.head_dim and rotary % 2 == 0):
            raise InputError(f"rotary_dim={self.rotary_dim}: expected an even number in 2..head_dim={self.head_dim}")

    @property
    def gated_mlp(self) -> bool:
        return self.mlp in ("swiglu", "geglu_tanh")

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s attention window (a query sees keys fewer than this many positions back), None if full."""
        if self.layer_types is not None:
            return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None
        if self.sliding_window is not None and self.sliding_window < self.max_context:
            return self.sliding_window
        return None

    def rope(self, layer: int) -> tuple[float, RopeScaling | None]:
        """Layer `layer`'s RoPE (base, scaling): Gemma-3's sliding layers use their own base, unscaled."""
        if self.local_rope_base is not None and self.window(layer) is not None:
            return self.local_rope_base, None
        return self.rope_base, self.rope_scaling

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight name → shape, for checking a reader's output against the config."""
        d, q, kv, f, h = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.d_ffn, self.head_dim
        biased = self.norm == "layer"
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, d),
            "model.norm.weight": (d,),
        }
        if biased:
            shapes["model.norm.bias"] = (d,)
        if self.positions == "learned":
            shapes["model.embed_positions.weight"] = (self.max_context, d)
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, d)
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            norms = ["input_layernorm", "post_attention_layernorm"] + (
                ["attn_out_norm", "mlp_out_norm"] if self.post_norms else [])
            for norm in norms:
                shapes[p + norm + ".weight"] = (d,)
                if biased:
                    shapes[p + norm + ".bias"] = (d,)
            shapes |= {
                p + "self_attn.q_proj.weight": (q, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, q),
            }
            if self.gated_mlp:
                shapes[p + "mlp.gate_proj.weight"] = (f, d)
            shapes |= {p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f)}
            if self.attention_bias:
                shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)}
            if self.output_bias:
                shapes[p + "self_attn.o_proj.bias"] = (d,)
            if self.mlp_bias:
                shapes |= {p + "mlp.up_proj.bias": (f,), p + "mlp.down_proj.bias": (d,)}
                if self.gated_mlp:
                    shapes[p + "mlp.gate_proj.bias"] = (f,)
            if self.qk_norm:
                shapes |= {p + "self_attn.q_norm.weight": (h,), p + "self_attn.k_norm.weight": (h,)}
        return shapes


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredTensor:
    """One canonical weight still on disk: its shape, the file it lives in, and how to read it (as stored, any float)."""

    shape: tuple[int, ...]
    file: str
    read: Callable[[], np.ndarray]
    name: str = ""  # its name in the file, where that differs from the canonical one (for messages)


class Weights(Mapping[str, np.ndarray]):
    """Canonical name -> weight, read afresh from the (memory-mapped) file at each access and cast to `dtype`.

    Holds shapes and readers only, so no host copy outlives its use; the files must not change during the session.
    """

    def __init__(self, tensors: Mapping[str, StoredTensor], *, dtype, source: str):
        self.tensors, self.dtype, self.source = dict(tensors), np.dtype(dtype), source

    def __getitem__(self, name: str) -> np.ndarray:
        return self.stored(name).astype(self.dtype, copy=False)

    def stored(self, name: str) -> np.ndarray:
        """The weight in its stored float dtype (no cast)."""
        return np.asarray(self.tensors[name].read())

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def nbytes(self, dtype=None) -> int:
        """Bytes of all weights at `dtype` (default: this mapping's)."""
        itemsize = np.dtype(self.dtype if dtype is None else dtype).itemsize
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.tensors.values()) * itemsize


def check_weights(config: ModelConfig, weights: Weights) -> None:
    """Raise a one-line InputError for a missing, unexpected or mis-shaped canonical weight (from the headers alone)."""
    source = weights.source
    layers = {int(m[1]) for m in map(_LAYER_PREFIX.match, weights) if m}
    if config.n_layers > len(layers):  # checked first: a corrupt layer count must not build millions of names
        first = next(i for i in range(config.n_layers) if i not in layers)
        raise InputError(f"{source}: missing weight model.layers.{first}.* (the config says {config.n_layers} layers, "
                         f"the weights hold {len(layers)})")
    expected = config.expected_shapes()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise InputError(f"{source}: missing weight {missing[0]} ({len(missing)} missing in all)")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise InputError(
            f"{source}: unexpected weight {extra[0]} ({len(extra)} in all) for a {config.n_layers}-layer config"
        )
    for name, shape in expected.items():
        got = tuple(weights.shape(name))
        if got != shape:
            raise InputError(f"{weights.tensors[name].file}: weight {name} has shape {got}, config expects {shape}")


def check_values(weights: Weights) -> None:
    """Read every weight once, one at a time (peak: the largest tensor), and refuse one that does not read as its
    header says or holds NaN or inf: a one-line InputError naming the file and weight. The readers call it."""
    for name in weights:
        array = weights.stored(name)
        if tuple(array.shape) != weights.shape(name):
            raise InputError(f"{weights.tensors[name].file}: weight {name} reads as shape {tuple(array.shape)}, "
                             f"its header says {weights.shape(name)}")
        if not np.all(np.isfinite(array)):
            raise InputError(f"{weights.tensors[name].file}: weight {name} holds NaN or inf values")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A model as read from disk: config, canonical weights, tokenizer, and where it came from."""

    config: ModelConfig
    weights: Weights
    tokenizer: "ChatTokenizer"  # noqa: F821 — harness.model.tokenizer.ChatTokenizer
    source: str
    ignored_fields: tuple[str, ...] = ()  # metadata keys read but not used (none of them changes the maths)

    def __post_init__(self):
        check_weights(self.config, self.weights)

    def unembedding(self) -> tuple[np.ndarray, np.ndarray]:
        """(final norm scale [embedding] as the model applies it (Gemma's offset added), unembedding W_U [vocabulary,
        embedding]: lm_head or the tied embedding). Read from the files on demand (float32), not kept."""
        w = self.weights
        W_U = w["model.embed_tokens.weight"] if self.config.tie_embeddings else w["lm_head.weight"]
        scale = np.asarray(w["model.norm.weight"], np.float32) + np.float32(self.config.norm_offset)
        return scale, np.asarray(W_U, np.float32)
