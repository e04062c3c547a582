"""GPT-2 (openai-community/gpt2, distilgpt2 and the like): learned positions, LayerNorm with bias, a plain GELU MLP
(gelu_new: the tanh approximation), biases on every projection, a head tied to the token embedding.

HF: transformers' `models/gpt2`. Its projections are `Conv1D`s, stored [in, out] (transposed here to the canonical
[out, in]); attention is one fused `c_attn` whose output columns are q | k | v (each d_model wide, heads contiguous),
split after the transpose, its bias likewise. Files saved from `GPT2Model` (openai-community/gpt2's own) name the
tensors without the `transformer.` prefix. GGUF: llama.cpp's `gpt2` (token_embd, position_embd, attn_qkv, ...).
"""

from __future__ import annotations

import dataclasses
import re

from harness.errors import InputError
from harness.model.config import StoredTensor
from harness.model.families import Family
from harness.model.families import common as c
from harness.validation import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Schema,
    StrictBool,
    StrictStr,
)

# transformers' ACT2FN names -> the ModelConfig MLP of the same maths. gelu_new, gelu_pytorch_tanh and gelu_fast are
# all 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (gelu_fast with sqrt(2/pi) rounded to 10 digits, below float32
# resolution); "gelu" is the exact erf GELU.
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
_ACTIVATION_CHECK = (lambda v: isinstance(v, str) and v in ACTIVATIONS, f"expected one of {sorted(ACTIVATIONS)}")

NO_EFFECT_KEYS = c.NO_EFFECT_KEYS | {
    "attn_pdrop": "dropout acts only in training (any value)",
    "summary_type": "GPT2DoubleHeadsModel's multiple-choice head only; the LM head does not read it",
    "summary_use_proj": "GPT2DoubleHeadsModel's multiple-choice head only; the LM head does not read it",
    "summary_activation": "GPT2DoubleHeadsModel's multiple-choice head only; the LM head does not read it",
    "summary_proj_to_labels": "GPT2DoubleHeadsModel's multiple-choice head only; the LM head does not read it",
    "summary_first_dropout": "GPT2DoubleHeadsModel's multiple-choice head only (and dropout)",
    "summary_last_dropout": "GPT2DoubleHeadsModel's multiple-choice head only (and dropout)",
    "n_ctx": "an old alias transformers' GPT-2 never reads; the positions table has n_positions rows",
    "task_specific_params": "generation settings of pipelines",
    "id2label": "labels of the classification heads; the LM head does not read them",
    "label2id": "labels of the classification heads; the LM head does not read them",
    "_num_labels": "the number of classification labels; the LM head does not read it",
    "reorder_and_upcast_attn": "only scales q before q.k instead of after and upcasts the scores to float32, which "
                               "they already are here: the same maths",
}
SUPPORTED = {
    "activation_function": _ACTIVATION_CHECK,
    "scale_attn_by_inverse_layer_idx": (c.exactly(False), "expected false: one attention scale for every layer"),
    "add_cross_attention": (c.exactly(False), "expected false: a decoder without cross-attention"),
}
USED_KEYS = frozenset({"model_type", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "vocab_size",
                       "layer_norm_epsilon", "scale_attn_weights", "tie_word_embeddings"})


class HFConfig(Schema):
    model_type: StrictStr
    n_embd: PositiveInt = 768
    n_layer: PositiveInt = 12
    n_head: PositiveInt = 12
    n_positions: PositiveInt = 1024
    n_inner: PositiveInt | None = None
    vocab_size: PositiveInt = 50257
    layer_norm_epsilon: PositiveFloat = 1e-5
    activation_function: StrictStr = "gelu_new"
    scale_attn_weights: StrictBool = True
    tie_word_embeddings: StrictBool = True  # GPT2LMHeadModel ties its head unless told otherwise
    bos_token_id: NonNegativeInt | None = None
    eos_token_id: NonNegativeInt | list[NonNegativeInt] | None = None
    pad_token_id: NonNegativeInt | None = None


def config_from_hf(raw: dict, source: str):
    cfg = c.typed(HFConfig, raw, USED_KEYS | {"activation_function"}, source)  # the others SUPPORTED pins false
    d, heads = cfg.n_embd, cfg.n_head
    if d % heads:
        raise InputError(f"{source}: n_embd {d} is not a multiple of n_head {heads}")
    return c.make_config(
        source, architecture="gpt2", d_model=d, n_layers=cfg.n_layer, n_heads=heads, n_kv_heads=heads,
        head_dim=d // heads, d_ffn=4 * d if cfg.n_inner is None else cfg.n_inner, vocab_size=cfg.vocab_size,
        rope_base=c.ROPE_THETA_DEFAULT, norm_eps=cfg.layer_norm_epsilon, tie_embeddings=cfg.tie_word_embeddings,
        max_context=cfg.n_positions, norm="layer", mlp=ACTIVATIONS[cfg.activation_function], attention_bias=True,
        output_bias=True, mlp_bias=True, positions="learned",
        query_scale=None if cfg.scale_attn_weights else 1.0,  # scale_attn_weights false: raw q.k scores
    )


# ------------------------------------------------------------------------------------------- shared tensor helpers


def transposed(tensor: StoredTensor, source: str) -> StoredTensor:
    """A Conv1D weight stored [in, out] read as the canonical [out, in]."""
    if len(tensor.shape) != 2:
        raise InputError(f"{source}: tensor {tensor.name} has shape {tuple(tensor.shape)}; expected a 2-D "
                         "Conv1D weight [in, out]")
    return dataclasses.replace(tensor, shape=tuple(tensor.shape[::-1]), read=lambda: tensor.read().T)


def split_fused(tensors: dict[str, StoredTensor], fused_suffix: str, parts: dict[str, int], source: str) -> dict:
    """Every `*.{fused_suffix}` weight or bias split along its first axis into `parts` (canonical suffix -> length,
    in order), as common.split_rows does for weights; a wrong shape, or a part also given on its own, is refused."""
    out = dict(tensors)
    for name in sorted(tensors):
        if not name.endswith(f".{fused_suffix}"):
            continue
        prefix, fused = name[: -len(fused_suffix) - 1], out.pop(name)
        total = sum(parts.values())
        if len(fused.shape) not in (1, 2) or fused.shape[0] != total:
            raise InputError(f"{source}: tensor {fused.name or name} reads as shape {tuple(fused.shape)}, config "
                             f"expects ({total}{', ...' if len(fused.shape) == 2 else ''})")
        start = 0
        for suffix, n in parts.items():
            if f"{prefix}.{suffix}" in out:
                raise InputError(f"{source}: tensor {fused.name or name} gives {prefix}.{suffix} a second time "
                                 "(fused and separate tensors both present?)")
            out[f"{prefix}.{suffix}"] = c.rows(fused, start, start + n)
            start += n
    return out


def without_buffers(tensors: dict[str, StoredTensor], patterns: tuple[str, ...]) -> dict[str, StoredTensor]:
    """`tensors` less the stored buffers whose names fullmatch one of `patterns` (Family.hf_buffers)."""
    compiled = [re.compile(p) for p in patterns]
    return {n: t for n, t in tensors.items() if not any(p.fullmatch(n) for p in compiled)}


def check_prefix(tensors: dict[str, StoredTensor], prefix: str, source: str) -> None:
    """Refuse a tensor given both with and without `prefix` (a file saved from the bare model lacks it)."""
    for name in tensors:
        if name.startswith(prefix) and name.removeprefix(prefix) in tensors:
            raise InputError(f"{source}: tensor {name} is given both with and without the {prefix!r} prefix")


# ------------------------------------------------------------------------------------------- HF weights

# attn.bias: the causal-mask buffer (lower-triangular ones, uint8/bool/float in old files); attn.masked_bias: the
# masked score (-1e4). transformers builds its causal mask from the sequence and reads neither.
HF_BUFFERS = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",)
_BARE_GLOBALS = {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.embed_positions.weight",
                 "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"}
_HF_GLOBALS = _BARE_GLOBALS | {f"transformer.{k}": v for k, v in _BARE_GLOBALS.items()} | {
    "lm_head.weight": "lm_head.weight"}
_HF_LAYER = r"^(?:transformer\.)?h\.(\d+)\.(.+)$"
_HF_LAYER_NAMES = {
    "ln_1.weight": "input_layernorm.weight", "ln_1.bias": "input_layernorm.bias",
    "ln_2.weight": "post_attention_layernorm.weight", "ln_2.bias": "post_attention_layernorm.bias",
    "attn.c_attn.weight": "self_attn.qkv_proj.weight", "attn.c_attn.bias": "self_attn.qkv_proj.bias",
    "attn.c_proj.weight": "self_attn.o_proj.weight", "attn.c_proj.bias": "self_attn.o_proj.bias",
    "mlp.c_fc.weight": "mlp.up_proj.weight", "mlp.c_fc.bias": "mlp.up_proj.bias",
    "mlp.c_proj.weight": "mlp.down_proj.weight", "mlp.c_proj.bias": "mlp.down_proj.bias",
}
_CONV1D = ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


def _qkv_parts(config) -> dict[str, int]:
    return {"self_attn.q_proj": config.d_model, "self_attn.k_proj": config.d_model, "self_attn.v_proj": config.d_model}


def split_qkv(tensors: dict[str, StoredTensor], config, source: str) -> dict[str, StoredTensor]:
    """The fused `self_attn.qkv_proj` weight and bias (rows q | k | v) split into the canonical q/k/v."""
    parts = _qkv_parts(config)
    for kind in ("weight", "bias"):
        tensors = split_fused(tensors, f"self_attn.qkv_proj.{kind}", {f"{k}.{kind}": n for k, n in parts.items()},
                              source)
    return tensors


def weights_from_hf(tensors, config, source):
    tensors = without_buffers(tensors, HF_BUFFERS)
    check_prefix(tensors, "transformer.", source)
    out = c.renamed(tensors, _HF_GLOBALS, _HF_LAYER, _HF_LAYER_NAMES, source, "gpt2")
    for name in list(out):
        if name.endswith(_CONV1D):
            out[name] = transposed(out[name], source)
    return split_qkv(out, config, source)


# ------------------------------------------------------------------------------------------- GGUF

# llama.cpp's names (gguf.constants TENSOR_NAMES, MODEL_TENSORS[MODEL_ARCH.GPT2]); its converter transposes the
# Conv1D weights, so they are stored [out, in] like every other GGUF weight, attn_qkv's rows q | k | v.
GGUF_GLOBALS = {"token_embd.weight": "model.embed_tokens.weight", "position_embd.weight": "model.embed_positions.weight",
                "output_norm.weight": "model.norm.weight", "output_norm.bias": "model.norm.bias",
                "output.weight": "lm_head.weight"}
GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "attn_norm.bias": "input_layernorm.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_norm.bias": "post_attention_layernorm.bias",
    "attn_qkv.weight": "self_attn.qkv_proj.weight", "attn_qkv.bias": "self_attn.qkv_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_down.bias": "mlp.down_proj.bias",
}


def gguf_layer_norm_fields(keys, tensors: dict, path, arch: str, family: str) -> dict:
    """ModelConfig fields shared by the LayerNorm architectures (gpt2, gptneox) from their `{arch}.*` keys."""
    d_model, n_heads = keys.embedding_length, keys.head_count
    if keys.head_count_kv not in (None, n_heads):
        raise InputError(f"{path}: {arch}.attention.head_count_kv={keys.head_count_kv}; expected {n_heads} "
                         "(no grouped-query attention)")
    if d_model % n_heads:
        raise InputError(f"{path}: {arch}.embedding_length={d_model} is not a multiple of head_count={n_heads}")
    if keys.layer_norm_eps is None:
        raise InputError(f"{path}: metadata key {arch}.attention.layer_norm_epsilon is missing")
    if "token_embd.weight" not in tensors:
        raise InputError(f"{path}: tensor token_embd.weight is missing")
    vocab_size = int(tensors["token_embd.weight"].shape[-1])  # GGUF order: [d_model, vocab]
    if keys.vocab_size is not None and keys.vocab_size != vocab_size:
        raise InputError(f"{path}: {arch}.vocab_size={keys.vocab_size} but token_embd.weight has {vocab_size} rows")
    return dict(architecture=family, d_model=d_model, n_layers=keys.block_count, n_heads=n_heads, n_kv_heads=n_heads,
                head_dim=d_model // n_heads, d_ffn=keys.feed_forward_length, vocab_size=vocab_size,
                rope_base=keys.rope_base, norm_eps=keys.layer_norm_eps, tie_embeddings="output.weight" not in tensors,
                max_context=keys.context_length, norm="layer", attention_bias=True, output_bias=True, mlp_bias=True)


def config_from_gguf(keys, values, tensors, path):
    fields = gguf_layer_norm_fields(keys, tensors, path, "gpt2", "gpt2")
    if keys.parallel_residual:
        raise InputError(f"{path}: gpt2.use_parallel_residual=True is not supported (GPT-2's residual is sequential)")
    if "position_embd.weight" in tensors:  # the table's rows are the context llama.cpp runs (its n_ctx_train)
        rows = int(tensors["position_embd.weight"].shape[-1])
        if rows != fields["max_context"]:
            raise InputError(f"{path}: position_embd.weight has {rows} rows but gpt2.context_length="
                             f"{fields['max_context']}; expected equal")
    return c.make_config(str(path), **(fields | dict(rope_base=c.ROPE_THETA_DEFAULT)), mlp="gelu_tanh",
                         positions="learned")


def weights_from_gguf(tensors, config, path):
    out = c.renamed(tensors, GGUF_GLOBALS, c.GGUF_LAYER, GGUF_LAYER_NAMES, str(path), "gpt2")
    return split_qkv(out, config, str(path))


FAMILY = Family(
    name="gpt2",
    hf_model_types=("gpt2",),
    gguf_architecture="gpt2",
    hf_used_keys=USED_KEYS,
    hf_no_effect_keys=NO_EFFECT_KEYS,
    hf_supported_values=SUPPORTED,
    config_from_hf=config_from_hf,
    weights_from_hf=weights_from_hf,
    config_from_gguf=config_from_gguf,
    weights_from_gguf=weights_from_gguf,
    hf_buffers=HF_BUFFERS,
    notes="scale_attn_by_inverse_layer_idx (per-layer attention scales) and cross-attention are refused",
)
