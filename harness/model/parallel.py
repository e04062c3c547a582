"""Data parallelism: a batch is split over every available device along a Mesh's batch axis.

Parameters stay replicated; with one device (or a batch that does not divide evenly) inputs are
left as they are, so results are identical with and without it.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXIS = "batch"


def device_count() -> int:
    return len(jax.devices())


def batch_multiple() -> int:
    """Batch sizes should be a multiple of this for the batch to be split over the devices."""
    return device_count()


def shard_batch(*arrays: np.ndarray):
    """Put [batch, ...] arrays on a Mesh over all devices, split along the batch axis (if > 1 device)."""
    n = device_count()
    if n == 1 or any(a is None or a.shape[0] % n for a in arrays if a is not None):
        return arrays
    mesh = Mesh(np.array(jax.devices()), (MESH_AXIS,))
    return tuple(
        None if a is None else jax.device_put(a, NamedSharding(mesh, PartitionSpec(MESH_AXIS, *([None] * (a.ndim - 1)))))
        for a in arrays
    )
