"""The training state pytree and its shardings.

`TrainState(step, params, opt_state, rng)` is a plain pytree (a registered dataclass), so it jits, shards and
checkpoints like any dict. Optimizer-state leaves that mirror a parameter (Adam's mu/nu) get that parameter's
sharding; scalars (counts) are replicated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from storm_jax.models.qwen import ModelConfig, param_logical_axes
from storm_jax.parallel.mesh import MeshRules, tree_shardings
from storm_jax.train.optim import make_optimizer

__all__ = ["TrainState", "make_optimizer", "init_train_state", "state_shardings", "abstract_train_state"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """step: int32 scalar; params: model params; opt_state: optax state; rng: raw uint32[2] PRNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """A step-0 state around existing params."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
    )


def _dict_path(path) -> tuple[str, ...]:
    return tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))


def state_shardings(abstract_state: TrainState, model_cfg: ModelConfig, mesh_rules: MeshRules) -> TrainState:
    """NamedShardings for every leaf of a (possibly abstract) TrainState."""
    param_sh = tree_shardings(abstract_state.params, param_logical_axes(model_cfg), mesh_rules)
    by_path = {
        _dict_path(p): (s, leaf.shape)
        for (p, s), leaf in zip(
            jax.tree_util.tree_flatten_with_path(param_sh)[0], jax.tree.leaves(abstract_state.params)
        )
    }
    replicated = NamedSharding(mesh_rules.mesh, PartitionSpec())

    def for_opt_leaf(path, leaf):
        # A leaf whose trailing dict keys name a parameter of the same shape shares its sharding.
        keys = _dict_path(path)
        for n in range(len(keys), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and tuple(hit[1]) == tuple(leaf.shape):
                return hit[0]
        return replicated

    opt_sh = jax.tree_util.tree_map_with_path(for_opt_leaf, abstract_state.opt_state)
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)


def abstract_train_state(
    model_cfg: ModelConfig, optimizer: optax.GradientTransformation, abstract_params: Any
) -> TrainState:
    """ShapeDtypeStructs of the full state (no memory), for AOT compilation and restore targets."""
    return jax.eval_shape(lambda p: init_train_state(p, optimizer, 0), abstract_params)
