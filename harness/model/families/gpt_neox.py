"""GPT-NeoX (EleutherAI's Pythia, GPT-NeoX-20B): LayerNorm with bias, rotate-half RoPE on the first rotary_pct of
each head, a plain exact-GELU MLP, biases on every projection, a parallel residual (x + attn(ln1 x) + mlp(ln2 x)) or
the sequential one, an untied head (`embed_out`).

HF: transformers' `models/gpt_neox`. Its fused `query_key_value` is laid out per head: rows [heads, 3, head_dim]
(each head's q, k and v rows together), reordered here to q | k | v before the split. transformers 5 reads rotary_pct /
rotary_emb_base into rope_parameters (partial_rotary_factor 0.25 and theta 10000 when all are absent) and saves only
rope_parameters; its model class names the head `lm_head` and saves it as `embed_out`.
GGUF: llama.cpp's `gptneox`, whose converter already reorders attn_qkv to q | k | v.
"""

from __future__ import annotations

import math
import re

import numpy as np

from harness.errors import InputError
from harness.model import blocks
from harness.model.families import Family, gpt2
from harness.model.families import common as c
from harness.validation import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Schema,
    StrictBool,
    StrictStr,
    short_repr,
    validate,
)

PARTIAL_ROTARY_DEFAULT = 0.25  # GPTNeoXConfig: rotary_pct when neither it nor rope_parameters gives one


def _fraction(value) -> bool:
    return type(value) in (int, float) and 0 < value <= 1


NO_EFFECT_KEYS = c.NO_EFFECT_KEYS | {
    "hidden_dropout": "dropout acts only in training (any value)",
    "classifier_dropout": "the classification head's dropout; the LM head does not read it",
    "attention_probs_dropout_prob": "dropout acts only in training (old GPT-NeoX-20B configs)",
    "hidden_dropout_prob": "dropout acts only in training (old GPT-NeoX-20B configs)",
    "is_decoder": "transformers' GPT-NeoX always masks causally and never reads it",
}
SUPPORTED = {
    "hidden_act": gpt2._ACTIVATION_CHECK,
    "rope_scaling": (c.default_rope, "expected null: plain RoPE (no linear/dynamic/yarn/longrope/llama3 scaling)"),
    "rotary_pct": (_fraction, "expected a number in (0, 1]: the part of each head RoPE turns"),
    "partial_rotary_factor": (_fraction, "expected a number in (0, 1]: the part of each head RoPE turns"),
}
ROPE_PARAMETERS = c.PLAIN_ROPE_PARAMETERS | {
    "partial_rotary_factor": (_fraction, "expected a number in (0, 1]: the part of each head RoPE turns"),
}
USED_KEYS = frozenset({
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
    "layer_norm_eps", "max_position_embeddings", "rotary_emb_base", "rope_parameters", "rope_theta",
    "use_parallel_residual", "attention_bias", "tie_word_embeddings",
})  # and, checked first as SUPPORTED: hidden_act, rope_scaling, rotary_pct, partial_rotary_factor


class HFConfig(Schema):
    model_type: StrictStr
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    layer_norm_eps: PositiveFloat = 1e-5
    max_position_embeddings: PositiveInt = 2048
    hidden_act: StrictStr = "gelu"
    rotary_pct: PositiveFloat | None = None
    rotary_emb_base: PositiveFloat | None = None
    rope_theta: PositiveFloat | None = None
    partial_rotary_factor: PositiveFloat | None = None
    rope_parameters: dict | None = None
    rope_scaling: dict | None = None
    use_parallel_residual: StrictBool = True
    attention_bias: StrictBool = True
    tie_word_embeddings: StrictBool = False
    bos_token_id: NonNegativeInt | None = None
    eos_token_id: NonNegativeInt | list[NonNegativeInt] | None = None
    pad_token_id: NonNegativeInt | None = None


def _rope(cfg: HFConfig, source: str) -> tuple[float, float]:
    """(theta, partial rotary factor) as transformers 5's GPTNeoXConfig resolves them: a non-null rope_scaling stands
    in for rope_parameters, whose values win over rotary_emb_base / rotary_pct (defaults 10000 and 0.25). Two places
    giving different values (a file edited by hand, or written by another version) are refused: which one a given
    transformers version reads differs."""
    given = cfg.rope_scaling or cfg.rope_parameters or {}
    params = validate(c.RopeParameters, given, source, prefix="rope_parameters.")
    theta = params.rope_theta if params.rope_theta is not None else (
        cfg.rotary_emb_base if cfg.rotary_emb_base is not None else c.ROPE_THETA_DEFAULT)
    factor = params.partial_rotary_factor if params.partial_rotary_factor is not None else (
        cfg.rotary_pct if cfg.rotary_pct is not None else PARTIAL_ROTARY_DEFAULT)
    for key, value, used in (("rotary_emb_base", cfg.rotary_emb_base, theta), ("rope_theta", cfg.rope_theta, theta),
                             ("rotary_pct", cfg.rotary_pct, factor),
                             ("partial_rotary_factor", cfg.partial_rotary_factor, factor)):
        if value is not None and not math.isclose(value, used, rel_tol=1e-9):
            raise c.unsupported(source, key, value, f"rope_parameters / rotary_emb_base / rotary_pct give {used!r}; "
                                "expected the same value wherever it is given")
    return float(theta), float(factor)


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(HFConfig, raw, USED_KEYS | SUPPORTED.keys(), source)
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    if d % heads:
        raise InputError(f"{source}: hidden_size {d} is not a multiple of num_attention_heads {heads}")
    head_dim = d // heads
    theta, factor = _rope(cfg, source)
    rotary = int(head_dim * factor)  # transformers' rotary_ndims
    if rotary < 2 or rotary % 2:
        raise InputError(f"{source}: partial rotary factor {factor:g} of head_dim {head_dim} gives {rotary} rotary "
                         "dims; expected an even number >= 2")
    return c.make_config(
        source, architecture="gpt_neox", d_model=d, n_layers=cfg.num_hidden_layers, n_heads=heads, n_kv_heads=heads,
        head_dim=head_dim, d_ffn=cfg.intermediate_size, vocab_size=cfg.vocab_size, rope_base=theta,
        norm_eps=cfg.layer_norm_eps, tie_embeddings=cfg.tie_word_embeddings, max_context=cfg.max_position_embeddings,
        norm="layer", mlp=gpt2.ACTIVATIONS[cfg.hidden_act], attention_bias=cfg.attention_bias,
        output_bias=cfg.attention_bias, mlp_bias=True, parallel_residual=cfg.use_parallel_residual,
        rotary_dim=None if rotary == head_dim else rotary,
    )


# attention.bias: the causal-mask buffer (bool/uint8 in old files), attention.masked_bias: the masked score,
# rotary_emb.inv_freq: RoPE's inverse frequencies (per layer in old files, once in some). transformers builds the mask
# from the sequence and computes the frequencies from the config; a stored inv_freq is checked against them.
HF_BUFFERS = (r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias)",
              r"gpt_neox\.(layers\.\d+\.attention\.)?rotary_emb\.inv_freq")
_INV_FREQ = r"gpt_neox\.(layers\.\d+\.attention\.)?rotary_emb\.inv_freq"
_HF_GLOBALS = {"gpt_neox.embed_in.weight": "model.embed_tokens.weight",
               "gpt_neox.final_layer_norm.weight": "model.norm.weight",
               "gpt_neox.final_layer_norm.bias": "model.norm.bias",
               "embed_out.weight": "lm_head.weight", "lm_head.weight": "lm_head.weight"}
_HF_LAYER = r"^gpt_neox\.layers\.(\d+)\.(.+)$"
_HF_LAYER_NAMES = {
    **{f"{norm}.{kind}": f"{norm}.{kind}" for norm in ("input_layernorm", "post_attention_layernorm")
       for kind in ("weight", "bias")},
    **{f"attention.query_key_value.{kind}": f"self_attn.qkv_proj.{kind}" for kind in ("weight", "bias")},
    **{f"attention.dense.{kind}": f"self_attn.o_proj.{kind}" for kind in ("weight", "bias")},
    **{f"mlp.dense_h_to_4h.{kind}": f"mlp.up_proj.{kind}" for kind in ("weight", "bias")},
    **{f"mlp.dense_4h_to_h.{kind}": f"mlp.down_proj.{kind}" for kind in ("weight", "bias")},
}


def heads_first_to_qkv(array: np.ndarray, n_heads: int) -> np.ndarray:
    """query_key_value rows [heads, 3, head_dim] (bias: entries) reordered to [3, heads, head_dim]: q | k | v."""
    rest = array.shape[1:]
    return array.reshape(n_heads, 3, -1, *rest).swapaxes(0, 1).reshape(array.shape)


def _check_inv_freq(tensors, config, source: str) -> None:
    """A stored RoPE inverse-frequency buffer must be the one the config gives (to its stored precision)."""
    want = blocks.rope_inv_freq(config.rope_base, config.rotary_dim or config.head_dim, None)
    for name, tensor in tensors.items():
        if re.fullmatch(_INV_FREQ, name):
            got = np.asarray(tensor.read(), np.float64).reshape(-1)
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-2, atol=0):
                raise InputError(f"{source}: buffer {name} = {short_repr(got.tolist())} is not the RoPE of the "
                                 f"config (theta {config.rope_base:g}, {config.rotary_dim or config.head_dim} rotary "
                                 "dims); expected them to agree")


def weights_from_hf(tensors, config, source):
    _check_inv_freq(tensors, config, source)
    tensors = gpt2.without_buffers(tensors, HF_BUFFERS)
    if "embed_out.weight" in tensors and "lm_head.weight" in tensors:
        raise InputError(f"{source}: both embed_out.weight and lm_head.weight are given; expected one LM head")
    out = c.renamed(tensors, _HF_GLOBALS, _HF_LAYER, _HF_LAYER_NAMES, source, "gpt_neox")
    for name in list(out):
        if name.endswith(("self_attn.qkv_proj.weight", "self_attn.qkv_proj.bias")) and \
                out[name].shape[:1] == (3 * config.n_heads * config.head_dim,):
            out[name] = c.mapped(out[name], lambda a: heads_first_to_qkv(a, config.n_heads))
    return gpt2.split_qkv(out, config, source)


# ------------------------------------------------------------------------------------------- GGUF

GGUF_GLOBALS = {k: v for k, v in gpt2.GGUF_GLOBALS.items() if k != "position_embd.weight"}


def config_from_gguf(keys, values, tensors, path):
    fields = gpt2.gguf_layer_norm_fields(keys, tensors, path, "gptneox", "gpt_neox")
    rotary = fields["head_dim"] if keys.rope_dims is None else keys.rope_dims
    if keys.parallel_residual is None:  # llama.cpp requires it of gptneox files too
        raise InputError(f"{path}: metadata key gptneox.use_parallel_residual is missing")
    # llama.cpp runs ggml_gelu (the tanh approximation); the HF models it converts (Pythia) use the exact GELU,
    # which this reader follows.
    return c.make_config(str(path), **fields, mlp="gelu", parallel_residual=keys.parallel_residual,
                         rotary_dim=None if rotary == fields["head_dim"] else rotary)


def weights_from_gguf(tensors, config, path):
    out = c.renamed(tensors, GGUF_GLOBALS, c.GGUF_LAYER, gpt2.GGUF_LAYER_NAMES, str(path), "gptneox")
    return gpt2.split_qkv(out, config, str(path))


FAMILY = Family(
    name="gpt_neox",
    hf_model_types=("gpt_neox",),
    gguf_architecture="gptneox",
    hf_used_keys=USED_KEYS,
    hf_no_effect_keys=NO_EFFECT_KEYS,
    hf_supported_values=SUPPORTED,
    hf_rope_parameters=ROPE_PARAMETERS,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
    hf_buffers=HF_BUFFERS,
    notes="RoPE scaling is refused; a gptneox GGUF runs the HF model's exact GELU (llama.cpp itself runs the tanh one)",
)
