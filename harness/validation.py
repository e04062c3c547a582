"""The one validation layer for users' files: text, JSON, safetensors and typed metadata, each failure one InputError.

Readers of every format (GGUF keys, HF config.json, SAELens cfg.json, sidecars, MC data) go through these
helpers instead of scattered int()/bool() calls, so a wrong type, a NaN or an undecodable byte always gives
one line naming the file, the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import pathlib
import tomllib
from typing import Annotated, Any

import ml_dtypes  # noqa: F401 — registers 'bfloat16' with numpy, so safetensors can return bf16 tensors
import numpy as np
import pydantic
import safetensors
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import InputError

BOM = b"\xef\xbb\xbf"

# Typed fields shared by the per-format schemas (pydantic strict mode: no "1" for 1, no 0/1 for booleans).
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
StrictBool = Annotated[bool, Field(strict=True)]
StrictStr = Annotated[str, Field(strict=True)]


class Schema(BaseModel):
    """Base of the per-format metadata schemas: strict types, unknown keys kept aside (listed, never used)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    def ignored_fields(self) -> tuple[str, ...]:
        """Keys present in the file that the schema does not read (shown in the report, never used)."""
        return tuple(sorted(self.model_extra or {}))


def one_line(text: Any, limit: int = 200) -> str:
    """`text` squeezed onto one line and cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value) on one line, cut to `limit` characters (values can be whole token lists)."""
    return one_line(repr(value), limit)


def validate(schema: type[Schema], data: Any, source: str, *, prefix: str = "") -> Schema:
    """`data` checked against `schema`; the first failing field becomes one InputError line naming `source`.

    `prefix` is put before field names in the message (e.g. "phi3." for GGUF keys read without it).
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object / key-value mapping, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        field = prefix + (".".join(str(p) for p in first["loc"]) or "(top level)")
        if first["type"] == "missing":
            raise InputError(f"{source}: field {field} is missing") from None
        raise InputError(
            f"{source}: field {field} = {short_repr(first.get('input'))} ({type(first.get('input')).__name__}): "
            f"{one_line(first['msg'], 120)}"
        ) from None


def file_error(path: str | os.PathLike, error: BaseException, *, expected: str = "a readable file") -> InputError:
    """One InputError line for an OSError (missing, a folder, a symlink loop, no permission) on `path`."""
    if isinstance(error, OSError):
        reasons = {errno.ENOENT: "does not exist", errno.EISDIR: "is a folder", errno.ELOOP: "is a symlink loop or broken link",
                   errno.EACCES: "permission denied", errno.ENOTDIR: "a parent is not a folder",
                   errno.ENAMETOOLONG: "name too long"}
        reason = reasons.get(error.errno, one_line(error.strerror or error, 100))
    else:
        reason = f"{type(error).__name__}: {one_line(error, 100)}"
    return InputError(f"{path}: {reason} (expected {expected})")


def read_bytes(path: str | os.PathLike, *, expected: str = "a readable file") -> bytes:
    """The bytes of a regular file; a folder, a missing file or a link loop is one InputError line."""
    path = pathlib.Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        return path.read_bytes()
    except OSError as error:
        raise file_error(path, error, expected=expected) from error


# safetensors dtype names -> numpy dtypes (ml_dtypes' bfloat16 for BF16).
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MappedTensor:
    """Where one tensor lies in a file; `read()` maps it afresh (read-only), so nothing stays mapped once it is dropped."""

    path: pathlib.Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    def read(self) -> np.ndarray:
        if math.prod(self.shape) == 0:
            return np.zeros(self.shape, self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


def map_safetensors(path: str | os.PathLike, *, expected: str) -> dict[str, MappedTensor]:
    """Where every tensor of one safetensors file lies, dtypes as stored (bf16 as ml_dtypes.bfloat16).

    Nothing is read until used, and a slice of a mapped tensor reads only its rows. The safetensors library checks the file first; its own
    numpy reader copies whole tensors and cannot slice bf16, hence the memory map over the offsets its header gives.
    A folder, a missing, truncated or corrupt file is one InputError line naming the file; what dtypes are acceptable
    is the caller's policy.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise file_error(path, IsADirectoryError(errno.EISDIR, "is a folder"), expected=expected)
    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:  # validates header, offsets and sizes
            names = list(handle.keys())
        with open(path, "rb") as raw:
            size = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(size))
        tensors = {}
        for name in names:
            entry = header[name]
            dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
            shape = tuple(entry["shape"])
            start, end = entry["data_offsets"]
            tensors[name] = MappedTensor(path=path, dtype=dtype, shape=shape, offset=8 + size + start)
    except (safetensors.SafetensorError, OSError, ValueError, TypeError, KeyError) as error:
        reason = one_line(error, 150) or type(error).__name__
        raise InputError(f"{path}: not a readable safetensors file ({reason}); expected {expected}") from error
    return tensors


def decode_utf8(data: bytes, source: str) -> str:
    """UTF-8 text with one leading BOM removed; another encoding fails naming the line and byte of the first bad byte."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            f"{source}: not UTF-8 text: byte 0x{data[error.start]:02x} at line {line} (byte offset {error.start}); "
            "expected UTF-8 (re-save the file as UTF-8)"
        ) from None


def read_text(path: str | os.PathLike, *, expected: str = "a UTF-8 text file") -> str:
    """A text file as str: UTF-8, BOM stripped; every failure is one InputError line naming the file."""
    return decode_utf8(read_bytes(path, expected=expected), str(path))


def read_toml(path: str | os.PathLike, *, expected: str) -> dict:
    """A UTF-8 TOML file as a dict; a missing file, bad bytes or bad TOML is one InputError line naming the file."""
    try:
        return tomllib.loads(read_text(path, expected=expected))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({one_line(e, 150)}); expected {expected}") from None


def _no_duplicate_keys(source: str):
    def hook(pairs):
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise InputError(f"{source}: key {key!r} appears twice in one JSON object; expected each key once")
            seen[key] = value
        return seen
    return hook


def _no_constants(source: str):
    def hook(name):
        raise InputError(f"{source}: JSON holds {name}, which is not valid JSON; expected a finite number")
    return hook


def parse_json(text: str, source: str) -> Any:
    """json.loads that refuses duplicate keys and NaN/Infinity; a syntax error names the line and column."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys(source), parse_constant=_no_constants(source))
    except json.JSONDecodeError as error:
        raise InputError(f"{source}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply") from None


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file whose top level is an object (UTF-8, BOM stripped, no duplicate keys, no NaN)."""
    value = parse_json(read_text(path, expected="a UTF-8 JSON file"), str(path))
    if not isinstance(value, dict):
        raise InputError(f"{path}: top level is {type(value).__name__}; expected a JSON object")
    return value


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def installed_file(distribution: str, file: str, *, what: str, hint: str) -> pathlib.Path:
    """Path of `file` (as the wheel's RECORD names it) in an installed distribution, found from its metadata so the
    package itself is never imported; a missing distribution or file is one InputError line starting with `what`."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"{what}: distribution {distribution} is not installed; {hint}") from None
    for entry in dist.files or ():
        if entry.as_posix() == file:
            path = pathlib.Path(dist.locate_file(entry))
            if path.is_file():
                return path
            break
    raise InputError(f"{what}: {file} is missing from distribution {distribution}; reinstall it ({hint})")
