"""Data-parallel helpers for curvature on several devices (JAX SPMD).

curvlab's dataset operators (:func:`curvlab._diagnostics.dataset_operator`) are
plain jitted JAX code, so data parallelism needs no special code path: the
batches are *sharded* along their batch axis over a
:class:`jax.sharding.Mesh` (``NamedSharding(mesh, P(None, "data"))`` for data
stacked as ``(num_batches, batch_size, ...)``), the parameters and every
Lanczos vector are *replicated*, and the batch mean inside the loss becomes an
all-reduce that XLA inserts when it compiles the solver's loop.

Single host, several accelerators (or CPU devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``)::

    mesh = curvlab.sharding.data_mesh()          # all local devices, axis "data"
    report = curvlab.diagnose(loss_fn, params, data, batch_size=512, mesh=mesh)

Several hosts: call ``jax.distributed.initialize()`` in every process before
anything else, build the mesh over ``jax.devices()`` (all processes' devices),
and give every process the *same* global ``data`` description. For data too
large to replicate on each host, build each stacked leaf yourself with
``jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, "data")),
local_part)`` and pass the result as ``data`` (already-sharded arrays are kept
as they are). Every process then runs the same ``diagnose`` call; results are
replicated, so each process can write its own copy of the report.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["data_mesh", "replicate", "shard_batch_axis", "resolve_mesh"]


def data_mesh(devices=None, axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) with one axis named ``axis``."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return Mesh(np.asarray(devices), (axis,))


def resolve_mesh(mesh, axis: str = "data") -> Mesh | None:
    """``None`` -> ``None``; ``"auto"`` -> a data mesh when more than one device exists; a Mesh as is."""
    if mesh is None:
        return None
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be a jax.sharding.Mesh, 'auto' or None, got {mesh!r}")
        return data_mesh(axis=axis) if jax.device_count() > 1 else None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, 'auto' or None, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has axes {mesh.axis_names}; expected an axis named {axis!r} (data_axis)")
    return mesh


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on all devices of ``mesh`` (replicated)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding), tree)


def shard_batch_axis(tree: Any, mesh: Mesh, axis: str = "data", batch_axis: int = 1) -> Any:
    """Shard every leaf of ``tree`` along ``batch_axis`` over mesh axis ``axis``.

    Leaves whose batch dimension is not divisible by the number of devices on
    that axis (a small remainder batch, say) are replicated instead: the result
    is the same, only that batch is not split.
    """
    ndev = mesh.shape[axis]

    def put(a):
        if a.ndim > batch_axis and a.shape[batch_axis] % ndev == 0:
            spec = P(*([None] * batch_axis + [axis]))
        else:
            spec = P()
        return jax.device_put(a, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, tree)
