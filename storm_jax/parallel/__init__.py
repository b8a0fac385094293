"""Mesh construction, logical-axis sharding rules and multi-host initialization."""

from storm_jax.parallel.mesh import (
    DEFAULT_RULES,
    MESH_AXES,
    MeshRules,
    constrain,
    make_mesh,
    maybe_initialize_distributed,
    shard_pytree,
    tree_shardings,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "MeshRules",
    "constrain",
    "make_mesh",
    "maybe_initialize_distributed",
    "shard_pytree",
    "tree_shardings",
]
