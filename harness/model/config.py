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

Phi-3's fused tensors (qkv_proj, gate_up_proj) are split by the readers into these names.

The weights are a `Weights` mapping read on demand from the memory-mapped files: a session holds the model's device
arrays and nothing else, and the builder converts layer by layer (peak memory ≈ the weights once).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import numpy as np

from harness.errors import InputError

# The parameters' dtypes a model can be built in (float32: exact against transformers; bfloat16: half the memory).
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
Architecture = Literal["llama", "phi3"]
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("llama", "phi3")
_LAYER_PREFIX = re.compile(r"^model\.layers\.(\d+)\.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and numerics of a llama-like decoder; enough to build it and check weights against it."""

    architecture: Architecture
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ffn: int
    vocab_size: int
    rope_base: float
    rms_norm_eps: float
    tie_embeddings: bool
    max_context: int
    sliding_window: int | None = None

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise InputError(
                f"architecture: expected one of {SUPPORTED_ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.n_heads % self.n_kv_heads:
            raise InputError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight name → shape, for checking a reader's output against the config."""
        d, q, kv, f = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.d_ffn
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, d),
            "model.norm.weight": (d,),
        }
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, d)
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            shapes |= {
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (q, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, q),
                p + "mlp.gate_proj.weight": (f, d),
                p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f),
            }
        return shapes


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredTensor:
    """One canonical weight still on disk: its shape, the file it lives in, and how to read it (as stored, any float)."""

    shape: tuple[int, ...]
    file: str
    read: Callable[[], np.ndarray]


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
        """(final RMSNorm scale [embedding], unembedding W_U [vocabulary, embedding]: lm_head or the tied embedding).

        Read from the files on demand (float32), not kept.
        """
        w = self.weights
        W_U = w["model.embed_tokens.weight"] if self.config.tie_embeddings else w["lm_head.weight"]
        return np.asarray(w["model.norm.weight"], np.float32), np.asarray(W_U, np.float32)
