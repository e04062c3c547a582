"""Which kernel or phase holds a forward back: its matrix products timed alone against the whole forward.

`dots_of` reads the dots of a compiled (optimized) HLO module — after XLA's own rewrites, so the shapes, operand and
result dtypes and the kernel (e.g. `__ynn_fusion`: YNNPACK) are the ones that run. `profile_dots` times each distinct
dot alone as a jitted `jax.lax.dot_general` with the same operand dtypes and dimension numbers and the same result
dtype (`preferred_element_type`), and multiplies by how often the forward runs it. Forward seconds minus these
dots-alone seconds is the non-dot share: norms, softmax, RoPE, casts, copies/transposes, gathers, dispatch. Count on a
loop-free program (the unrolled form): a while loop's body appears once in the text but runs n_layers times.
Each alone-time includes one jitted call's dispatch (tens of microseconds; the forward's dots take milliseconds).

`cpu_matrix_units` reads which bf16 matrix units the CPU has (/proc/cpuinfo flags): AMX-BF16 tiles are the 3-10x
bf16 path; AVX512-BF16 alone (`vdpbf16ps`) gives about 2x float32 at these shapes.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from harness.errors import InputError
from harness.runs.efficiency import best_seconds

MATRIX_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")

_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64", "s32": "int32", "s8": "int8"}
_TYPE = r"(\w+)\[([\d,]*)\](?:\{[^}]*\})?"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*" + _TYPE + r"\s+([\w\-]+)\((.*?)\)(.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OPERAND = re.compile(r"(?:" + _TYPE + r"\s+)?%?([\w.\-]+)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dot:
    """One dot of a compiled module: operand shapes and dtypes, dimension numbers, result dtype, the kernel running it."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    lhs_dtype: str
    rhs_dtype: str
    result_dtype: str
    lhs_contracting: tuple[int, ...] = ()
    rhs_contracting: tuple[int, ...] = ()
    lhs_batch: tuple[int, ...] = ()
    rhs_batch: tuple[int, ...] = ()
    kernel: str = "dot"  # the fusion kind that calls it (e.g. __ynn_fusion), or "dot" when XLA runs it itself

    @property
    def flops(self) -> float:
        """2 x (batch x free lhs x free rhs x contracting) multiply-adds."""
        lhs_free = [d for i, d in enumerate(self.lhs) if i not in self.lhs_contracting + self.lhs_batch]
        rhs_free = [d for i, d in enumerate(self.rhs) if i not in self.rhs_contracting + self.rhs_batch]
        batch = [self.lhs[i] for i in self.lhs_batch]
        contracting = [self.lhs[i] for i in self.lhs_contracting]
        return 2.0 * math.prod(batch) * math.prod(lhs_free) * math.prod(rhs_free) * math.prod(contracting)

    @property
    def key(self) -> tuple:
        """What the alone-timing depends on (not the kernel name)."""
        return (self.lhs, self.rhs, self.lhs_dtype, self.rhs_dtype, self.result_dtype, self.lhs_contracting,
                self.rhs_contracting, self.lhs_batch, self.rhs_batch)

    def shape(self) -> str:
        """e.g. 'bf16[1024,576] x bf16[1536,576] -> f32 (contract 1x1)'."""
        short = {v: k for k, v in _DTYPES.items()}
        s = (f"{short.get(self.lhs_dtype, self.lhs_dtype)}[{','.join(map(str, self.lhs))}] x "
             f"{short.get(self.rhs_dtype, self.rhs_dtype)}[{','.join(map(str, self.rhs))}] -> "
             f"{short.get(self.result_dtype, self.result_dtype)}, contract {_dims(self.lhs_contracting)}x{_dims(self.rhs_contracting)}")
        return s + (f", batch {_dims(self.lhs_batch)}x{_dims(self.rhs_batch)}" if self.lhs_batch else "")


def _dims(d: tuple[int, ...]) -> str:
    return ",".join(map(str, d)) or "-"


def _attr(rest: str, name: str) -> tuple[int, ...]:
    m = re.search(rf"\b{name}=\{{([\d,\s]*)\}}", rest)
    return tuple(int(x) for x in m.group(1).split(",") if x.strip()) if m else ()


def dots_of(hlo_text: str) -> list[Dot]:
    """The dots of an HLO module's text (`compiled.as_text()`), one per dot instruction, in text order.

    Operand types are read where the dot names them, else from the instruction that defines them; the kernel is
    the `fusion_config` kind (or `kind=`) of the fusion whose computation holds the dot. A module with a while loop is
    refused (its body's dots run more often than the text shows)."""
    if re.search(r"\bwhile\(", hlo_text):
        raise InputError("HLO module has a while loop: its body's dots run n times; profile the unrolled form")
    types: dict[str, tuple[str, tuple[int, ...]]] = {}
    callers: dict[str, str] = {}
    found: list[tuple[str, str, list[str], str, str]] = []  # (computation, result dtype, operands, rest, result name)
    computation = ""
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            c = _COMPUTATION.match(line)
            if c is not None and "=" not in line.split("{")[0]:
                computation = c.group(1)
            continue
        name, dtype, dims, op, operands, rest = m.groups()
        types[name] = (dtype, tuple(int(d) for d in dims.split(",") if d))
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            kind = re.search(r'"kind":"([^"]+)"', rest) or re.search(r"kind=(\w+)", rest)
            if called:
                callers[called.group(1)] = kind.group(1) if kind else "fusion"
        elif op == "dot":
            found.append((computation, dtype, [o.strip() for o in operands.split(",") if o.strip()], rest, name))
    dots = []
    for computation, result, operands, rest, name in found:
        resolved = []
        for o in _split_operands(operands):
            om = _OPERAND.fullmatch(o)
            if om is None:
                raise InputError(f"dot {name}: operand {o!r} not understood")
            dtype, dims, ref = om.groups()
            if dtype is None:
                if ref not in types:
                    raise InputError(f"dot {name}: operand {ref!r} is defined nowhere in the module")
                dtype, shape = types[ref]
            else:
                shape = tuple(int(d) for d in dims.split(",") if d)
            resolved.append((_DTYPES.get(dtype, dtype), shape))
        if len(resolved) != 2:
            raise InputError(f"dot {name}: expected 2 operands, got {len(resolved)}")
        (lt, ls), (rt, rs) = resolved
        dots.append(Dot(lhs=ls, rhs=rs, lhs_dtype=lt, rhs_dtype=rt, result_dtype=_DTYPES.get(result, result),
                        lhs_contracting=_attr(rest, "lhs_contracting_dims"),
                        rhs_contracting=_attr(rest, "rhs_contracting_dims"),
                        lhs_batch=_attr(rest, "lhs_batch_dims"), rhs_batch=_attr(rest, "rhs_batch_dims"),
                        kernel=callers.get(computation, "dot")))
    return dots


def _split_operands(operands: list[str]) -> list[str]:
    """Re-join operands split inside a type's brackets, e.g. 'bf16[2', '3]{1', '0} %a' -> 'bf16[2,3]{1,0} %a'."""
    out, depth = [], 0
    for part in operands:
        if depth:
            out[-1] += "," + part
        else:
            out.append(part)
        depth += part.count("[") + part.count("{") - part.count("]") - part.count("}")
    return out


def dot_seconds(dot: Dot, *, repeats: int = 5) -> float:
    """Best seconds of `dot` alone: a jitted dot_general of its shapes, dtypes and dimension numbers."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=dot.lhs), dot.lhs_dtype)
    b = jnp.asarray(rng.normal(size=dot.rhs), dot.rhs_dtype)
    numbers = ((dot.lhs_contracting, dot.rhs_contracting), (dot.lhs_batch, dot.rhs_batch))
    f = jax.jit(lambda x, w: jax.lax.dot_general(x, w, numbers, preferred_element_type=jnp.dtype(dot.result_dtype)))
    return best_seconds(lambda: f(a, b), repeats=repeats)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DotTime:
    dot: Dot
    count: int          # how many times the forward runs it
    seconds: float      # one call alone

    @property
    def total(self) -> float:
        return self.count * self.seconds

    @property
    def flops_per_s(self) -> float:
        return self.dot.flops / self.seconds


def profile_dots(dots: list[Dot], *, repeats: int = 5) -> list[DotTime]:
    """Each distinct dot timed alone, with its count; the largest total first."""
    groups: dict[tuple, list[Dot]] = {}
    for d in dots:
        groups.setdefault(d.key, []).append(d)
    times = [DotTime(dot=g[0], count=len(g), seconds=dot_seconds(g[0], repeats=repeats)) for g in groups.values()]
    return sorted(times, key=lambda t: -t.total)


def non_dot_share(forward_seconds: float, times: list[DotTime]) -> float:
    """(forward - its dots alone) / forward: the share of the forward that is not matrix products."""
    if forward_seconds <= 0:
        raise InputError(f"forward_seconds={forward_seconds}: expected > 0")
    return (forward_seconds - sum(t.total for t in times)) / forward_seconds


def cpu_matrix_units(cpuinfo: str | None = None) -> dict[str, bool | str]:
    """{'model': CPU model name, 'amx_bf16': bool, 'amx_tile': bool, 'avx512_bf16': bool} from /proc/cpuinfo's
    first processor (or the text given); {} where there is no /proc/cpuinfo."""
    if cpuinfo is None:
        path = pathlib.Path("/proc/cpuinfo")
        if not path.exists():
            return {}
        cpuinfo = path.read_text(errors="replace")
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", "unknown")} | {f: f in flags for f in MATRIX_FLAGS}


def describe_matrix_units(units: dict[str, bool | str]) -> str:
    """One line: 'AMD EPYC ...: amx_bf16 absent, amx_tile absent, avx512_bf16 present'."""
    if not units:
        return "CPU bf16 matrix units: unknown (no /proc/cpuinfo)"
    flags = ", ".join(f"{f} {'present' if units[f] else 'absent'}" for f in MATRIX_FLAGS)
    return f"CPU {units['model']}: {flags}"
