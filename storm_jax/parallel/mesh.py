"""Device mesh, logical-axis rules and sharding helpers.

Parameters and activations name their dimensions with *logical* axes (`embed`, `heads`, `batch`, ...).
One rules table maps logical axes to the physical mesh axes (`data`, `fsdp`, `tensor`), MaxText style,
so the same model code runs on one CPU, eight fake CPU devices and a TPU pod; only the table changes.
Tables are data: named presets (`RULE_PRESETS`) or mappings from config, validated by `rules_from_config`.
Training and sampling each have their own default table (`DEFAULT_RULES`, `DEFAULT_SAMPLER_RULES`) so the
sampler's layout can diverge from the trainer's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

#: A rules table: (logical axis, target) pairs, where a target is a mesh axis, a tuple of mesh axes, or None
#: (replicated). A tuple so that MeshRules stays hashable (a static jit argument).
Rules = tuple[tuple[str, Any], ...]

#: Logical axes the model and cache name (parameters, activations `act_*`, KV cache). Every rules table maps
#: all of them, so a missing entry fails when the rules are built rather than inside a jitted function.
LOGICAL_AXES: tuple[str, ...] = (
    "batch",
    "length",
    "cache_length",
    "embed",
    "vocab",
    "heads",
    "kv_heads",
    "head_dim",
    "mlp",
    "layers",
    "norm",
    "act_embed",
    "act_heads",
    "act_kv_heads",
    "act_mlp",
    "act_vocab",
)


def _preset(**targets: Any) -> Rules:
    return tuple((name, targets[name]) for name in LOGICAL_AXES)


# Batch is split over data and fsdp in every preset: fsdp is a data-parallel axis whose replicas also hold
# 1/fsdp of the weights, so where a preset does not shard weights over it, it is plain data parallelism.
_TP = dict(
    vocab="tensor", heads="tensor", kv_heads="tensor", mlp="tensor",
    act_heads="tensor", act_kv_heads="tensor", act_mlp="tensor", act_vocab="tensor",
)  # fmt: skip
_NO_TP = {k: None for k in _TP}
_UNSHARDED = dict(length=None, cache_length=None, head_dim=None, layers=None, norm=None, act_embed=None)

#: Named rules tables.
#: - fsdp_tp: weights' embed dimension over fsdp (ZeRO-3 style), heads/mlp/vocab over tensor (Megatron style).
#: - fsdp_only: weights sharded over fsdp only; a tensor axis > 1 then only holds replicas.
#: - tp_only: weights sharded over tensor only, replicated over fsdp (no per-step weight all-gather, the usual
#:   choice for decoding).
#: - data_parallel: weights replicated, batch split over data and fsdp.
#: - replicated: nothing is sharded (every device computes everything; a reference layout for tests).
RULE_PRESETS: dict[str, Rules] = {
    "fsdp_tp": _preset(batch=("data", "fsdp"), embed="fsdp", **_TP, **_UNSHARDED),
    "fsdp_only": _preset(batch=("data", "fsdp"), embed="fsdp", **_NO_TP, **_UNSHARDED),
    "tp_only": _preset(batch=("data", "fsdp"), embed=None, **_TP, **_UNSHARDED),
    "data_parallel": _preset(batch=("data", "fsdp"), embed=None, **_NO_TP, **_UNSHARDED),
    "replicated": _preset(batch=None, embed=None, **_NO_TP, **_UNSHARDED),
}

#: Default preset for training (and anything that does not say otherwise).
DEFAULT_PRESET = "fsdp_tp"
#: Default preset for the sampler's prefill/decode. Kept separate from the trainer's so a sampler mesh and
#: layout can differ later; today it is the same table, so sampling sees the params as training placed them.
DEFAULT_SAMPLER_PRESET = "fsdp_tp"
#: The default tables themselves (what MeshRules(mesh) uses).
DEFAULT_RULES: Rules = RULE_PRESETS[DEFAULT_PRESET]
DEFAULT_SAMPLER_RULES: Rules = RULE_PRESETS[DEFAULT_SAMPLER_PRESET]


def _target(key: str, value: Any, mesh_axes: Sequence[str]) -> str | tuple[str, ...] | None:
    """Normalize one rule's target (None, a mesh axis name, or a sequence of them); ValueError naming `key`."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        return None
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(a, str) for a in names):
        raise ValueError(f"{key}={value!r}: a rule target is a mesh axis name, a list of them, or None")
    for a in names:
        if a not in mesh_axes:
            raise ValueError(f"{key}={value!r}: unknown mesh axis {a!r} (mesh axes: {', '.join(mesh_axes)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{key}={value!r}: a mesh axis may appear only once in a rule")
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def rules_from_config(
    value: str | Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    *,
    mesh_axes: Sequence[str] = MESH_AXES,
    key: str = "mesh.rules",
) -> Rules:
    """A validated rules table from config data.

    `value` is a preset name (see RULE_PRESETS; None means the default preset), a mapping of logical axis ->
    target, or a sequence of (logical axis, target) pairs. A mapping may name a `preset` to start from and
    override some axes, e.g. `{"preset": "fsdp_tp", "vocab": None}`; without one it must map every logical
    axis. Unknown presets, logical axes or mesh axes raise ValueError naming the offending key (`key` is the
    config path used in messages).
    """
    if value is None:
        value = DEFAULT_PRESET
    if isinstance(value, str):
        if value not in RULE_PRESETS:
            raise ValueError(f"{key}={value!r}: unknown rules preset (presets: {', '.join(RULE_PRESETS)})")
        return RULE_PRESETS[value]
    if isinstance(value, Mapping) or hasattr(value, "items"):  # ConfigDicts are not Mappings
        items = list(value.items())
    else:
        try:
            items = [tuple(p) for p in value]
        except TypeError:
            raise ValueError(
                f"{key}={value!r}: expected a preset name, a mapping or (axis, target) pairs"
            ) from None
        bad = [p for p in items if len(p) != 2]
        if bad:
            raise ValueError(f"{key}: rule {bad[0]!r} is not a (logical axis, target) pair")
    table: dict[str, Any] = {}
    base = dict(items).get("preset")
    if base is not None:
        table.update(rules_from_config(base, mesh_axes=mesh_axes, key=f"{key}.preset"))
    for name, target in items:
        if name == "preset":
            continue
        if name not in LOGICAL_AXES:
            raise ValueError(
                f"{key}.{name}: unknown logical axis {name!r} (logical axes: {', '.join(LOGICAL_AXES)})"
            )
        table[name] = _target(f"{key}.{name}", target, mesh_axes)
    missing = [a for a in LOGICAL_AXES if a not in table]
    if missing:
        raise ValueError(f"{key}: no rule for logical axes {missing} (map them, or start from a preset)")
    return tuple((a, table[a]) for a in LOGICAL_AXES)


@dataclasses.dataclass(frozen=True)
class MeshRules:
    """A mesh plus the logical-axis rules that place arrays on it. Hashable, so it can be a static arg."""

    mesh: Mesh
    rules: Rules = DEFAULT_RULES

    def __post_init__(self):
        # Accept any config form (preset name, mapping, pairs) and store the normalized, hashable table.
        if not (isinstance(self.rules, tuple) and all(isinstance(r, tuple) for r in self.rules)):
            object.__setattr__(self, "rules", rules_from_config(self.rules, mesh_axes=self.mesh.axis_names))

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


def mesh_rules_from_config(mesh: Mesh, mesh_cfg: Any = None, *, sampler: bool = False) -> MeshRules:
    """MeshRules from a config's `mesh` section: `mesh.rules` for training, `mesh.sampler_rules` for sampling.

    A missing key (or no section) means that role's default preset; values are validated by
    `rules_from_config` against the mesh's own axis names.
    """
    key = "sampler_rules" if sampler else "rules"
    default = DEFAULT_SAMPLER_PRESET if sampler else DEFAULT_PRESET
    value = default if mesh_cfg is None else mesh_cfg.get(key, default)
    return MeshRules(mesh, rules_from_config(value, mesh_axes=tuple(mesh.axis_names), key=f"mesh.{key}"))


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
    """Call `jax.distributed.initialize()` on a multi-host pod (once); a no-op on one host.

    TPU VMs expose their topology through the environment (the TPU runtime fills in coordinator and
    process ids), so auto-detection is enough there; elsewhere set JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. Idempotent, and must run before the backend starts (see
    storm_jax.parallel.multihost, which implements it).
    """
    from storm_jax.parallel.multihost import ensure_initialized

    return ensure_initialized(env)
