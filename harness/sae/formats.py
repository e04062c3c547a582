"""Readers for the common SAE file formats (saex, SAELens, Gemma Scope) and the harness's own format.

Each reader returns (SAEParams, SAEMeta) in the one layout of ``harness.sae.sae``; weights are
cast to float32, checked for shape and finiteness, and any tensor a reader does not use is listed
in ``SAEMeta.ignored`` rather than dropped silently.

Files that carry no metadata (saex, Gemma Scope) take model/layer/hook from keyword arguments or
from a sidecar JSON next to the file, named ``<stem>.meta.json`` (e.g. ``params.meta.json``), with
keys ``model_name``, ``layer``, ``hook``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from harness.errors import InputError
from harness.sae.sae import SAEMeta, SAEParams, check_params

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


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as float32 numpy arrays (bf16/f16 widened)."""
    try:
        with safetensors.safe_open(str(path), framework="flax") as handle:
            return {key: np.asarray(handle.get_tensor(key), dtype=np.float32) for key in handle.keys()}
    except (safetensors.SafetensorError, OSError) as err:
        raise InputError(f"{path}: cannot read as safetensors ({str(err).splitlines()[0]})") from err


def _take(tensors: dict[str, np.ndarray], name: str, source: Path, why: str = "") -> jnp.ndarray:
    """Pop a required tensor or raise a one-line InputError naming the file and the tensor."""
    if name not in tensors:
        have = ", ".join(sorted(tensors)) or "none"
        raise InputError(f"{source}: tensor {name} missing{why}; file has: {have}")
    return jnp.asarray(tensors.pop(name), dtype=jnp.float32)


def _take_optional(tensors: dict[str, np.ndarray], name: str):
    return jnp.asarray(tensors.pop(name), dtype=jnp.float32) if name in tensors else None


def _scalar(tensors: dict[str, np.ndarray], name: str, source: Path) -> float | None:
    """Pop an optional scalar tensor (saex stores norms as 0-d or 1-element tensors)."""
    if name not in tensors:
        return None
    value = np.asarray(tensors.pop(name))
    if value.size != 1 or not np.isfinite(value).all() or float(value.reshape(())) <= 0:
        raise InputError(f"{source}: tensor {name} = {value.tolist()}, expected one finite positive number")
    return float(value.reshape(()))


def sidecar_path(path: Path) -> Path:
    """Where the metadata of a metadata-less file lives: ``<stem>.meta.json`` beside it."""
    return path.with_suffix(".meta.json")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _merge_meta(found: dict, given: dict, source: Path) -> dict:
    """Fill model_name/layer/hook from ``given`` where the file is silent; a contradiction is an error."""
    merged = dict(found)
    for key, value in given.items():
        if value is None:
            continue
        if merged.get(key) is not None and merged[key] != value:
            raise InputError(f"{source}: file says {key}={merged[key]!r}, caller says {key}={value!r}")
        merged[key] = value
    if merged.get("layer") is not None and not isinstance(merged["layer"], int):
        raise InputError(f"{source}: layer={merged['layer']!r}, expected an integer")
    return merged


def _sidecar_meta(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        return {}
    data = _read_json(side)
    unknown = set(data) - {"model_name", "layer", "hook"}
    if unknown:
        raise InputError(f"{side}: unknown keys {sorted(unknown)}, expected model_name, layer, hook")
    return data


def parse_hook_name(hook_name: str) -> tuple[int | None, str]:
    """'blocks.12.hook_resid_post' → (12, 'resid_post'); other names come back whole with no layer."""
    match = _HOOK_NAME.match(hook_name)
    return (int(match.group(1)), match.group(2)) if match else (None, hook_name)


def _finish(params: SAEParams, source: Path, fmt: str, meta: dict, ignored: list[str]) -> tuple[SAEParams, SAEMeta]:
    check_params(params, source=str(source))
    info = SAEMeta(
        d_model=params.d_model,
        d_sae=params.d_sae,
        source=str(source),
        model_name=meta.get("model_name"),
        layer=meta.get("layer"),
        hook=meta.get("hook"),
        format=fmt,
        ignored=tuple(sorted(ignored)),
    )
    return params, info


# ---------------------------------------------------------------- saex


def load_saex(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a saex safetensors file (the original work's gated SAE) as micrlhf's ``load_sae`` reads it.

    Gated when ``s_gate`` is present: gate [x'W_enc + b_enc > 0], magnitude
    relu(x'W_enc·softplus(s_gate)·scaling_factor + b_gate). ``mean_norm`` gives
    norm_factor = sqrt(d_model)/mean_norm; ``tgt_mean_norm`` (else mean_norm) the output factor.
    This is saex's own ``SAE.encode`` and micrlhf's ``resids_to_weights``; micrlhf's
    ``sae_encode_gated`` uses a different, inexact reparametrisation and is not reproduced.
    """
    path = Path(path)
    tensors = _read_safetensors(path)
    W_enc = _take(tensors, "W_enc", path)
    b_enc = _take(tensors, "b_enc", path)
    W_dec = _take(tensors, "W_dec", path)
    b_dec = _take(tensors, "b_dec", path)
    d_model = W_enc.shape[0]
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
    elif "threshold" in tensors:
        params = SAEParams(architecture="jumprelu", threshold=_take(tensors, "threshold", path), **fields)
    else:
        params = SAEParams(architecture="relu", mag_scale=_take_optional(tensors, "scaling_factor"), **fields)
    meta = _merge_meta(_sidecar_meta(path), dict(model_name=model_name, layer=layer, hook=hook), path)
    return _finish(params, path, "saex", meta, list(tensors))


# ---------------------------------------------------------------- SAELens


_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "gated": "gated", "topk": "topk"}


def load_saelens(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a SAELens folder (cfg.json + sae_weights.safetensors), new-style (6.x) or pre-6.0 config.

    Architectures standard/jumprelu/gated/topk; ``normalize_activations`` must be "none" (others
    rescale activations at run time in ways this reader does not reproduce, so they are refused).
    """
    path = Path(path)
    cfg_path, weights_path = path / SAELENS_CFG, path / SAELENS_WEIGHTS
    for needed in (cfg_path, weights_path):
        if not needed.exists():
            raise InputError(f"{path}: SAELens folder lacks {needed.name}, expected cfg.json and sae_weights.safetensors")
    cfg = _read_json(cfg_path)
    metadata = cfg.get("metadata") or {}
    arch_name = cfg.get("architecture")
    if arch_name is None:  # pre-6.0 files may only name the activation function
        arch_name = {"relu": "standard", "topk": "topk"}.get(cfg.get("activation_fn_str", "relu"))
    if arch_name not in _SAELENS_ARCH:
        raise InputError(f"{cfg_path}: architecture={arch_name!r}, expected one of {sorted(_SAELENS_ARCH)}")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise InputError(f"{cfg_path}: normalize_activations={norm!r} is not supported, expected 'none'")
    reshape = cfg.get("reshape_activations") or "none"
    if reshape != "none" or cfg.get("hook_head_index", metadata.get("hook_head_index")) is not None:
        raise InputError(f"{cfg_path}: per-head SAEs (reshape_activations={reshape!r}) are not supported, expected 'none'")
    if cfg.get("finetuning_scaling_factor"):
        raise InputError(f"{cfg_path}: finetuning_scaling_factor=true is not supported, expected false")
    hook_name = metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    file_layer, file_hook = parse_hook_name(hook_name) if hook_name else (None, None)
    hook_layer = cfg.get("hook_layer", metadata.get("hook_layer"))
    if hook_layer is not None and file_layer is not None and hook_layer != file_layer:
        raise InputError(f"{cfg_path}: hook_layer={hook_layer} contradicts hook name {hook_name!r}")
    found = dict(
        model_name=metadata.get("model_name") or cfg.get("model_name"),
        layer=file_layer if file_layer is not None else hook_layer,
        hook=file_hook,
    )
    tensors = _read_safetensors(weights_path)
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
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if not isinstance(k, int):
            raise InputError(f"{cfg_path}: topk SAE with k={k!r}, expected an integer k")
    params = SAEParams(
        W_enc=W_enc, b_enc=b_enc,
        W_dec=_take(tensors, "W_dec", weights_path), b_dec=_take(tensors, "b_dec", weights_path),
        threshold=threshold, mag_scale=mag_scale, b_mag=b_mag, architecture=architecture, k=k,
        # SAELens' own default when the key is absent is True.
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
    )
    for key, actual in (("d_in", params.d_model), ("d_sae", params.d_sae)):
        if key in cfg and cfg[key] != actual:
            raise InputError(f"{cfg_path}: {key}={cfg[key]} but W_enc has shape {tuple(W_enc.shape)}")
    meta = _merge_meta(found, dict(model_name=model_name, layer=layer, hook=hook), path)
    return _finish(params, path, "saelens", meta, list(tensors))


# ---------------------------------------------------------------- Gemma Scope


def load_gemma_scope(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a Gemma Scope ``params.npz`` (JumpReLU, no b_dec subtraction, lower-case w_ keys accepted)."""
    path = Path(path)
    if path.is_dir():
        path = path / GEMMA_SCOPE_FILE
    try:
        with np.load(path) as data:
            tensors = {("W_" + key[2:] if key.startswith("w_") else key): np.asarray(data[key], dtype=np.float32)
                       for key in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read as .npz ({str(err).splitlines()[0]})") from err
    params = SAEParams(
        W_enc=_take(tensors, "W_enc", path), b_enc=_take(tensors, "b_enc", path),
        W_dec=_take(tensors, "W_dec", path), b_dec=_take(tensors, "b_dec", path),
        threshold=_take(tensors, "threshold", path), architecture="jumprelu", apply_b_dec_to_input=False,
    )
    meta = _merge_meta(_sidecar_meta(path), dict(model_name=model_name, layer=layer, hook=hook), path)
    return _finish(params, path, "gemma_scope", meta, list(tensors))


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


def _native_settings(path: Path) -> dict:
    card_path = path / NATIVE_CARD
    if not card_path.exists():
        raise InputError(f"{path}: no {NATIVE_CARD}, expected a folder written by save_sae")
    settings = _read_json(card_path)
    if settings.get("format") != NATIVE_FORMAT or settings.get("version") != NATIVE_VERSION:
        raise InputError(f"{card_path}: format={settings.get('format')!r} version={settings.get('version')!r}, "
                         f"expected {NATIVE_FORMAT!r} version {NATIVE_VERSION}")
    return settings


def load_sae(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Read a folder written by ``save_sae``."""
    path = Path(path)
    settings = _native_settings(path)
    tensors = _read_safetensors(path / NATIVE_WEIGHTS)
    weights_path = path / NATIVE_WEIGHTS
    params = SAEParams(
        W_enc=_take(tensors, "W_enc", weights_path), b_enc=_take(tensors, "b_enc", weights_path),
        W_dec=_take(tensors, "W_dec", weights_path), b_dec=_take(tensors, "b_dec", weights_path),
        threshold=_take_optional(tensors, "threshold"), mag_scale=_take_optional(tensors, "mag_scale"),
        b_mag=_take_optional(tensors, "b_mag"), architecture=settings["architecture"], k=settings["k"],
        norm_factor=float(settings["norm_factor"]), out_norm_factor=float(settings["out_norm_factor"]),
        apply_b_dec_to_input=bool(settings["apply_b_dec_to_input"]),
    )
    meta = _merge_meta(settings["meta"], dict(model_name=model_name, layer=layer, hook=hook), path)
    return _finish(params, path, "native", meta, list(tensors))


# ---------------------------------------------------------------- dispatch


def detect_format(path: str | Path) -> str:
    """Name the format at ``path`` from what is there: native, saelens, gemma_scope or saex."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder, expected an SAE file or folder")
    if path.is_dir():
        if (path / NATIVE_CARD).exists():
            return "native"
        if (path / SAELENS_CFG).exists():
            return "saelens"
        if (path / GEMMA_SCOPE_FILE).exists():
            return "gemma_scope"
        raise InputError(f"{path}: unknown SAE format, expected {NATIVE_CARD}, {SAELENS_CFG} or {GEMMA_SCOPE_FILE} inside")
    if path.suffix == ".npz":
        return "gemma_scope"
    if path.suffix == ".safetensors":
        if path.name == SAELENS_WEIGHTS and (path.parent / SAELENS_CFG).exists():
            return "saelens"
        if path.name == NATIVE_WEIGHTS and (path.parent / NATIVE_CARD).exists():
            return "native"
        return "saex"
    raise InputError(f"{path}: unknown SAE format, expected a folder, a .safetensors (saex) or a .npz (Gemma Scope)")


_LOADERS = {"native": load_sae, "saelens": load_saelens, "gemma_scope": load_gemma_scope, "saex": load_saex}


def load_any(
    path: str | Path, *, model_name: str | None = None, layer: int | None = None, hook: str | None = None
) -> tuple[SAEParams, SAEMeta]:
    """Load an SAE in any supported format; keyword metadata fills what the file does not say."""
    path = Path(path)
    fmt = detect_format(path)
    if path.is_file() and fmt in ("saelens", "native"):
        path = path.parent
    return _LOADERS[fmt](path, model_name=model_name, layer=layer, hook=hook)
