"""Weighted DPO (StepORLM's W-DPO) as pure functions: the pair loss, a train-step LossFn, reference log-probs.

Formulas (docs/dpo.md). For pair i with summed response log-probs pi_c, pi_r under the policy and ref_c,
ref_r under the frozen reference, and weight w_i >= 0:

    delta_i = beta * ((pi_c - ref_c) - (pi_r - ref_r))          (reference_free: beta * (pi_c - pi_r))
    l_i     = -(1 - ls) * log sigmoid(delta_i) - ls * log sigmoid(-delta_i)
    loss    = sum_i w_i l_i / P            (normalize="pairs", P = number of real pairs)
            = sum_i w_i l_i / sum_i w_i    (normalize="weights")

Batch layout (storm_jax.data.preference): every per-token array is [P, 2, T] with [:, 0] the chosen and
[:, 1] the rejected sequence of pair i, `weight` is [P] and the optional `ref_logps` is [P, 2]. The pair axis
is its own dimension so that nothing that splits the leading (batch) dimension - data-parallel sharding,
gradient-accumulation micro-batches, the per-host concatenation of local batches - can separate a pair.
The model sees the two as rows 2i (chosen) and 2i + 1 (rejected) of one [2P, T] forward pass.

Padding pairs (all-zero masks, e.g. the tail of an evaluation pass) are not pairs: a pair counts only when
both of its sequences have at least one loss-masked token, so padding changes neither P nor any metric.

Gradient accumulation (storm_jax.train.step): the micro-batch weight aux["weight"] is the number of real
pairs ("pairs") or their summed weight ("weights"); each micro-batch loss is S_a / weight_a with S_a its
share of sum_i w_i l_i, so sum_a(weight_a * loss_a) / sum_a(weight_a) is exactly the full-batch loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from storm_jax.config import DPO_NORMALIZATIONS, DPO_REFERENCES
from storm_jax.config import dpo_defaults as dpo_defaults  # re-exported: the section's old home
from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel.mesh import MeshRules
from storm_jax.train.logprobs import token_logprobs
from storm_jax.train.losses import LossFn, make_loss, register_loss

#: dpo.normalize / dpo.reference choices; the `dpo` config section itself is storm_jax.config.dpo_defaults.
NORMALIZATIONS = DPO_NORMALIZATIONS
REFERENCES = DPO_REFERENCES


# ----------------------------------------------------------------------------------------------------------
# The pair loss on summed log-probs
# ----------------------------------------------------------------------------------------------------------


def weighted_dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array | None,
    ref_rejected_logps: jax.Array | None,
    weights: jax.Array,
    *,
    beta: float,
    reference_free: bool = False,
    label_smoothing: float = 0.0,
    normalize: str = "pairs",
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted DPO over P pairs of summed response log-probs ([P] arrays); returns (loss, aux).

    valid ([P], optional, 1 = real pair) removes padding pairs from P and from every aux mean.
    aux: per-pair `chosen_rewards`, `rejected_rewards` (beta * log-ratio), `margins` (delta), `losses` (l_i);
    scalars `accuracy` (share of delta > 0), `weight_mean`, `margin_mean`, `chosen_reward_mean`,
    `rejected_reward_mean` (means over real pairs), `num_pairs`, `weight_sum`, `normalizer`.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: expected one of {NORMALIZATIONS}")
    if not 0.0 <= label_smoothing < 0.5:
        # ls = 0.5 makes the loss symmetric in delta (no preference left); above it prefers the rejected.
        raise ValueError(f"label_smoothing={label_smoothing}: expected 0 <= ls < 0.5")
    pc = jnp.asarray(policy_chosen_logps, jnp.float32)
    pr = jnp.asarray(policy_rejected_logps, jnp.float32)
    if reference_free:
        chosen_logratio, rejected_logratio = pc, pr
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("reference log-probs are required unless reference_free=True")
        chosen_logratio = pc - jnp.asarray(ref_chosen_logps, jnp.float32)
        rejected_logratio = pr - jnp.asarray(ref_rejected_logps, jnp.float32)
    chosen_rewards = beta * chosen_logratio
    rejected_rewards = beta * rejected_logratio
    delta = chosen_rewards - rejected_rewards
    # log_sigmoid is stable for large |delta| (no exp overflow, no log(0)).
    log_p_chosen_wins = jax.nn.log_sigmoid(delta)
    log_p_rejected_wins = jax.nn.log_sigmoid(-delta)
    losses = -(1.0 - label_smoothing) * log_p_chosen_wins - label_smoothing * log_p_rejected_wins

    v = jnp.ones_like(delta) if valid is None else jnp.asarray(valid, jnp.float32)
    w = jnp.asarray(weights, jnp.float32) * v
    num_pairs = jnp.sum(v)
    weight_sum = jnp.sum(w)
    # where (not a product) so that a padding / weight-0 pair contributes an exact 0 value and 0 gradient.
    total = jnp.sum(jnp.where(w > 0, w * losses, 0.0))
    normalizer = num_pairs if normalize == "pairs" else weight_sum
    safe = jnp.where(normalizer > 0, normalizer, 1.0)
    loss = jnp.where(normalizer > 0, total / safe, 0.0)

    n = jnp.maximum(num_pairs, 1.0)

    def mean(x):
        return jnp.sum(jnp.where(v > 0, x, 0.0)) / n

    aux = {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "margins": delta,
        "losses": losses,
        "accuracy": mean((delta > 0).astype(jnp.float32)),
        "weight_mean": weight_sum / n,
        "margin_mean": mean(delta),
        "chosen_reward_mean": mean(chosen_rewards),
        "rejected_reward_mean": mean(rejected_rewards),
        "num_pairs": num_pairs,
        "weight_sum": weight_sum,
        "normalizer": normalizer,
    }
    return loss, aux


# ----------------------------------------------------------------------------------------------------------
# Summed log-probs of [P, 2, T] pair batches
# ----------------------------------------------------------------------------------------------------------


def _flat_pairs(x: jax.Array) -> jax.Array:
    """[P, 2, T] -> [2P, T]: row 2i is pair i's chosen, row 2i + 1 its rejected sequence."""
    return x.reshape((x.shape[0] * 2,) + x.shape[2:])


def response_mask(batch: dict) -> jax.Array:
    """[P, 2, T] float32 weights of the response tokens' targets (loss_mask, zero on padding)."""
    return jnp.asarray(batch["loss_mask"], jnp.float32) * (jnp.asarray(batch["segment_ids"]) != 0)


def valid_pairs(batch: dict) -> jax.Array:
    """[P] float32: 1 where both sequences of the pair have a loss-masked token (0 = padding pair)."""
    m = response_mask(batch)
    return jnp.all(jnp.sum(m, axis=-1) > 0, axis=-1).astype(jnp.float32)


def pair_logps(
    params: Any,
    model_cfg: ModelConfig,
    batch: dict,
    *,
    chunk_size: int = 0,
    mesh_rules: MeshRules | None = None,
) -> jax.Array:
    """[P, 2] summed log p(target) over each sequence's loss-masked positions, one forward pass of 2P rows.

    Uses the chunked vocabulary projection of storm_jax.train.logprobs, so with chunk_size > 0 the [2P, T, V]
    logits never exist. Positions with loss_mask 0 (prompt, tool output, padding) contribute exactly 0.
    """
    tokens = batch["tokens"]
    if tokens.ndim != 3 or tokens.shape[1] != 2:
        raise ValueError(f"pair batches have tokens of shape [P, 2, T], got {tokens.shape}")
    P = tokens.shape[0]
    logp = token_logprobs(
        params,
        model_cfg,
        _flat_pairs(tokens),
        _flat_pairs(batch["targets"]),
        segment_ids=_flat_pairs(batch["segment_ids"]),
        positions=_flat_pairs(batch["positions"]),
        mesh_rules=mesh_rules,
        chunk_size=chunk_size,
    )
    mask = _flat_pairs(response_mask(batch))
    # where, not logp * mask: a masked position's value never enters the sum, whatever it is.
    summed = jnp.sum(jnp.where(mask != 0, logp * mask, 0.0), axis=-1)
    return summed.reshape(P, 2)


# ----------------------------------------------------------------------------------------------------------
# The train-step LossFn
# ----------------------------------------------------------------------------------------------------------


@register_loss("weighted_dpo")
def make_dpo_loss(
    *,
    beta: float,
    label_smoothing: float = 0.0,
    normalize: str = "pairs",
    reference_free: bool = False,
    chunk_size: int = 0,
    mesh_rules: MeshRules | None = None,
) -> LossFn:
    """`loss_fn(params, batch, model_cfg) -> (loss, aux)` for storm_jax.train.step.make_train_step.

    batch: the [P, 2, T] pair layout plus `weight` [P] and, unless reference_free, `ref_logps` [P, 2]
    (precomputed with the rows, or added per batch by `with_reference_logps` for the on-the-fly option).
    aux["weight"] is the micro-batch weight (see the module docstring); the other entries are `sum_*`
    totals over real pairs, which the step sums over micro-batches; `dpo_metrics` turns them into means.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: expected one of {NORMALIZATIONS}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")

    def loss_fn(params, batch, model_cfg: ModelConfig):
        logps = pair_logps(params, model_cfg, batch, chunk_size=chunk_size, mesh_rules=mesh_rules)
        if reference_free:
            ref_c = ref_r = None
        else:
            if "ref_logps" not in batch:
                raise KeyError(
                    "DPO batch has no 'ref_logps': precompute them (precompute_reference_logps) or add them "
                    "per batch (with_reference_logps), or set reference_free=True"
                )
            ref = jax.lax.stop_gradient(jnp.asarray(batch["ref_logps"], jnp.float32))
            ref_c, ref_r = ref[:, 0], ref[:, 1]
        valid = valid_pairs(batch)
        loss, aux = weighted_dpo_loss(
            logps[:, 0],
            logps[:, 1],
            ref_c,
            ref_r,
            jax.lax.stop_gradient(jnp.asarray(batch["weight"], jnp.float32)),
            beta=beta,
            reference_free=reference_free,
            label_smoothing=label_smoothing,
            normalize=normalize,
            valid=valid,
        )

        def total(x):
            return jnp.sum(jnp.where(valid > 0, x, 0.0))

        # Only sums (plus the step's weight): the step adds sum_* over micro-batches, so they are exact for
        # any split, while a mean would be re-weighted by aux["weight"] (sum of w under "weights").
        out = {
            "weight": aux["normalizer"],
            "sum_pairs": aux["num_pairs"],
            "sum_pair_weight": aux["weight_sum"],
            "sum_pairs_correct": total((aux["margins"] > 0).astype(jnp.float32)),
            "sum_margin": total(aux["margins"]),
            "sum_chosen_reward": total(aux["chosen_rewards"]),
            "sum_rejected_reward": total(aux["rejected_rewards"]),
            "sum_response_tokens": jnp.sum(response_mask(batch)),
        }
        return loss, out

    return loss_fn


def dpo_metrics(metrics: dict, beta: float | None = None) -> dict[str, float]:
    """Per-pair means from a step's (or several steps') summed metrics.

    dpo_accuracy (share of pairs with delta > 0), dpo_margin (mean delta), dpo_chosen_reward /
    dpo_rejected_reward (mean beta * log-ratio), dpo_weight_mean; with beta also dpo_logratio_mean, the mean
    policy-vs-reference log-ratio of the responses (an implicit-KL monitor on the preference data).
    """
    n = max(float(metrics["sum_pairs"]), 1.0)
    out = {
        "dpo_accuracy": float(metrics["sum_pairs_correct"]) / n,
        "dpo_margin": float(metrics["sum_margin"]) / n,
        "dpo_chosen_reward": float(metrics["sum_chosen_reward"]) / n,
        "dpo_rejected_reward": float(metrics["sum_rejected_reward"]) / n,
        "dpo_weight_mean": float(metrics["sum_pair_weight"]) / n,
    }
    if beta:
        out["dpo_logratio_mean"] = (out["dpo_chosen_reward"] + out["dpo_rejected_reward"]) / (2.0 * beta)
    return out


def loss_from_config(
    dpo: ml_collections.ConfigDict, *, chunk_size: int, mesh_rules: MeshRules | None
) -> LossFn:
    """make_dpo_loss from a `dpo` config section (dpo_defaults())."""
    if dpo.reference not in REFERENCES:
        raise ValueError(f"dpo.reference={dpo.reference!r}: expected one of {REFERENCES}")
    return make_loss(
        "weighted_dpo",
        beta=float(dpo.beta),
        label_smoothing=float(dpo.label_smoothing),
        normalize=str(dpo.normalize),
        reference_free=dpo.reference == "none",
        chunk_size=chunk_size,
        mesh_rules=mesh_rules,
    )


#: This module's entries of the shared registry (storm_jax.train.losses.LOSSES), by name.
LOSSES: dict[str, Callable[..., LossFn]] = {"weighted_dpo": make_dpo_loss}


# ----------------------------------------------------------------------------------------------------------
# Reference log-probs
# ----------------------------------------------------------------------------------------------------------


def make_reference_fn(
    model_cfg: ModelConfig,
    *,
    chunk_size: int = 0,
    mesh_rules: MeshRules | None = None,
    params_sharding: Any = None,
) -> Callable[[Any, dict], jax.Array]:
    """Jitted `ref_fn(ref_params, batch) -> [P, 2]` summed log-probs under frozen params (no gradient).

    The params are an argument, not a closure: a closed-over array would be baked into the executable as a
    constant. With mesh_rules, the batch is sharded over the data-parallel axes like the train step's.
    """

    def fn(ref_params, batch):
        return pair_logps(ref_params, model_cfg, batch, chunk_size=chunk_size, mesh_rules=mesh_rules)

    if mesh_rules is None:
        return jax.jit(fn)
    from jax.sharding import NamedSharding, PartitionSpec

    from storm_jax.train.step import batch_sharding

    return jax.jit(
        fn,
        in_shardings=(params_sharding, batch_sharding(mesh_rules)),
        out_shardings=NamedSharding(mesh_rules.mesh, PartitionSpec()),
    )


def precompute_reference_logps(
    ref_params: Any,
    model_cfg: ModelConfig,
    pairs: list,
    *,
    seq_len: int,
    batch_pairs: int = 8,
    chunk_size: int = 0,
    mesh_rules: MeshRules | None = None,
    params_sharding: Any = None,
) -> list:
    """The pairs (storm_jax.data.preference.PreferencePair) with `ref_chosen_logp` / `ref_rejected_logp` set.

    One jitted function of fixed shape [batch_pairs, 2, seq_len] runs over all pairs (the last batch padded
    with empty pairs, whose outputs are discarded), so it compiles once. The reference model is needed only
    here; training then reads the stored values (the default, dpo.reference="precomputed").
    """
    import dataclasses

    from storm_jax.data.preference import eval_batches

    ref_fn = make_reference_fn(
        model_cfg, chunk_size=chunk_size, mesh_rules=mesh_rules, params_sharding=params_sharding
    )
    out = []
    start = 0
    for batch, n in eval_batches(pairs, seq_len=seq_len, batch_pairs=batch_pairs, with_ref=False):
        logps = np.asarray(jax.device_get(ref_fn(ref_params, batch)), np.float64)
        for i in range(n):
            p = pairs[start + i]
            out.append(
                dataclasses.replace(
                    p, ref_chosen_logp=float(logps[i, 0]), ref_rejected_logp=float(logps[i, 1])
                )
            )
        start += n
    return out


class ReferenceLogpsIterator:
    """Wraps a pair-batch iterator and adds `ref_logps` [P, 2] computed from reference params (on the fly).

    The values come back as host numpy like every other field, so the training loop places the batch on the
    mesh exactly as it does a precomputed one. get_state()/set_state() are the wrapped iterator's: the
    reference values are a pure function of the batch.
    """

    def __init__(self, it: Iterator[dict], ref_params: Any, ref_fn: Callable[[Any, dict], jax.Array]):
        self._it = it
        self._ref_params = ref_params
        self._ref_fn = ref_fn

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self._it))
        batch["ref_logps"] = np.asarray(jax.device_get(self._ref_fn(self._ref_params, batch)), np.float32)
        return batch

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state) -> None:
        self._it.set_state(state)


def with_reference_logps(
    it: Iterator[dict],
    ref_params: Any,
    model_cfg: ModelConfig,
    *,
    chunk_size: int = 0,
    mesh_rules: MeshRules | None = None,
    params_sharding: Any = None,
) -> ReferenceLogpsIterator:
    """The on-the-fly reference option: every batch gets `ref_logps` from `ref_params` (held in memory)."""
    fn = make_reference_fn(
        model_cfg, chunk_size=chunk_size, mesh_rules=mesh_rules, params_sharding=params_sharding
    )
    return ReferenceLogpsIterator(it, ref_params, fn)
