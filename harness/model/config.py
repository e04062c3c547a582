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
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import numpy as np

from harness.errors import InputError

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


def check_weights(config: ModelConfig, weights: dict[str, np.ndarray], source: str) -> None:
    """Raise a one-line InputError for a missing, unexpected or mis-shaped canonical weight."""
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
        got = tuple(weights[name].shape)
        if got != shape:
            raise InputError(f"{source}: weight {name} has shape {got}, config expects {shape}")
        if not np.all(np.isfinite(weights[name])):
            raise InputError(f"{source}: weight {name} holds NaN or inf values")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A model as read from disk: config, canonical weights, tokenizer, and where it came from."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    tokenizer: "ChatTokenizer"  # noqa: F821 — harness.model.tokenizer.ChatTokenizer
    source: str
    ignored_fields: tuple[str, ...] = ()  # metadata keys read but not used (none of them changes the maths)

    def __post_init__(self):
        check_weights(self.config, self.weights, self.source)

    def unembedding(self) -> tuple[np.ndarray, np.ndarray]:
        """(final RMSNorm scale [embedding], unembedding W_U [vocabulary, embedding]: lm_head or the tied embedding)."""
        w = self.weights
        W_U = w["model.embed_tokens.weight"] if self.config.tie_embeddings else w["lm_head.weight"]
        return np.asarray(w["model.norm.weight"], np.float32), np.asarray(W_U, np.float32)
