"""A generic jitted train step: explicit shardings, gradient accumulation, clipping (in the optimizer), donation.

SFT, GRPO, DPO and the GenPRM trainer all pass their own `loss_fn(params, batch, model_cfg) -> (loss, aux)`
(see storm_jax.train.losses for the `aux["weight"]` contract). The batch is a dict of [B, ...] arrays; with
`grad_accum = A` it is split into A micro-batches of B/A rows, taking every A-th row so that each micro-batch
stays spread over all data-parallel devices instead of living on a few of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel.mesh import MeshRules
from storm_jax.train.losses import LossFn
from storm_jax.train.state import TrainState


def batch_sharding(mesh_rules: MeshRules) -> NamedSharding:
    """Leading (batch) dimension over the data-parallel mesh axes, the rest replicated; a pytree prefix."""
    return NamedSharding(mesh_rules.mesh, mesh_rules.spec(("batch",)))


def split_micro_batches(batch: dict, grad_accum: int) -> dict:
    """[B, ...] -> [A, B/A, ...]; micro-batch a holds rows a, a+A, a+2A, ..."""

    def split(x):
        B = x.shape[0]
        if B % grad_accum:
            raise ValueError(f"batch size {B} is not divisible by grad_accum={grad_accum}")
        y = x.reshape((B // grad_accum, grad_accum) + x.shape[1:])
        return jnp.swapaxes(y, 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    schedule: Callable[[Any], Any] | None,
    *,
    mesh_rules: MeshRules,
    state_sharding: TrainState,
    grad_accum: int = 1,
    donate: bool = True,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build `step(state, batch) -> (new_state, metrics)`, one jax.jit with explicit in/out shardings.

    metrics (replicated scalars): loss (weight-averaged over micro-batches), grad_norm (before clipping),
    lr (used for this update), weight (sum of micro-batch weights), and every aux entry (weight-averaged;
    keys starting with `sum_` are summed). The state is donated.
    """
    mesh = mesh_rules.mesh
    b_sh = batch_sharding(mesh_rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    micro_sh = NamedSharding(mesh, PartitionSpec(None, *mesh_rules.spec(("batch",))))

    def weighted(params, mb):
        loss, aux = loss_fn(params, mb, model_cfg)
        aux = dict(aux)
        w = jax.lax.stop_gradient(jnp.asarray(aux.pop("weight", 1.0), jnp.float32))
        return loss * w, (loss, w, aux)

    grad_fn = jax.value_and_grad(weighted, has_aux=True)

    def accumulate(params, batch):
        if grad_accum == 1:
            (_, (loss, w, aux)), g = grad_fn(params, batch)
            g = jax.tree.map(lambda x: x.astype(jnp.float32), g)
            return g, loss * w, w, _scale_aux(aux, w)
        mbs = split_micro_batches(batch, grad_accum)
        mbs = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, micro_sh), mbs)
        zero_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zero_g = jax.lax.with_sharding_constraint(zero_g, state_sharding.params)
        (_, (_, _, aux_shape)) = jax.eval_shape(weighted, params, jax.tree.map(lambda x: x[0], mbs))
        zero_aux = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), aux_shape)

        def body(carry, mb):
            gs, ls, ws, auxs = carry
            (_, (loss, w, aux)), g = grad_fn(params, mb)
            gs = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), gs, g)
            gs = jax.lax.with_sharding_constraint(gs, state_sharding.params)
            auxs = jax.tree.map(jnp.add, auxs, _scale_aux(aux, w))
            return (gs, ls + loss * w, ws + w, auxs), None

        init = (zero_g, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zero_aux)
        (g, ls, ws, auxs), _ = jax.lax.scan(body, init, mbs)
        return g, ls, ws, auxs

    def step(state: TrainState, batch: dict):
        gsum, lsum, wsum, auxsum = accumulate(state.params, batch)
        denom = jnp.maximum(wsum, 1e-12)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), gsum, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng, _ = jax.random.split(state.rng)
        metrics = {
            "loss": lsum / denom,
            "grad_norm": optax.tree.norm(grads),
            "weight": wsum,
            "lr": jnp.asarray(schedule(state.step) if schedule is not None else 0.0, jnp.float32),
        }
        for k, v in auxsum.items():
            metrics[k] = v if k.startswith("sum_") else v / denom
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(state_sharding, b_sh),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,) if donate else (),
    )


def _scale_aux(aux: dict, w: jax.Array) -> dict:
    """Aux values weighted by the micro-batch weight (sum_ keys are plain sums)."""
    return {
        k: (jnp.asarray(v, jnp.float32) if k.startswith("sum_") else jnp.asarray(v, jnp.float32) * w)
        for k, v in aux.items()
    }


def make_eval_step(loss_fn: LossFn, model_cfg: ModelConfig, *, mesh_rules: MeshRules, params_sharding: Any):
    """Jitted `eval(params, batch) -> (loss * weight, weight)` for a held-out loss summed over batches."""

    def ev(params, batch):
        loss, aux = loss_fn(params, batch, model_cfg)
        w = jnp.asarray(aux.get("weight", 1.0), jnp.float32)
        return loss * w, w

    replicated = NamedSharding(mesh_rules.mesh, PartitionSpec())
    return jax.jit(
        ev, in_shardings=(params_sharding, batch_sharding(mesh_rules)), out_shardings=(replicated, replicated)
    )
