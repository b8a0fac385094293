"""Mesh construction, logical-axis sharding rules and multi-host initialization."""

from storm_jax.parallel.mesh import (
    DEFAULT_RULES,
    DEFAULT_SAMPLER_RULES,
    LOGICAL_AXES,
    MESH_AXES,
    RULE_PRESETS,
    MeshRules,
    Rules,
    constrain,
    make_mesh,
    maybe_initialize_distributed,
    mesh_rules_from_config,
    rules_from_config,
    shard_pytree,
    tree_shardings,
)

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_SAMPLER_RULES",
    "LOGICAL_AXES",
    "MESH_AXES",
    "RULE_PRESETS",
    "MeshRules",
    "Rules",
    "constrain",
    "make_mesh",
    "maybe_initialize_distributed",
    "mesh_rules_from_config",
    "rules_from_config",
    "shard_pytree",
    "tree_shardings",
]
