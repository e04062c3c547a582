"""Parallelism: the batch split over a Mesh's data axis, parameters split over its model axis, processes joined.

Without a mesh a batch is split over every device when it divides evenly (else left as it is) and parameters stay
where they are, so one device gives identical results. With `shard_model` each parameter is split along its first
head / neuron / vocabulary axis over the mesh's "model" axis (penzai's named axes say which), the rest replicated,
and the batch follows the model's mesh along "data". Several processes (`initialize_distributed`, JAX's own
`jax.distributed` with gloo collectives on CPU) see one global mesh: inputs are global arrays built from the same
full batch in every process, and `to_host` gathers what one process does not hold.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from penzai import pz

from harness.errors import InputError

MESH_AXIS = "batch"  # the batch axis of the default mesh (no model mesh given)
DATA, MODEL = "data", "model"  # axes of a MeshSpec's mesh
# Named axes a parameter may be split along, first match wins. head_groups precedes query_heads so that a GQA
# model's queries split like its keys and values (which have head_groups only): no resharding inside attention.
MODEL_AXES = ("heads", "head_groups", "query_heads", "neurons", "vocabulary")


def device_count() -> int:
    return len(jax.devices())


def batch_multiple() -> int:
    """Batch sizes should be a multiple of this for the batch to be split over the devices."""
    return device_count()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshSpec:
    """A 2-d device mesh: `data` ways over the batch times `model` ways over parameters.

    Its text form "data=N,model=M" is what `--mesh` takes (`parse_mesh`).
    """

    data: int
    model: int = 1

    def __post_init__(self):
        for name in (DATA, MODEL):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"mesh {name}={value!r}: expected a positive integer")

    def __str__(self) -> str:
        return f"{DATA}={self.data},{MODEL}={self.model}"


_PART = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*([+-]?\d+)\s*")


def parse_mesh(text: str, *, n_devices: int | None = None) -> MeshSpec:
    """'data=N,model=M' (either part may be left out) as a MeshSpec whose N x M is the device count.

    Omitted parts default to model = 1 and data = devices / model; anything else is a one-line InputError.
    """
    n = device_count() if n_devices is None else n_devices
    expected = f"expected data=N,model=M with N x M = {n} devices"
    given: dict[str, int] = {}
    for part in str(text).split(","):
        match = _PART.fullmatch(part)
        if match is None:
            raise InputError(f"mesh {text!r}: {expected}; cannot read {part.strip()!r}")
        name, value = match.group(1), int(match.group(2))
        if name not in (DATA, MODEL):
            raise InputError(f"mesh {text!r}: unknown axis {name!r}; expected data and/or model")
        if name in given:
            raise InputError(f"mesh {text!r}: axis {name!r} given twice")
        if value < 1:
            raise InputError(f"mesh {text!r}: {name}={value}, expected a positive integer")
        given[name] = value
    model = given.get(MODEL, 1)
    if DATA not in given and n % model:
        raise InputError(f"mesh {text!r}: model={model} does not divide the {n} devices")
    data = given.get(DATA, n // model)
    if data * model != n:
        raise InputError(f"mesh {text!r}: data x model = {data} x {model} = {data * model}, expected the {n} devices")
    return MeshSpec(data=data, model=model)


def make_mesh(spec: MeshSpec) -> Mesh:
    """A ("data", "model") Mesh over every global device (all processes'), model the minor (process-local) axis."""
    devices = jax.devices()
    if spec.data * spec.model != len(devices):
        raise InputError(f"mesh {spec}: expected data x model = the {len(devices)} devices")
    return Mesh(np.array(devices).reshape(spec.data, spec.model), (DATA, MODEL))


def _put(x, sharding: NamedSharding) -> jax.Array:
    """`x` (the same full value in every process) placed with `sharding`; a global array when processes share it."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def model_axis(named_shape: dict, ways: int) -> str | None:
    """The named axis a parameter is split along over `ways` devices: the first of MODEL_AXES that divides, or None."""
    if ways == 1:
        return None
    return next((a for a in MODEL_AXES if a in named_shape and named_shape[a] % ways == 0), None)


def param_spec(value: pz.nx.NamedArrayBase, ways: int) -> PartitionSpec:
    """The PartitionSpec of a named parameter's data array: MODEL on its `model_axis`, None elsewhere."""
    view = value.as_namedarrayview()
    split = model_axis(value.named_shape, ways)
    spec = [None] * view.data_array.ndim
    if split is not None:
        spec[view.data_axis_for_name[split]] = MODEL
    return PartitionSpec(*spec)


def shard_model(model, mesh: Mesh):
    """`model` with every Parameter placed on `mesh`: split over "model" along its `model_axis`, else replicated.

    Pure: new Parameters are bound, the given model is untouched. Works for any form (scan slices inside the jit).
    """
    ways = mesh.shape[MODEL]
    unbound, params = pz.unbind_params(model)

    def place(value):
        if not isinstance(value, pz.nx.NamedArrayBase):
            return _put(value, NamedSharding(mesh, PartitionSpec()))
        sharding = NamedSharding(mesh, param_spec(value, ways))
        return dataclasses.replace(value, data_array=_put(value.data_array, sharding))

    return pz.bind_variables(unbound, [pz.Parameter(value=place(p.value), label=p.label) for p in params])


def mesh_of(tree) -> Mesh | None:
    """The ("data", "model") Mesh a (frozen) model's arrays were placed on by `shard_model`, or None."""
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and DATA in sharding.mesh.axis_names:
            return sharding.mesh
    return None


def shard_batch(*arrays: np.ndarray, mesh: Mesh | None = None):
    """Put [batch, ...] arrays (None passes through) on `mesh` split along its data axis.

    Without a mesh: over all devices along "batch", only when there are several and the batch divides. A batch that
    does not divide is replicated on the mesh when there is one (or several processes), else left as it is.
    """
    if mesh is None and jax.process_count() == 1 and device_count() == 1:
        return arrays
    if mesh is None:
        mesh = Mesh(np.array(jax.devices()), (MESH_AXIS,))
    axis = DATA if DATA in mesh.axis_names else MESH_AXIS
    split = not any(a.shape[0] % mesh.shape[axis] for a in arrays if a is not None)
    if not split and axis == MESH_AXIS and jax.process_count() == 1:
        return arrays
    return tuple(
        None if a is None else _put(a, NamedSharding(mesh, PartitionSpec(axis if split else None, *[None] * (a.ndim - 1))))
        for a in arrays
    )


def to_host(x) -> np.ndarray:
    """`x` as a numpy array in this process, gathered from the others when it is split across processes.

    One process (or a replicated array) reads it directly; otherwise `process_allgather` (a collective: every
    process must call it for the same array).
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join `num_processes` processes (one call in each; `coordinator` = "host:port" of process 0) into one JAX run.

    JAX's own `jax.distributed`; CPU collectives go through gloo. Call before anything touches a device.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def layout(mesh: Mesh | None) -> str:
    """One line for provenance: the mesh's axes and sizes and the process count."""
    if mesh is None:
        return f"batch over {device_count()} device(s), {jax.process_count()} process(es)"
    sizes = ",".join(f"{name}={size}" for name, size in mesh.shape.items())
    return f"{sizes} over {math.prod(mesh.shape.values())} device(s), {jax.process_count()} process(es)"
