"""Device mesh, logical-axis rules and sharding helpers (DESIGN.md §7).

Parameters and activations name their dimensions with *logical* axes (`embed`, `heads`, `batch`, ...).
One rules table maps logical axes to the physical mesh axes (`data`, `fsdp`, `tensor`), MaxText style,
so the same model code runs on one CPU, eight fake CPU devices and a TPU pod; only the table changes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

#: Default logical -> mesh rules. Each logical axis maps to a mesh axis, a tuple of mesh axes, or None.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshRules:
    """A mesh plus the logical-axis rules that place arrays on it. Hashable, so it can be a static arg."""

    mesh: Mesh
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES

    def mesh_axes_for(self, logical: str | None) -> tuple[str, ...]:
        if logical is None:
            return ()
        for name, target in self.rules:
            if name == logical:
                if target is None:
                    return ()
                return (target,) if isinstance(target, str) else tuple(target)
        raise KeyError(f"logical axis {logical!r} has no entry in the sharding rules table")

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """PartitionSpec for an array with these logical axes.

        With `shape`, a mesh axis that does not divide its dimension (e.g. 2 KV heads over tensor=4) is dropped
        and the dimension replicated, instead of failing deep inside XLA. A mesh axis is used at most once.
        """
        used: set[str] = set()
        out: list[Any] = []
        for i, logical in enumerate(logical_axes):
            axes = [a for a in self.mesh_axes_for(logical) if a not in used and self.mesh.shape.get(a, 1) > 1]
            if shape is not None:
                kept = []
                size = 1
                for a in axes:
                    if shape[i] % (size * self.mesh.shape[a]) == 0:
                        kept.append(a)
                        size *= self.mesh.shape[a]
                axes = kept
            used.update(axes)
            out.append(None if not axes else (axes[0] if len(axes) == 1 else tuple(axes)))
        return PartitionSpec(*out)

    def sharding(
        self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
    ) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes, shape))


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh. One size may be -1: it takes all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: at most one may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if known <= 0 or len(devices) % known:
        raise ValueError(
            f"mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide the {len(devices)} available devices"
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh sizes {dict(zip(MESH_AXES, sizes))} use {int(np.prod(sizes))} devices, "
            f"but {len(devices)} are available"
        )
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # noqa: BLE001 - fake CPU devices or odd topologies: plain reshape is fine there
        arr = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(arr, MESH_AXES)


def shard_pytree(tree: Any, logical: Any, mesh_rules: MeshRules) -> Any:
    """Place every leaf of `tree` according to the matching leaf of `logical` (tuples of logical names)."""
    shardings = tree_shardings(tree, logical, mesh_rules)
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def tree_shardings(tree: Any, logical: Any, mesh_rules: MeshRules) -> Any:
    """NamedShardings for `tree` (arrays or ShapeDtypeStructs) from a parallel tree of logical axes."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    flat_axes, treedef = jax.tree.flatten(logical, is_leaf=is_axes)
    flat_vals = treedef.flatten_up_to(tree)
    out = [
        mesh_rules.sharding(ax, np.shape(v) if not hasattr(v, "shape") else v.shape)
        for v, ax in zip(flat_vals, flat_axes)
    ]
    return jax.tree.unflatten(treedef, out)


def constrain(x: jax.Array, logical_axes: Sequence[str | None], mesh_rules: MeshRules | None) -> jax.Array:
    """Sharding constraint on an activation; a no-op without a mesh (single device, tests)."""
    if mesh_rules is None:
        return x
    return jax.lax.with_sharding_constraint(x, mesh_rules.sharding(logical_axes, x.shape))


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize()` on a multi-host pod; a no-op on one host.

    TPU VMs expose their topology through the environment (the TPU runtime fills in coordinator and
    process ids), so auto-detection is enough there; elsewhere set JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    env = os.environ if env is None else env
    multi_host_tpu = env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    explicit = "JAX_COORDINATOR_ADDRESS" in env and int(env.get("JAX_NUM_PROCESSES", "1")) > 1
    if not (multi_host_tpu or explicit):
        return False
    if explicit:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    return True
