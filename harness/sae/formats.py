"""Readers for the common SAE file formats (saex, SAELens, Gemma Scope) and the harness's own format.

Each reader returns (SAEParams, SAEMeta) in the one layout of ``harness.sae.sae``; weights must be float
(cast to float32, each tensor read from the file once straight into the float32 buffer the SAE then holds, so a load
peaks at about the float32 weights' bytes: benchmarks/sae_memory.py), are checked for shape and finiteness, and every tensor in the file must be used by the
reader, or the load fails naming the leftover ones (a file is never half-read). Config values are typed and
ranged by one schema per format (``harness.validation``); harmless unknown keys come back in
``SAEMeta.ignored_fields``. The format is told from the files and, for cfg.json folders, from the tensors:
saex uploads cfg.json + sae_weights.safetensors with s_gate / scaling_factor, which is saex, not SAELens.

Files that carry no metadata (saex, Gemma Scope) take model/layer/hook from keyword arguments, from a
sidecar JSON next to the file named ``<stem>.meta.json`` (e.g. ``params.meta.json``, keys ``model_name``,
``layer``, ``hook``), from a saex cfg.json, or (the layer) from the path's name: saex's ``l20-...`` folders,
Gemma Scope's ``layer_20``. Sources that disagree are an error; ``SAEMeta.layer_source`` says which gave it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from pydantic import ConfigDict

from harness.errors import InputError
from harness.sae.sae import SAEMeta, SAEParams, check_params
from harness.validation import (NonNegativeInt, PositiveFloat, PositiveInt, Schema, StrictBool, StrictStr, file_error,
                                map_safetensors, one_line, read_json_object, short_repr, validate)

NATIVE_FORMAT = "harness-sae"
NATIVE_VERSION = 1
NATIVE_WEIGHTS = "sae.safetensors"
NATIVE_CARD = "sae.json"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
SAVE_DTYPES = ("float32", "float16")
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_([A-Za-z_]+)$")


# ---------------------------------------------------------------- shared pieces

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# saex's folder naming ("l20-test-run-5-7.00E-06") and Gemma Scope's ("layer_20"): the layer a metadata-less file reads.
_LAYER_IN_NAME = re.compile(r"^(?:l(?P<short>\d+)-.*|layer[_-]?(?P<long>\d+))$", re.IGNORECASE)
_SAEX_ONLY_TENSORS = frozenset({"s_gate", "scaling_factor", "mean_norm", "tgt_mean_norm"})


def _float_tensor(name: str, array: np.ndarray, source: Path) -> np.ndarray:
    """The array itself after checking it is float; integer, bool or other dtypes are refused (bits relabelled are not
    weights)."""
    if array.dtype.name not in FLOAT_DTYPES:
        raise InputError(f"{source}: tensor {name} has dtype {array.dtype.name}, expected a float dtype {FLOAT_DTYPES}")
    return array


_ALIGN = 64  # bytes: JAX's CPU client takes a host buffer aligned to this without copying it
_READ_CELLS = 1 << 22  # cells of one read block when a tensor is widened to float32 as it is read (16 MiB of float32)


def _aligned_float32(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised C-contiguous float32 array whose data starts on a _ALIGN-byte boundary."""
    n = math.prod(shape) * 4
    raw = np.empty(n + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + n].view(np.float32).reshape(shape)


def _to_device(array: np.ndarray) -> jax.Array:
    """A float32 jax array of `array`, the weights held once: an aligned float32 host array is handed to JAX as it is
    (on CPU without a copy), anything else is widened once into such an array first."""
    if not (array.dtype == np.float32 and array.flags.c_contiguous and array.ctypes.data % _ALIGN == 0):
        out = _aligned_float32(array.shape)
        np.copyto(out, array, casting="unsafe")
        array = out
    return jax.device_put(array)


def _read_float32(handle, tensor) -> np.ndarray:
    """One tensor of map_safetensors (its dtype, shape and byte offset) read from the open file straight into an aligned
    float32 array, float16/bfloat16/float64 converted block by block: no whole-tensor copy, nothing left mapped."""
    out = _aligned_float32(tuple(tensor.shape))
    flat = out.reshape(-1)
    native = np.dtype(tensor.dtype) == np.float32
    block = None if native else np.empty(min(flat.size, _READ_CELLS), tensor.dtype)
    handle.seek(tensor.offset)
    for start in range(0, flat.size, _READ_CELLS):
        stop = min(start + _READ_CELLS, flat.size)
        target = flat[start:stop] if native else block[:stop - start]
        view = memoryview(target.view(np.uint8))
        got = 0
        while got < view.nbytes:
            n = handle.readinto(view[got:])
            if not n:
                raise OSError(f"file ends inside tensor data (offset {tensor.offset})")
            got += n
        if not native:
            flat[start:stop] = target
    return out


def safetensors_names(path: Path) -> tuple[str, ...]:
    """The tensor names in a safetensors header (no data read), for telling formats apart."""
    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            return tuple(handle.keys())
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as err:
        raise InputError(f"{path}: cannot read as safetensors ({one_line(err, 150)})") from err


def _read_safetensors(path: Path) -> dict[str, jax.Array]:
    """All tensors of a safetensors file as float32 jax arrays, each read once from the file into the buffer JAX then
    holds (bf16/f16 widened as read; non-float dtypes refused before anything is read)."""
    mapped = map_safetensors(path, expected="a .safetensors file of SAE weights")
    for name, array in mapped.items():
        _float_tensor(name, array, path)
    try:
        with open(path, "rb", buffering=0) as handle:
            return {name: jax.device_put(_read_float32(handle, mapped.pop(name))) for name in list(mapped)}
    except OSError as err:
        raise file_error(path, err, expected="a .safetensors file of SAE weights") from err


def _take(tensors: dict[str, jax.Array], name: str, source: Path, why: str = "") -> jax.Array:
    """Pop a required tensor or raise a one-line InputError naming the file and the tensor."""
    if name not in tensors:
        have = ", ".join(sorted(tensors)) or "none"
        raise InputError(f"{source}: tensor {name} missing{why}; file has: {have}")
    return tensors.pop(name)


def _take_optional(tensors: dict[str, jax.Array], name: str):
    return tensors.pop(name) if name in tensors else None


def _scalar(tensors: dict[str, np.ndarray], name: str, source: Path) -> float | None:
    """Pop an optional scalar tensor (saex stores norms as 0-d or 1-element tensors)."""
    if name not in tensors:
        return None
    value = np.asarray(tensors.pop(name))
    if value.size != 1 or not np.isfinite(value).all() or float(value.reshape(())) <= 0:
        raise InputError(f"{source}: tensor {name} = {short_repr(value.tolist())}, expected one finite positive number")
    return float(value.reshape(()))


def _all_consumed(tensors: dict[str, np.ndarray], source: Path, fmt: str) -> None:
    """Every tensor of the file must have been used: a leftover one means the reader would half-read the SAE."""
    if tensors:
        raise InputError(f"{source}: tensor(s) {', '.join(sorted(tensors))} not used by the {fmt} reader; "
                         "expected only the tensors of that format (a different architecture or format?)")


def _present(path: Path) -> bool:
    """Whether a name is there at all: a broken symlink or a link loop counts (reading it then fails loudly)."""
    return path.exists() or path.is_symlink()


def sidecar_path(path: Path) -> Path:
    """Where the metadata of a metadata-less file lives: ``<stem>.meta.json`` beside it."""
    return path.with_suffix(".meta.json")


def _read_json(path: Path) -> dict:
    return read_json_object(path)


class Sidecar(Schema):
    """``<stem>.meta.json``: what a metadata-less SAE file reads (our own format: unknown keys are errors)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    model_name: StrictStr | None = None
    layer: NonNegativeInt | None = None
    hook: StrictStr | None = None


def _sidecar_meta(path: Path) -> dict:
    side = sidecar_path(path)
    if not _present(side):
        return {}
    found = validate(Sidecar, read_json_object(side), str(side))
    return {k: v for k, v in found.model_dump().items() if v is not None}


def layer_from_name(path: Path, *, depth: int = 1) -> int | None:
    """The layer a saex / Gemma Scope path names ("l20-test-run-…", "layer_20"), from the file stem and `depth` parents.

    saex names the file's own folder (depth 1); Gemma Scope's layer_N/width_…/average_l0_…/params.npz needs 3.
    """
    names = [path.stem] + [p.name for p in list(path.parents)[:depth]]
    found = {int(m["short"] or m["long"]) for m in (_LAYER_IN_NAME.match(n) for n in names) if m}
    if len(found) > 1:
        raise InputError(f"{path}: the path names several layers {sorted(found)}; pass layer= explicitly")
    return found.pop() if found else None


def _merge_meta(found: dict, given: dict, source: Path, *, sources: dict | None = None) -> dict:
    """Fill model_name/layer/hook from ``given`` where the file is silent; a contradiction is an error.

    ``sources`` says where each found value came from ("name", "sidecar", "cfg"); the result's
    ``layer_source`` is that source, or "option" when only the caller gave the layer.
    """
    merged = dict(found)
    layer = given.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise InputError(f"{source}: layer={layer!r} given by the caller, expected a non-negative integer")
    for key, value in given.items():
        if value is None:
            continue
        if merged.get(key) is not None and merged[key] != value:
            where = (sources or {}).get(key, "file")
            raise InputError(f"{source}: {where} says {key}={merged[key]!r}, caller says {key}={value!r}"
                             if where != "file" else f"{source}: file says {key}={merged[key]!r}, caller says {key}={value!r}")
        merged[key] = value
    if merged.get("layer") is not None and (isinstance(merged["layer"], bool) or not isinstance(merged["layer"], int)):
        raise InputError(f"{source}: layer={merged['layer']!r}, expected an integer")
    if merged.get("layer") is None:
        merged["layer_source"] = None
    elif found.get("layer") is not None:
        merged["layer_source"] = (sources or {}).get("layer", "cfg")
    else:
        merged["layer_source"] = "option"
    return merged


def _file_meta(path: Path, *extra: tuple[str, dict], depth: int = 1) -> tuple[dict, dict]:
    """Metadata a metadata-less file gets from its sidecar, its name and `extra` (source, values), all agreeing."""
    found, sources = {}, {}
    candidates = [("sidecar", _sidecar_meta(path)), ("name", {"layer": layer_from_name(path, depth=depth)}), *extra]
    for where, values in candidates:
        for key, value in values.items():
            if value is None:
                continue
            if key in found and found[key] != value:
                raise InputError(f"{path}: {sources[key]} says {key}={found[key]!r} but {where} says {key}={value!r}")
            found[key], sources[key] = value, where
    return found, sources


def parse_hook_name(hook_name: str) -> tuple[int | None, str]:
    """'blocks.12.hook_resid_post' → (12, 'resid_post'); other names come back whole with no layer."""
    match = _HOOK_NAME.match(hook_name)
    return (int(match.group(1)), match.group(2)) if match else (None, hook_name)


def _finish(params: SAEParams, source: Path, fmt: str, meta: dict, tensors: dict,
            ignored_fields: tuple[str, ...] = (), tensor_file: Path | None = None) -> tuple[SAEParams, SAEMeta]:
    _all_consumed(tensors, tensor_file or source, fmt)
    check_params(params, source=str(source))
    info = SAEMeta(
        d_model=params.d_model,
        d_sae=params.d_sae,
        source=str(source),
        model_name=meta.get("model_name"),
        layer=meta.get("layer"),
        hook=meta.get("hook"),
        format=fmt,
        ignored=(),
        layer_source=meta.get("layer_source"),
        ignored_fields=tuple(sorted(ignored_fields)),
    )
    return params, info


# ---------------------------------------------------------------- saex


class SaexConfig(Schema):
    """saex's cfg.json beside sae_weights.safetensors (its training config): the keys that would change the encode.

    saex's own loader always adds b_enc and never subtracts b_dec; a config saying otherwise is refused.
    """

    n_dimensions: PositiveInt | None = None
    expansion_factor: PositiveInt | None = None
    use_encoder_bias: StrictBool | None = None
    remove_decoder_bias: StrictBool | None = None
    layer: NonNegativeInt | None = None


def load_saex(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a saex safetensors file (the original work's gated SAE) as micrlhf's ``load_sae`` reads it.

    Gated when ``s_gate`` is present: gate [x'W_enc + b_enc > 0], magnitude
    relu(x'W_enc·softplus(s_gate)·scaling_factor + b_gate). ``mean_norm`` gives
    norm_factor = sqrt(d_model)/mean_norm; ``tgt_mean_norm`` (else mean_norm) the output factor.
    This is saex's own ``SAE.encode`` and micrlhf's ``resids_to_weights``; micrlhf's
    ``sae_encode_gated`` uses a different, inexact reparametrisation and is not reproduced.
    A saex file stores no layer: it comes from ``layer=``, a sidecar, the path's name ("l20-…") or a cfg.json
    beside ``sae_weights.safetensors`` (saex's hub layout); ``SAEMeta.layer_source`` says which.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SAELENS_WEIGHTS
    cfg_values, ignored_fields = {}, ()
    cfg_path = path.parent / SAELENS_CFG
    if path.name == SAELENS_WEIGHTS and _present(cfg_path):
        cfg = validate(SaexConfig, read_json_object(cfg_path), str(cfg_path))
        if cfg.remove_decoder_bias:
            raise InputError(f"{cfg_path}: remove_decoder_bias=true is not supported (saex's loader never subtracts b_dec)")
        cfg_values, ignored_fields = {"layer": cfg.layer}, cfg.ignored_fields()
    tensors = _read_safetensors(path)
    W_enc = _take(tensors, "W_enc", path)
    b_enc = _take(tensors, "b_enc", path)
    W_dec = _take(tensors, "W_dec", path)
    b_dec = _take(tensors, "b_dec", path)
    d_model = W_enc.shape[0] if W_enc.ndim == 2 else 1
    if cfg_values and cfg.n_dimensions is not None and cfg.n_dimensions != d_model:
        raise InputError(f"{cfg_path}: n_dimensions={cfg.n_dimensions} but W_enc has shape {tuple(W_enc.shape)}")
    if cfg_values and cfg.expansion_factor is not None and W_enc.ndim == 2 and W_enc.shape[1] != cfg.expansion_factor * d_model:
        raise InputError(f"{cfg_path}: expansion_factor={cfg.expansion_factor} but W_enc has shape {tuple(W_enc.shape)}")
    if cfg_values and cfg.use_encoder_bias is False and bool(jnp.any(b_enc != 0)):
        raise InputError(f"{cfg_path}: use_encoder_bias=false but b_enc is not zero; expected a saex SAE that adds b_enc")
    mean_norm = _scalar(tensors, "mean_norm", path)
    tgt_mean_norm = _scalar(tensors, "tgt_mean_norm", path)
    if tgt_mean_norm is not None and mean_norm is None:
        raise InputError(f"{path}: tensor tgt_mean_norm present without mean_norm, expected both or mean_norm alone")
    norm_factor = 1.0 if mean_norm is None else math.sqrt(d_model) / mean_norm
    out_norm_factor = norm_factor if tgt_mean_norm is None else math.sqrt(d_model) / tgt_mean_norm
    fields = dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec,
                  norm_factor=norm_factor, out_norm_factor=out_norm_factor, apply_b_dec_to_input=False)
    if "s_gate" in tensors:
        s_gate = _take(tensors, "s_gate", path)
        scaling = _take(tensors, "scaling_factor", path, " (a gated saex SAE needs it)")
        b_gate = _take(tensors, "b_gate", path, " (a gated saex SAE needs it)")
        params = SAEParams(architecture="gated", mag_scale=jnp.logaddexp(s_gate, 0.0) * scaling, b_mag=b_gate, **fields)
    elif "b_gate" in tensors:
        raise InputError(f"{path}: tensor b_gate without s_gate; expected both (gated saex) or neither")
    elif "threshold" in tensors:
        params = SAEParams(architecture="jumprelu", threshold=_take(tensors, "threshold", path), **fields)
    else:
        params = SAEParams(architecture="relu", mag_scale=_take_optional(tensors, "scaling_factor"), **fields)
    found, sources = _file_meta(path, ("cfg", cfg_values))
    meta = _merge_meta(found, dict(model_name=model_name, layer=layer, hook=hook), path, sources=sources)
    return _finish(params, path, "saex", meta, tensors, ignored_fields)


# ---------------------------------------------------------------- SAELens


_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "gated": "gated", "topk": "topk"}


class SAELensMetadata(Schema):
    model_name: StrictStr | None = None
    hook_name: StrictStr | None = None
    hook_layer: NonNegativeInt | None = None
    hook_head_index: NonNegativeInt | None = None
    model_from_pretrained_kwargs: dict | None = None
    prepend_bos: StrictBool | None = None
    sae_lens_version: StrictStr | None = None
    sae_lens_training_version: StrictStr | None = None


class SAELensConfig(Schema):
    """SAELens cfg.json (6.x or pre-6.0): typed fields; those that change the encode are checked, the rest listed."""

    architecture: StrictStr | None = None
    activation_fn_str: StrictStr | None = None
    activation_fn_kwargs: dict | None = None
    k: PositiveInt | None = None
    d_in: PositiveInt | None = None
    d_sae: PositiveInt | None = None
    expansion_factor: PositiveInt | None = None  # SAELens < 3 (and mats_sae_training) configs: d_sae = this x d_in
    apply_b_dec_to_input: StrictBool = True  # SAELens' own default when the key is absent
    normalize_activations: StrictStr | StrictBool | None = None  # a bool in old configs (see load_saelens)
    reshape_activations: StrictStr | None = None
    finetuning_scaling_factor: StrictBool = False
    rescale_acts_by_decoder_norm: StrictBool = False
    hook_head_index: NonNegativeInt | None = None
    hook_point_head_index: NonNegativeInt | None = None  # SAELens < 3's name of hook_head_index
    hook_name: StrictStr | None = None
    hook_point: StrictStr | None = None  # SAELens < 3's name of hook_name
    hook_layer: NonNegativeInt | None = None
    hook_point_layer: NonNegativeInt | None = None  # SAELens < 3's name of hook_layer
    model_name: StrictStr | None = None
    model_from_pretrained_kwargs: dict | None = None
    prepend_bos: StrictBool | None = None
    sae_lens_version: StrictStr | None = None
    sae_lens_training_version: StrictStr | None = None
    metadata: SAELensMetadata | None = None


# model_from_pretrained_kwargs that SAELens hands to HookedTransformer.from_pretrained(_no_processing) and that leave
# the activations at every hook this harness reads (resid_pre/post, attn_out, mlp_out) as they are (TransformerLens'
# HookedTransformer.load_and_process_state_dict): fold_ln moves LayerNorm scales/biases into the weights that read the
# normalised residual; center_unembed centres W_U (logits, not the residual); fold_value_biases moves b_V into b_O
# (attention rows sum to 1, so the head's output is the same); refactor_factored_attn_matrices re-factors W_Q/W_K and
# W_V/W_O keeping W_QK, W_OV and the biases' effect; n_devices / device / move_to_device place the model.
# center_writing_weights does change them (it is read, SAEParams.center_input); any other key is refused.
_TL_KWARGS_NO_EFFECT = {"fold_ln": bool, "center_unembed": bool, "fold_value_biases": bool,
                        "refactor_factored_attn_matrices": bool, "n_devices": int, "device": str, "move_to_device": bool}
# SAELens 3.19.2 ("fix: centre writing weights defaults") began recording model_from_pretrained_kwargs and loading the
# model with from_pretrained_no_processing; before it, training loaded HookedTransformer.from_pretrained, whose
# center_writing_weights defaults to true (mats_sae_training and SAELens < 2.0 could pass it no kwargs at all).
_SAELENS_RECORDS_KWARGS = (3, 19, 2)


def _version(text: str, cfg_path: Path) -> tuple[int, int, int]:
    """'6.12.1', '6.0.0-rc.0', '3.19.2' -> (major, minor, patch)."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise InputError(f"{cfg_path}: SAELens version {text!r}, expected major.minor.patch")
    return int(match[1]), int(match[2]), int(match[3])


def _one_of(cfg: SAELensConfig, metadata: SAELensMetadata, key: str, cfg_path: Path):
    """A key pre-6.0 configs keep at the top level and SAELens 6 under metadata; both given and different is refused."""
    top, meta = getattr(cfg, key), getattr(metadata, key)
    if top is not None and meta is not None and top != meta:
        raise InputError(f"{cfg_path}: {key}={short_repr(top)} but metadata.{key}={short_repr(meta)}; expected one value")
    return top if top is not None else meta


def _centring(cfg: SAELensConfig, metadata: SAELensMetadata, cfg_path: Path, *, legacy: bool) -> tuple[bool, list[str]]:
    """(whether the SAE read TransformerLens' centred residual, the defaults applied) from model_from_pretrained_kwargs,
    else from which SAELens trained it (see _SAELENS_RECORDS_KWARGS)."""
    kwargs = _one_of(cfg, metadata, "model_from_pretrained_kwargs", cfg_path)
    if kwargs is not None:
        for key, value in kwargs.items():
            if key == "center_writing_weights":
                wanted = bool
            elif key in _TL_KWARGS_NO_EFFECT:
                wanted = _TL_KWARGS_NO_EFFECT[key]
            else:
                raise InputError(f"{cfg_path}: model_from_pretrained_kwargs.{key}={short_repr(value)} may change the "
                                 f"activations the SAE read; expected only center_writing_weights and "
                                 f"{', '.join(sorted(_TL_KWARGS_NO_EFFECT))}")
            if isinstance(value, bool) is not (wanted is bool) or not isinstance(value, wanted):
                raise InputError(f"{cfg_path}: model_from_pretrained_kwargs.{key}={short_repr(value)}, expected a "
                                 f"{wanted.__name__}")
        # recorded since SAELens 3.19.2, which loads the model with from_pretrained_no_processing: absent means false
        return kwargs.get("center_writing_weights", False), []
    trained_by = _one_of(cfg, metadata, "sae_lens_training_version", cfg_path)
    if trained_by is not None and _version(trained_by, cfg_path) < _SAELENS_RECORDS_KWARGS:
        return True, [(f"model_from_pretrained_kwargs.center_writing_weights=true (trained by SAELens {trained_by}, "
                       "before 3.19.2: through HookedTransformer.from_pretrained, which centres the writing weights "
                       "by default, its kwargs not recorded)")]
    if legacy and trained_by is None:
        return True, [("model_from_pretrained_kwargs.center_writing_weights=true (a SAELens < 2.0 / mats_sae_training "
                       "config: trained through HookedTransformer.from_pretrained, which centres the writing weights "
                       "by default; SAELens' registry sets the same for gpt2-small-res-jb)")]
    return False, [("model_from_pretrained_kwargs={} (not recorded; SAELens' default: the model loaded without "
                    "processing, the residual not centred)")]


def load_saelens(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a SAELens folder (cfg.json + sae_weights.safetensors), new-style (6.x) or pre-6.0 config, or the SAELens
    < 3.0 / mats_sae_training layout of jbloom/GPT2-Small-SAEs-Reformatted (hook_point, hook_point_layer, d_in, d_sae
    or expansion_factor, no architecture: a standard ReLU SAE, as SAELens' handle_pre_6_0_config defaults it).

    Architectures standard/jumprelu/gated/topk; ``normalize_activations`` must be "none" (others
    rescale activations at run time in ways this reader does not reproduce, so they are refused).
    What the SAE read in training comes back in SAEMeta: ``center_writing_weights`` (model_from_pretrained_kwargs, at
    the top level before 6.0 or under metadata; see _centring for a config that does not record it; SAEParams
    .center_input follows it, ``sae.for_model`` adapts it to the model's norm) and ``prepend_bos`` (true by default
    before 6.0, as SAELens defaults it). Every default the file left to SAELens is listed in ``defaulted_fields``.
    """
    path = Path(path)
    cfg_path, weights_path = path / SAELENS_CFG, path / SAELENS_WEIGHTS
    for needed in (cfg_path, weights_path):
        if not _present(needed):
            raise InputError(f"{path}: SAELens folder lacks {needed.name}, expected cfg.json and sae_weights.safetensors")
    cfg = validate(SAELensConfig, read_json_object(cfg_path), str(cfg_path))
    metadata = cfg.metadata or SAELensMetadata()
    saved_by = _one_of(cfg, metadata, "sae_lens_version", cfg_path)
    pre_6 = saved_by is None or _version(saved_by, cfg_path) < (6, 0, 0)  # SAELens' handle_config_defaulting
    defaulted = []
    # SAELens < 3.0 (and mats_sae_training, which wrote jbloom's gpt2-small-res-jb) named neither the architecture nor
    # the activation function: SAELens' handle_pre_6_0_config defaults them to a standard ReLU SAE. Accepted in exactly
    # that layout: top-level hook_point, no metadata block, no hook_name, no version from SAELens 3.0 on.
    legacy = (cfg.architecture is None and cfg.activation_fn_str is None and cfg.hook_point is not None
              and cfg.hook_name is None and cfg.metadata is None and saved_by is None
              and (cfg.sae_lens_training_version is None or _version(cfg.sae_lens_training_version, cfg_path) < (3, 0, 0)))
    arch_name = cfg.architecture
    if arch_name is None and legacy:
        arch_name = "standard"
        defaulted += ["architecture=standard (SAELens' default for a pre-6.0 config naming none)",
                      "activation_fn=relu (SAELens' default for a pre-6.0 config naming none)"]
    elif arch_name is None:  # pre-6.0 files may only name the activation function
        if cfg.activation_fn_str is None:
            raise InputError(f"{cfg_path}: neither architecture nor activation_fn_str is given, and the config is not "
                             "SAELens < 3.0's layout (top-level hook_point, no metadata, no SAELens version >= 3.0); "
                             "expected one of them")
        arch_name = {"relu": "standard", "topk": "topk"}.get(cfg.activation_fn_str, cfg.activation_fn_str)
    if "apply_b_dec_to_input" not in cfg.model_fields_set:
        defaulted.append("apply_b_dec_to_input=true (SAELens' default when the key is absent)")
    if arch_name not in _SAELENS_ARCH:
        raise InputError(f"{cfg_path}: architecture={arch_name!r}, expected one of {sorted(_SAELENS_ARCH)}")
    norm = cfg.normalize_activations
    if isinstance(norm, bool):  # SAELens' handle_pre_6_0_config: false -> "none", true -> "expected_average_only_in"
        norm = "expected_average_only_in" if norm else "none"
    norm = norm or "none"
    if norm != "none":
        raise InputError(f"{cfg_path}: normalize_activations={norm!r} is not supported, expected 'none'")
    reshape = cfg.reshape_activations or "none"
    head = next((h for h in (cfg.hook_head_index, cfg.hook_point_head_index, metadata.hook_head_index) if h is not None),
                None)
    if reshape != "none" or head is not None:
        raise InputError(f"{cfg_path}: per-head SAEs (reshape_activations={reshape!r}) are not supported, expected 'none'")
    for flag in ("finetuning_scaling_factor", "rescale_acts_by_decoder_norm"):
        if getattr(cfg, flag):
            raise InputError(f"{cfg_path}: {flag}=true is not supported, expected false")
    hook_name = metadata.hook_name or cfg.hook_name or cfg.hook_point
    file_layer, file_hook = parse_hook_name(hook_name) if hook_name else (None, None)
    hook_layers = {v for v in (cfg.hook_layer, cfg.hook_point_layer, metadata.hook_layer) if v is not None}
    if len(hook_layers) > 1:
        raise InputError(f"{cfg_path}: hook layers {sorted(hook_layers)} given; expected one")
    hook_layer = hook_layers.pop() if hook_layers else None
    if hook_layer is not None and file_layer is not None and hook_layer != file_layer:
        raise InputError(f"{cfg_path}: hook_layer={hook_layer} contradicts hook name {hook_name!r}")
    found = dict(
        model_name=metadata.model_name or cfg.model_name,
        layer=file_layer if file_layer is not None else hook_layer,
        hook=file_hook,
    )
    center, centring_defaults = _centring(cfg, metadata, cfg_path, legacy=legacy)
    defaulted += centring_defaults
    tensors = _read_safetensors(weights_path)
    saex_names = sorted(_SAEX_ONLY_TENSORS & set(tensors))
    if saex_names:
        raise InputError(f"{weights_path}: tensor(s) {', '.join(saex_names)} belong to a saex SAE, not SAELens; "
                         "load it with the saex reader")
    architecture = _SAELENS_ARCH[arch_name]
    W_enc = _take(tensors, "W_enc", weights_path)
    if architecture == "gated":
        b_enc = _take(tensors, "b_gate", weights_path)
        mag_scale = jnp.exp(_take(tensors, "r_mag", weights_path))
        b_mag = _take(tensors, "b_mag", weights_path)
    else:
        b_enc, mag_scale, b_mag = _take(tensors, "b_enc", weights_path), None, None
    threshold = _take(tensors, "threshold", weights_path) if architecture == "jumprelu" else None
    k = None
    kwargs_k = (cfg.activation_fn_kwargs or {}).get("k")
    if architecture != "topk" and (cfg.k is not None or kwargs_k is not None):
        raise InputError(f"{cfg_path}: k={cfg.k if cfg.k is not None else kwargs_k!r} given for a {arch_name} SAE; "
                         "expected k only with architecture topk")
    if architecture == "topk":
        k = cfg.k if cfg.k is not None else kwargs_k
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InputError(f"{cfg_path}: topk SAE with k={k!r}, expected a positive integer k")
    params = SAEParams(
        W_enc=W_enc, b_enc=b_enc,
        W_dec=_take(tensors, "W_dec", weights_path), b_dec=_take(tensors, "b_dec", weights_path),
        threshold=threshold, mag_scale=mag_scale, b_mag=b_mag, architecture=architecture, k=k,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input, center_input=center,
    )
    if W_enc.ndim == 2:
        for key, actual in (("d_in", params.d_model), ("d_sae", params.d_sae)):
            if getattr(cfg, key) is not None and getattr(cfg, key) != actual:
                raise InputError(f"{cfg_path}: {key}={getattr(cfg, key)} but W_enc has shape {tuple(W_enc.shape)}")
        if cfg.expansion_factor is not None and cfg.expansion_factor * params.d_model != params.d_sae:
            raise InputError(f"{cfg_path}: expansion_factor={cfg.expansion_factor} but W_enc has shape "
                             f"{tuple(W_enc.shape)}")
    meta = _merge_meta(found, dict(model_name=model_name, layer=layer, hook=hook), path, sources={"layer": "cfg"})
    params, info = _finish(params, path, "saelens", meta, tensors, cfg.ignored_fields(), tensor_file=weights_path)
    prepend_bos = _one_of(cfg, metadata, "prepend_bos", cfg_path)
    if prepend_bos is None and pre_6:  # SAELens' handle_pre_6_0_config: setdefault("prepend_bos", True)
        prepend_bos = True
        defaulted.append("prepend_bos=true (SAELens' default for a pre-6.0 config)")
    return params, dataclasses.replace(info, center_writing_weights=center, prepend_bos=prepend_bos,
                                       defaulted_fields=tuple(defaulted))


# ---------------------------------------------------------------- Gemma Scope


def _read_npz(path: Path) -> dict[str, jax.Array]:
    """Every array of an .npz (no pickles) as a float32 jax array, each converted as it is read (one array's numpy copy
    at a time); `W_enc` and `w_enc` both present is an error, not a choice."""
    if path.is_dir():
        raise file_error(path, IsADirectoryError(21, "folder"), expected="a params.npz file")
    tensors: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise InputError(f"{path}: holds a single array, expected an .npz archive of named arrays")
            for key in data.files:
                name = "W_" + key[2:] if key.startswith("w_") else key
                if name in tensors:
                    raise InputError(f"{path}: arrays {name} and {key} both present; expected one of them")
                tensors[name] = _to_device(_float_tensor(key, np.asarray(data[key]), path))
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, TypeError, AttributeError) as err:
        raise InputError(f"{path}: cannot read as .npz ({type(err).__name__}: {one_line(err, 120)})") from err
    return tensors


def load_gemma_scope(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a Gemma Scope ``params.npz`` (JumpReLU, no b_dec subtraction, lower-case w_ keys accepted)."""
    path = Path(path)
    if path.is_dir():
        path = path / GEMMA_SCOPE_FILE
    tensors = _read_npz(path)
    params = SAEParams(
        W_enc=_take(tensors, "W_enc", path), b_enc=_take(tensors, "b_enc", path),
        W_dec=_take(tensors, "W_dec", path), b_dec=_take(tensors, "b_dec", path),
        threshold=_take(tensors, "threshold", path), architecture="jumprelu", apply_b_dec_to_input=False,
    )
    found, sources = _file_meta(path, ("repository", {"hook": gemma_scope_hook(path)}), depth=3)
    meta = _merge_meta(found, dict(model_name=model_name, layer=layer, hook=hook), path, sources=sources)
    return _finish(params, path, "gemma_scope", meta, tensors)


# Gemma Scope repositories (google/gemma-scope-<model>-<site>, as the HF cache names them) -> the hook they read.
_GEMMA_SCOPE_REPO = re.compile(r"gemma-scope-[\w.-]*?-(res|mlp|att|transcoders)(?:-canonical)?$")
_GEMMA_SCOPE_SITES = {"res": "resid_post", "mlp": "mlp_out"}


def gemma_scope_hook(path: Path) -> str | None:
    """The hook a Gemma Scope file reads, from its repository's name in the path (…-res: the residual after the block,
    …-mlp: the MLP's post-normed output); None when the path names no repository. Attention (-att: the heads' outputs
    before o_proj) and transcoders read points this harness does not capture: refused in one line."""
    for part in [p.name for p in path.parents]:
        name = part.removeprefix("models--").replace("--", "/").rpartition("/")[2]
        match = _GEMMA_SCOPE_REPO.search(name)
        if match is None:
            continue
        if match[1] not in _GEMMA_SCOPE_SITES:
            raise InputError(f"{path}: a Gemma Scope {match[1]!r} SAE ({part}) reads a point this harness does not "
                             f"capture; expected a -res (resid_post) or -mlp (mlp_out) release")
        return _GEMMA_SCOPE_SITES[match[1]]
    return None


# ---------------------------------------------------------------- harness-native


def save_sae(path: str | Path, params: SAEParams, meta: SAEMeta, card: dict, *, dtype: str = "float32") -> Path:
    """Write ``path/sae.safetensors`` (weights) and ``path/sae.json`` (settings, metadata, card).

    The card holds whatever a reader should know (training data, figures); it must be JSON.
    float16 halves the size for committing; values beyond float16's range are refused.
    """
    path = Path(path)
    if dtype not in SAVE_DTYPES:
        raise InputError(f"save_sae dtype={dtype!r}, expected one of {SAVE_DTYPES}")
    check_params(params, source=str(path))
    tensors = {}
    for field in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "mag_scale", "b_mag"):
        value = getattr(params, field)
        if value is None:
            continue
        array = np.asarray(value, dtype=np.float32)
        if dtype == "float16" and np.abs(array).max(initial=0.0) > np.finfo(np.float16).max:
            raise InputError(f"{path}: tensor {field} exceeds the float16 range, save with dtype='float32'")
        tensors[field] = np.ascontiguousarray(array.astype(dtype))
    settings = {
        "format": NATIVE_FORMAT, "version": NATIVE_VERSION, "dtype": dtype,
        "architecture": params.architecture, "k": params.k, "norm_factor": params.norm_factor,
        "out_norm_factor": params.out_norm_factor, "apply_b_dec_to_input": params.apply_b_dec_to_input,
        "meta": {"model_name": meta.model_name, "layer": meta.layer, "hook": meta.hook},
        "card": card,
    }
    if params.center_input:  # written only when set: files of SAEs that read the plain residual stay as they were
        settings["center_input"] = True
    try:
        text = json.dumps(settings, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: card is not plain JSON ({err})") from err
    path.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(tensors, str(path / NATIVE_WEIGHTS), metadata={"format": NATIVE_FORMAT})
    (path / NATIVE_CARD).write_text(text + "\n")
    return path


def read_card(path: str | Path) -> dict:
    """The card dictionary saved with a harness-native SAE."""
    return _native_settings(Path(path))["card"]


class NativeMeta(Schema):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    model_name: StrictStr | None = None
    layer: NonNegativeInt | None = None
    hook: StrictStr | None = None


class NativeSettings(Schema):
    """sae.json as save_sae writes it (our own format: every key known, unknown keys are errors)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    format: StrictStr
    version: int
    dtype: StrictStr
    architecture: StrictStr
    k: PositiveInt | None = None
    norm_factor: PositiveFloat
    out_norm_factor: PositiveFloat
    apply_b_dec_to_input: StrictBool
    center_input: StrictBool = False
    meta: NativeMeta
    card: dict


def _native_settings(path: Path) -> dict:
    card_path = path / NATIVE_CARD
    if not _present(card_path):
        raise InputError(f"{path}: no {NATIVE_CARD}, expected a folder written by save_sae")
    settings = read_json_object(card_path)
    if settings.get("format") != NATIVE_FORMAT or settings.get("version") != NATIVE_VERSION:
        raise InputError(f"{card_path}: format={short_repr(settings.get('format'))} version={short_repr(settings.get('version'))}, "
                         f"expected {NATIVE_FORMAT!r} version {NATIVE_VERSION}")
    return validate(NativeSettings, settings, str(card_path)).model_dump()


def load_sae(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a folder written by ``save_sae``."""
    path = Path(path)
    settings = _native_settings(path)
    weights_path = path / NATIVE_WEIGHTS
    tensors = _read_safetensors(weights_path)
    params = SAEParams(
        W_enc=_take(tensors, "W_enc", weights_path), b_enc=_take(tensors, "b_enc", weights_path),
        W_dec=_take(tensors, "W_dec", weights_path), b_dec=_take(tensors, "b_dec", weights_path),
        threshold=_take_optional(tensors, "threshold"), mag_scale=_take_optional(tensors, "mag_scale"),
        b_mag=_take_optional(tensors, "b_mag"), architecture=settings["architecture"], k=settings["k"],
        norm_factor=settings["norm_factor"], out_norm_factor=settings["out_norm_factor"],
        apply_b_dec_to_input=settings["apply_b_dec_to_input"], center_input=settings["center_input"],
    )
    found = {k: v for k, v in settings["meta"].items() if v is not None}
    meta = _merge_meta(found, dict(model_name=model_name, layer=layer, hook=hook), path, sources={"layer": "cfg"})
    params, info = _finish(params, path, "native", meta, tensors, tensor_file=weights_path)
    return params, (dataclasses.replace(info, center_writing_weights=True) if params.center_input else info)


# ---------------------------------------------------------------- dispatch


def _looks_saex(weights: Path) -> bool:
    """A safetensors file whose tensors are saex's (s_gate, scaling_factor, mean_norm, ...), whatever the folder says."""
    return bool(_SAEX_ONLY_TENSORS & set(safetensors_names(weights)))


def detect_format(path: str | Path) -> str:
    """Name the format at ``path`` from what is there — the files and, for cfg.json folders, the tensors.

    A cfg.json + sae_weights.safetensors folder holding s_gate / scaling_factor is saex's hub layout, not SAELens.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"{path}: a broken symlink or symlink loop, expected an SAE file or folder")
        raise InputError(f"{path}: no such file or folder, expected an SAE file or folder")
    if path.is_dir():
        if _present(path / NATIVE_CARD):
            return "native"
        if _present(path / SAELENS_CFG):
            weights = path / SAELENS_WEIGHTS
            return "saex" if weights.is_file() and _looks_saex(weights) else "saelens"
        if _present(path / GEMMA_SCOPE_FILE):
            return "gemma_scope"
        if (path / SAELENS_WEIGHTS).is_file() and _looks_saex(path / SAELENS_WEIGHTS):
            return "saex"
        raise InputError(f"{path}: unknown SAE format, expected {NATIVE_CARD}, {SAELENS_CFG} or {GEMMA_SCOPE_FILE} inside")
    if path.suffix == ".npz":
        return "gemma_scope"
    if path.suffix == ".safetensors":
        if path.name == SAELENS_WEIGHTS and _present(path.parent / SAELENS_CFG):
            return "saex" if _looks_saex(path) else "saelens"
        if path.name == NATIVE_WEIGHTS and _present(path.parent / NATIVE_CARD):
            return "native"
        return "saex"
    raise InputError(f"{path}: unknown SAE format, expected a folder, a .safetensors (saex) or a .npz (Gemma Scope)")


_LOADERS = {"native": load_sae, "saelens": load_saelens, "gemma_scope": load_gemma_scope, "saex": load_saex}


def load_any(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Load an SAE in any supported format; keyword metadata fills what the file does not say.

    Every tensor in the file is used by the chosen reader or the load fails naming the leftover ones;
    ``SAEMeta.layer_source`` says where the layer came from ("option", "name", "sidecar" or "cfg").
    """
    path = Path(path)
    fmt = detect_format(path)
    if path.is_file() and fmt in ("saelens", "native"):
        path = path.parent
    try:
        return _LOADERS[fmt](path, model_name=model_name, layer=layer, hook=hook)
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to read") from None
