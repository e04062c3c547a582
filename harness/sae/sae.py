"""The sparse autoencoder itself: parameters, metadata and pure encode/decode functions in JAX.

One parameter record covers the four architectures the common formats use (ReLU, JumpReLU, gated,
TopK), so loaders translate files into it and every reading goes through the same functions.

Axis order (documented once, used everywhere in ``harness.sae``):
    x  [..., d_model]   residual-stream activations; any leading (batch/token/position) axes
    f  [..., d_sae]     feature activations, same leading axes as x
    W_enc [d_model, d_sae], b_enc [d_sae], W_dec [d_sae, d_model], b_dec [d_model]

The forward pass, with n = norm_factor and m = out_norm_factor (both 1 unless the SAE was trained
on rescaled activations, as saex and our own trainer do):
    x_c = x − mean_d(x)·[center_input]                       (``centred``: the SAE's view of x)
    x'  = x_c·n − b_dec·[apply_b_dec_to_input]
    pre = x'·W_enc + b_enc                                   (``pre_activations``)
    f   = relu:     relu(pre)·mag_scale                      (mag_scale = 1 when absent)
          jumprelu: pre·[pre > threshold]  (with pre > 0)
          gated:    [pre > 0] · relu(x'·W_enc·mag_scale + b_mag)
          topk:     relu of the k largest entries of pre, 0 elsewhere
    x̂   = (f·W_dec + b_dec) / m                              (``decode``, in the SAE's space)
    reconstruct(x) = x̂ + mean_d(x)·[center_input]           (back in the model's space, for splicing)

Every contraction with W_enc or W_dec (x'·W_enc, f·W_dec, the decoder reading x_c·W_decᵀ) runs in the SAE's
``compute_dtype``: "float32" (the default) is the plain float32 matmul; "bfloat16" (the ``sae`` fixture sets it from
``--dtype``) casts both operands to bf16 and returns float32 (``preferred_element_type``), as the model's contractions
do (harness/model/rewrites.py). Everything else — centring, norm factors, biases, thresholds, TopK, the ReLU / JumpReLU
/ gated nonlinearity — stays float32.

``center_input`` is SAELens' ``model_from_pretrained_kwargs.center_writing_weights`` on a LayerNorm model: the SAE
was trained on TransformerLens' residual with the writing weights centred (W_E, W_pos, W_O, b_O, W_out, b_out each
minus its mean over d_model). Every write to the residual stream then has zero mean over d_model, so TransformerLens'
residual (and hook_attn_out / hook_mlp_out) is the plain one minus its mean over d_model at each position, and
LayerNorm, blind to that mean, computes the same outputs. TransformerLens skips the centring on RMSNorm models, and so
does ``for_model``. The decoder reading (``decoder_projection``) reads x_c too; ``reconstruct`` adds the removed mean
back, so a spliced reconstruction differs from x by exactly the SAE's error x_c − x̂ (a LayerNorm model's logits do
not see the mean either way).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

from harness.errors import InputError

Architecture = Literal["relu", "jumprelu", "gated", "topk"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
ComputeDtype = Literal["float32", "bfloat16"]
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEParams:
    """Weights of one SAE (float32 arrays, axis order in the module docstring) and its static settings.

    ``mag_scale`` is the gated magnitude path's per-feature scale (SAELens e^{r_mag}; saex
    softplus(s_gate)·scaling_factor) or, for saex ReLU SAEs, the post-ReLU ``scaling_factor``.
    For gated SAEs ``b_enc`` is the gate bias (SAELens ``b_gate``; saex ``b_enc``).
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    threshold: jax.Array | None = None
    mag_scale: jax.Array | None = None
    b_mag: jax.Array | None = None
    architecture: Architecture = "relu"
    k: int | None = None
    norm_factor: float = 1.0
    out_norm_factor: float = 1.0
    apply_b_dec_to_input: bool = False
    center_input: bool = False  # subtract x's mean over d_model first (module docstring; SAEMeta says why)
    # the operands' dtype of every contraction with W_enc / W_dec ("float32" or "bfloat16"), result float32. The
    # weights stay stored once, in float32: a bfloat16 contraction casts the weight it reads inside its jitted dot,
    # a transient bf16 copy of that weight (slice) — half its float32 bytes, e.g. 302 MB for a 3,072 x 49,152 W_enc.
    compute_dtype: ComputeDtype = "float32"

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])


jax.tree_util.register_dataclass(
    SAEParams,
    data_fields=["W_enc", "b_enc", "W_dec", "b_dec", "threshold", "mag_scale", "b_mag"],
    meta_fields=["architecture", "k", "norm_factor", "out_norm_factor", "apply_b_dec_to_input", "center_input",
                 "compute_dtype"],
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEMeta:
    """Where an SAE belongs: which model, which layer and hook point it reads, and where it came from.

    ``None`` means the file does not say; ``check_compatible`` refuses to guess it.
    """

    d_model: int
    d_sae: int
    source: str
    model_name: str | None = None
    layer: int | None = None
    hook: str | None = None
    format: str = "unknown"
    ignored: tuple[str, ...] = ()  # tensors in the file that the reader did not use, reported not dropped
    layer_source: str | None = None  # where `layer` came from: "option", "name", "sidecar" or "cfg"
    ignored_fields: tuple[str, ...] = ()  # config keys that do not change the maths, listed for the report
    # what the SAE read in training, as the file states it or as its format's own loader defaults it (None: not said)
    center_writing_weights: bool | None = None  # TransformerLens' centred residual (SAEParams.center_input)
    prepend_bos: bool | None = None  # every training context began with the tokenizer's BOS
    defaulted_fields: tuple[str, ...] = ()  # "key=value (why)" for each setting the file left out and a default filled


@jax.jit
def _all_finite_jit(x: jax.Array) -> jax.Array:
    # x·0 is 0 for a finite x and NaN for ±inf/NaN, so the sum is finite iff every entry is; XLA fuses this into one
    # pass, where jnp.all(jnp.isfinite(x)) materialises a boolean array the size of x (150 MB for a 49,152-wide W_enc).
    return jnp.isfinite(jnp.sum(x * 0))


def _all_finite(x) -> bool:
    """Whether every value of x is finite, without an x-sized temporary."""
    return bool(_all_finite_jit(x))


def check_params(params: SAEParams, *, source: str) -> SAEParams:
    """Check shapes, architecture-specific fields and finiteness; raise InputError naming ``source``.

    Loaders call this once so that a broken file fails at load, not as NaN readings later.
    """
    if params.architecture not in ARCHITECTURES:
        raise InputError(f"{source}: architecture {params.architecture!r}, expected one of {ARCHITECTURES}")
    if params.compute_dtype not in COMPUTE_DTYPES:
        raise InputError(f"{source}: compute_dtype {params.compute_dtype!r}, expected one of {COMPUTE_DTYPES}")
    d_model, d_sae = params.W_enc.shape if params.W_enc.ndim == 2 else (None, None)
    if d_model is None:
        raise InputError(f"{source}: tensor W_enc has shape {tuple(params.W_enc.shape)}, expected [d_model, d_sae]")
    expected = {"W_enc": (d_model, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_model), "b_dec": (d_model,)}
    required = {
        "relu": (),
        "jumprelu": ("threshold",),
        "gated": ("mag_scale", "b_mag"),
        "topk": (),
    }[params.architecture]
    for name in ("threshold", "mag_scale", "b_mag"):
        expected[name] = (d_sae,)
        if name in required and getattr(params, name) is None:
            raise InputError(f"{source}: tensor {name} missing, required by a {params.architecture} SAE")
    for name, shape in expected.items():
        value = getattr(params, name)
        if value is None:
            continue
        if tuple(value.shape) != shape:
            raise InputError(f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {shape}")
        if not _all_finite(value):
            bad = int(jnp.sum(~jnp.isfinite(value)))
            raise InputError(f"{source}: tensor {name} has {bad} NaN/inf values, expected all finite")
    if params.architecture == "topk" and (params.k is None or not 0 < params.k <= d_sae):
        raise InputError(f"{source}: topk SAE has k={params.k}, expected an integer in 1..{d_sae}")
    for name in ("norm_factor", "out_norm_factor"):
        value = getattr(params, name)
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{source}: {name}={value}, expected a finite positive number")
    return params


def check_compatible(
    meta: SAEMeta,
    *,
    d_model: int,
    layer: int,
    hook: str,
    model_name: str | None = None,
) -> None:
    """Raise InputError unless the SAE reads ``hook`` at ``layer`` of a model of width ``d_model``.

    Unknown layer/hook in the metadata is an error too: pass them when loading instead of guessing.
    """
    if meta.d_model != d_model:
        raise InputError(f"{meta.source}: SAE width d_model={meta.d_model} does not match the model's d_model={d_model}")
    if meta.layer is None:
        raise InputError(f"{meta.source}: SAE metadata has no layer; pass layer= when loading (model layer is {layer})")
    if meta.layer != layer:
        raise InputError(f"{meta.source}: SAE was trained on layer {meta.layer}, asked to read layer {layer}")
    if meta.hook is None:
        raise InputError(f"{meta.source}: SAE metadata has no hook point; pass hook= when loading (asked for {hook!r})")
    if meta.hook != hook:
        raise InputError(f"{meta.source}: SAE reads hook {meta.hook!r}, asked to read {hook!r}")
    if model_name is not None and meta.model_name is not None and meta.model_name != model_name:
        raise InputError(f"{meta.source}: SAE was trained on model {meta.model_name!r}, asked to use it on {model_name!r}")


def for_model(params: SAEParams, meta: SAEMeta, *, norm: str) -> tuple[SAEParams, str | None]:
    """The SAE as it reads a model whose blocks use ``norm`` ("layer" or "rms"), and a line for the report (None when
    there is nothing to say).

    An SAE trained on TransformerLens' centred residual (center_writing_weights) centres its input on a LayerNorm model;
    on an RMSNorm model TransformerLens leaves the weights uncentred (its process_weights centres only for LN/LNPre
    normalisation, and warns), so the residual the SAE saw was the plain one: centring is switched off, as there.
    """
    if not meta.center_writing_weights and not params.center_input:
        return params, None
    if norm == "layer":
        params = params if params.center_input else dataclasses.replace(params, center_input=True)
        return params, ("center_writing_weights=true: the SAE read TransformerLens' centred residual, so each "
                        "activation is read minus its mean over d_model (LayerNorm model: the same forward)")
    return (dataclasses.replace(params, center_input=False),
            (f"center_writing_weights=true ignored: a {norm!r}-norm model, whose writing weights TransformerLens does "
             "not centre (LayerNorm only), so the SAE read the plain residual"))


def bos_for_sae(meta: SAEMeta, *, add_bos: bool, bos_token: str | None) -> tuple[bool, str | None]:
    """(whether the run must prepend BOS for this SAE, a line for the report or None), given whether the model's
    tokenizer adds BOS itself and its BOS token.

    SAELens' prepend_bos=true means TransformerLens began every training context with the tokenizer's BOS (SAELens'
    activations store: begin_batch_token_id = bos_token_id); Hugging Face's GPT-2 tokenizer adds none, so the run
    prepends it. An SAE trained without BOS on a tokenizer that adds one is reported, not changed: the model's own
    input format wins and the reader learns that the SAE never saw that token.
    """
    if meta.prepend_bos is None:
        return False, None
    if meta.prepend_bos and not add_bos:
        if bos_token is None:
            return False, ("the SAE was trained with prepend_bos=true but the tokenizer has no BOS token: prompts run "
                           "without one")
        return True, (f"the SAE was trained with prepend_bos=true (TransformerLens prepends BOS) and the tokenizer adds "
                      f"none: every prompt of this run starts with {bos_token!r}")
    if not meta.prepend_bos and add_bos:
        return False, (f"the SAE was trained with prepend_bos=false but the tokenizer adds {bos_token!r}: every prompt "
                       "of this run starts with a BOS the SAE never saw (kept: the model's own input format)")
    return False, None


def checkpoint_for_sae(checkpoint, meta: SAEMeta):
    """(the checkpoint whose tokenizer prompts as the SAE was trained, the report's line or None): ``checkpoint``
    itself unless ``bos_for_sae`` says to prepend BOS, then a copy whose tokenizer adds it (harness.model.tokenizer
    .ChatTokenizer.add_bos; every prompt is built through its encode)."""
    tok = checkpoint.tokenizer
    prepend, note = bos_for_sae(meta, add_bos=tok.add_bos, bos_token=tok.bos_token)
    if prepend:
        checkpoint = dataclasses.replace(checkpoint, tokenizer=dataclasses.replace(tok, add_bos=True))
    return checkpoint, note


def check_features(params: SAEParams, features: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Return ``features`` as an int array after checking every index lies in [0, d_sae)."""
    idx = np.asarray(features)
    if idx.dtype.kind not in "iu":
        raise InputError(f"feature indices: expected integers, got dtype {idx.dtype}")
    bad = idx[(idx < 0) | (idx >= params.d_sae)]
    if bad.size:
        raise InputError(f"feature index {int(bad.flat[0])} out of range for an SAE of {params.d_sae} features")
    return idx


def _check_input(x, *, width: int, width_name: str, name: str) -> jax.Array:
    """Check the last axis and (when the array is concrete) finiteness of an input array."""
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != width:
        raise InputError(f"{name}: shape {tuple(x.shape)}, expected last axis {width_name}={width}")
    if not isinstance(x, jax.core.Tracer) and not _all_finite(x):
        bad = int(jnp.sum(~jnp.isfinite(x)))
        raise InputError(f"{name}: {bad} NaN/inf values in the input activations, expected all finite")
    return x


def centred(params: SAEParams, x) -> jax.Array:
    """x_c: x in float32, minus its mean over d_model when the SAE reads a centred residual (``center_input``)."""
    x = jnp.asarray(x).astype(jnp.float32)
    return x - jnp.mean(x, axis=-1, keepdims=True) if params.center_input else x


def _sae_input(params: SAEParams, x: jax.Array) -> jax.Array:
    """x' = x_c·norm_factor − b_dec (if the SAE subtracts it), in float32."""
    x = centred(params, x) * params.norm_factor
    if params.apply_b_dec_to_input:
        x = x - params.b_dec
    return x


@functools.partial(jax.jit, static_argnames=("rhs_contracting", "compute_dtype"))
def _dot_accumulate_f32(a: jax.Array, w: jax.Array, *, rhs_contracting: int, compute_dtype: str) -> jax.Array:
    """a [..., c] contracted with w's axis ``rhs_contracting`` (w 2-d), both operands cast to ``compute_dtype``, the
    result float32: one jitted dot_general, so the weight's cast happens inside it (a transient copy, nothing kept)."""
    a, w = a.astype(compute_dtype), w.astype(compute_dtype)
    return jax.lax.dot_general(a, w, (((a.ndim - 1,), (rhs_contracting,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _contract(params: SAEParams, a: jax.Array, w: jax.Array, *, transpose_w: bool = False) -> jax.Array:
    """a·w (a·wᵀ when ``transpose_w``) in the SAE's compute dtype with a float32 result. float32: the plain matmul
    (today's figures, bit for bit); bfloat16: bf16 x bf16 -> float32 (``_dot_accumulate_f32``)."""
    if params.compute_dtype == "float32":
        return a @ (w.T if transpose_w else w)
    return _dot_accumulate_f32(a, w, rhs_contracting=1 if transpose_w else 0, compute_dtype=params.compute_dtype)


def _projection(params: SAEParams, x, name: str) -> jax.Array:
    """x'·W_enc [..., d_sae] as float32, whatever float dtype x has (a bfloat16 residual is widened first, x' is
    formed in float32); the contraction itself runs in ``params.compute_dtype``."""
    x = _check_input(x, width=params.d_model, width_name="d_model", name=name)
    return _contract(params, _sae_input(params, x), params.W_enc)


def pre_activations(params: SAEParams, x, *, name: str = "x") -> jax.Array:
    """Encoder pre-activation x'·W_enc + b_enc [..., d_sae] (the gate pre-activation for gated SAEs)."""
    return _projection(params, x, name) + params.b_enc


def scatter_last_axis(shape: tuple[int, ...], idx: jax.Array, values: jax.Array) -> jax.Array:
    """Zeros of ``shape`` with ``values`` [..., k] written at indices ``idx`` [..., k] of the last axis."""
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    flat_idx = idx.reshape(rows, -1)
    out = jnp.zeros((rows, shape[-1]), values.dtype)
    out = out.at[jnp.arange(rows)[:, None], flat_idx].set(values.reshape(rows, -1))
    return out.reshape(shape)


def _topk(pre: jax.Array, k: int) -> jax.Array:
    """relu of the k largest entries along the last axis, zero elsewhere (ties: lowest index first)."""
    values, idx = jax.lax.top_k(pre, k)
    return scatter_last_axis(pre.shape, idx, jax.nn.relu(values))


def encode(params: SAEParams, x, *, name: str = "x") -> jax.Array:
    """Feature activations f [..., d_sae] with the SAE's own nonlinearity (see module docstring); x in any float
    dtype (bfloat16 included), computed in float32 but for x'·W_enc, which runs in ``params.compute_dtype``."""
    projection = _projection(params, x, name)
    pre = projection + params.b_enc
    arch = params.architecture
    if arch == "relu":
        f = jax.nn.relu(pre)
        return f if params.mag_scale is None else f * params.mag_scale
    if arch == "jumprelu":
        return jnp.where((pre > params.threshold) & (pre > 0), pre, 0.0)
    if arch == "gated":  # gate and magnitude share the one projection x'·W_enc
        magnitude = jax.nn.relu(projection * params.mag_scale + params.b_mag)
        return jnp.where(pre > 0, magnitude, 0.0)
    if arch == "topk":
        return _topk(pre, params.k)
    raise InputError(f"architecture {arch!r}: expected one of {ARCHITECTURES}")


def decode(params: SAEParams, f, *, name: str = "f") -> jax.Array:
    """Reconstruction x̂ [..., d_model] = (f·W_dec + b_dec) / out_norm_factor, float32 (f·W_dec in
    ``params.compute_dtype``)."""
    f = _check_input(f, width=params.d_sae, width_name="d_sae", name=name)
    return (_contract(params, f.astype(jnp.float32), params.W_dec) + params.b_dec) / params.out_norm_factor


def reconstruct(params: SAEParams, x, *, name: str = "x") -> jax.Array:
    """decode(encode(x)) in the model's space: the SAE's reconstruction of x, same shape as x, with the mean that
    ``centred`` removed added back (so x − reconstruct(x) is the SAE's own error x_c − x̂)."""
    x_hat = decode(params, encode(params, x, name=name), name=f"features of {name}")
    if params.center_input:
        x_hat = x_hat + jnp.mean(jnp.asarray(x).astype(jnp.float32), axis=-1, keepdims=True)
    return x_hat


def decoder_projection(params: SAEParams, x, features=None, *, name: str = "x") -> jax.Array:
    """The original work's feature reading: x·W_dec[f] on the raw, un-normalised residual (x_c for an SAE that reads
    a centred residual: the decoder rows live in that space).

    No bias, no nonlinearity, no norm_factor (micrlhf dots the captured residual with decoder rows); the dot runs in
    ``params.compute_dtype``, float32 result. Returns [..., d_sae], or [..., len(features)] when ``features`` selects
    some.
    """
    x = _check_input(x, width=params.d_model, width_name="d_model", name=name)
    W_dec = params.W_dec
    if features is not None:
        W_dec = W_dec[jnp.asarray(check_features(params, features))]
    return _contract(params, centred(params, x), W_dec, transpose_w=True)
