"""The GRPO objective as pure functions: group advantages (host side), the clipped token loss, and a LossFn.

Formulas. Per prompt, G sampled responses with rewards r_i get
    A_i = (r_i - mean_group(r)) / (std_group(r) + eps)          (Dr.GRPO: A_i = r_i - mean_group(r))
and every response token t of sequence i contributes
    l_t = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i) + beta * k3_t,
    rho_t = exp(logp_t - old_logp_t),  k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1,
where old_logp are the log-probs of the policy that sampled the responses and ref the frozen reference policy.
Masked tokens (prompt, tool output, padding, and whole sequences dropped by the options) contribute nothing.

Aggregation over a batch (a *kept sequence* is one with at least one unmasked token; a sequence whose tokens
are all masked counts exactly as if it had been filtered out of the batch):
    token_mean            sum_t l_t / #tokens                                     (DAPO)
    seq_mean_token_mean   mean over kept sequences of (sum_{t in s} l_t / #tokens(s))   (original GRPO)
    constant              sum_t l_t / (max_response_len * #kept sequences)        (Dr.GRPO)

Gradient accumulation: `storm_jax.train.step.make_train_step` combines micro-batches as
sum_i(w_i L_i) / sum_i(w_i). With w_i = #tokens_i (token_mean) or #kept sequences_i (the two others), each
L_i = S_i / w_i (S_i = the micro-batch's share of the numerator), so the combination is
sum_i S_i / sum_i w_i -- exactly the full-batch value, however the batch is split.

Registries (plain dicts, by name): `AGGREGATORS` (the three above), `ADVANTAGE_ESTIMATORS` ("grpo" scales by
the group std, "dr_grpo" does not), and the loss itself as "grpo" in storm_jax.train.losses.LOSSES.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel.mesh import MeshRules
from storm_jax.train.losses import LossFn, batch_logprobs, masked_sequence_mean, register_loss

# ----------------------------------------------------------------------------------------------------------
# Group advantages (numpy, host side, after rollouts + rewards)
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupAdvantages:
    """Per-sample advantages and zero-variance bookkeeping; arrays have the shape of the rewards given.

    keep is False for samples of zero-variance groups when dropping was asked (filter rows with it, or pass
    zero_variance to the loss with GRPOLossConfig.drop_zero_variance, which gives them weight 0).
    """

    advantages: np.ndarray  # float32
    zero_variance: np.ndarray  # bool: the sample's group has identical rewards (A = 0 exactly)
    keep: np.ndarray  # bool
    n_groups: int
    n_zero_variance_groups: int
    n_dropped: int  # samples with keep == False

    def stats(self) -> dict[str, float]:
        """Scalars for logging."""
        a = self.advantages[self.keep]
        return {
            "groups": float(self.n_groups),
            "zero_variance_groups": float(self.n_zero_variance_groups),
            "frac_zero_variance_groups": self.n_zero_variance_groups / max(self.n_groups, 1),
            "dropped_samples": float(self.n_dropped),
            "adv_abs_mean": float(np.abs(a).mean()) if a.size else 0.0,
        }


def group_advantages(
    rewards: Any,
    group_ids: Any = None,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    ddof: int = 0,
    drop_zero_variance: bool = False,
) -> GroupAdvantages:
    """A_i = (r_i - mean_group(r)) / (std_group(r) + eps), or r_i - mean_group(r) with scale_by_std=False (Dr.GRPO).

    rewards: [P, G] (row p = the G samples of prompt p; group_ids must be None) or [N] with group_ids [N]
    (any hashable labels; groups may have different sizes). std is the *population* std (ddof=0) by default;
    ddof=1 gives the sample std that TRL/verl use (a group of one sample then counts as zero-variance).
    Groups whose rewards are all identical get A = 0 exactly (not r - mean rounded) and are flagged.
    Computed in float64, returned as float32.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 2:
        if group_ids is not None:
            raise ValueError(f"rewards of shape {r.shape} are already grouped by row; do not pass group_ids")
        inverse = np.repeat(np.arange(r.shape[0]), r.shape[1])
        flat = r.reshape(-1)
    elif r.ndim == 1:
        if group_ids is None:
            raise ValueError(f"rewards of shape {r.shape} need group_ids (or pass them as [P, G])")
        g = np.asarray(group_ids)
        if g.shape != r.shape:
            raise ValueError(f"group_ids shape {g.shape} != rewards shape {r.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        inverse = inverse.reshape(-1)
        flat = r
    else:
        raise ValueError(f"rewards must be [N] or [P, G], got shape {r.shape}")
    if not np.all(np.isfinite(flat)):
        bad = np.flatnonzero(~np.isfinite(flat))[:5].tolist()
        raise ValueError(f"non-finite rewards at flat indices {bad}")
    n_groups = int(inverse.max()) + 1 if flat.size else 0
    count = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    mean = np.bincount(inverse, weights=flat, minlength=n_groups) / np.maximum(count, 1)
    centered = flat - mean[inverse]
    sq = np.bincount(inverse, weights=centered**2, minlength=n_groups)
    std = np.sqrt(sq / np.maximum(count - ddof, 1))
    gmax = np.full(n_groups, -np.inf)
    gmin = np.full(n_groups, np.inf)
    np.maximum.at(gmax, inverse, flat)
    np.minimum.at(gmin, inverse, flat)
    zv_group = (gmax == gmin) | (count <= ddof)
    adv = centered / (std[inverse] + eps) if scale_by_std else centered
    zv = zv_group[inverse]
    adv = np.where(zv, 0.0, adv)
    keep = ~zv if drop_zero_variance else np.ones_like(zv)
    return GroupAdvantages(
        advantages=adv.astype(np.float32).reshape(r.shape),
        zero_variance=zv.reshape(r.shape),
        keep=keep.reshape(r.shape),
        n_groups=n_groups,
        n_zero_variance_groups=int(zv_group.sum()),
        n_dropped=int((~keep).sum()),
    )


#: Advantage estimators by name: (rewards, group_ids=None, **options) -> GroupAdvantages.
ADVANTAGE_ESTIMATORS: dict[str, Any] = {
    "grpo": lambda rewards, group_ids=None, **kw: group_advantages(
        rewards, group_ids, scale_by_std=True, **kw
    ),
    "dr_grpo": lambda rewards, group_ids=None, **kw: group_advantages(
        rewards, group_ids, scale_by_std=False, **kw
    ),
}


def estimate_advantages(name: str, rewards: Any, group_ids: Any = None, **options: Any) -> GroupAdvantages:
    """The registered advantage estimator `name` on `rewards` ([P, G], or [N] with group_ids)."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](rewards, group_ids, **options)


# ----------------------------------------------------------------------------------------------------------
# Token loss on arrays
# ----------------------------------------------------------------------------------------------------------


def _token_mean(values, m, seg, n_tok, n_seq, max_len):
    return jnp.sum(values * m) / jnp.maximum(n_tok, 1.0)


def _seq_mean_token_mean(values, m, seg, n_tok, n_seq, max_len):
    return masked_sequence_mean(values, m, seg)[0]


def _constant(values, m, seg, n_tok, n_seq, max_len):
    return jnp.sum(values * m) / (float(max_len) * jnp.maximum(n_seq, 1.0))


#: Aggregations by name: (values, mask, segment_ids, #tokens, #kept sequences, max_response_len) -> scalar,
#: and the micro-batch weight each one needs for exact accumulation (module doc).
AGGREGATORS = {"token_mean": _token_mean, "seq_mean_token_mean": _seq_mean_token_mean, "constant": _constant}
AGGREGATION_WEIGHT = {"token_mean": "tokens", "seq_mean_token_mean": "sequences", "constant": "sequences"}
AGGREGATIONS = tuple(AGGREGATORS)


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """Options of the GRPO objective (hashable: may be a static jit argument).

    clip_eps_high > clip_eps_low is DAPO's clip-higher. kl_beta > 0 adds beta * k3 to a frozen reference
    (batch["ref_logprobs"] needed). max_response_len is the per-sequence token budget of the "constant"
    normaliser (required there, ignored otherwise). mask_truncated drops sequences flagged truncated (DAPO
    overlong filtering); drop_zero_variance drops sequences flagged zero_variance (see group_advantages).
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_beta: float = 0.0
    aggregation: str = "token_mean"
    max_response_len: int = 0
    mask_truncated: bool = False
    drop_zero_variance: bool = False
    compute_entropy: bool = True  # logged only; costs one extra softmax reduction per token

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"GRPOLossConfig.aggregation={self.aggregation!r}: expected one of {AGGREGATIONS}"
            )
        if self.aggregation == "constant" and self.max_response_len <= 0:
            raise ValueError("GRPOLossConfig.aggregation='constant' needs max_response_len > 0")
        if not (0.0 <= self.clip_eps_low < 1.0) or self.clip_eps_high < 0.0:
            raise ValueError(
                f"GRPOLossConfig clip_eps_low={self.clip_eps_low} must be in [0, 1), "
                f"clip_eps_high={self.clip_eps_high} must be >= 0"
            )
        if self.kl_beta < 0:
            raise ValueError(f"GRPOLossConfig.kl_beta={self.kl_beta} must be >= 0")


def _per_token(x: Any, shape: tuple[int, int], name: str) -> jax.Array:
    """[B] (one value per row) or [B, T] (per token, for packed rows) -> [B, T]."""
    x = jnp.asarray(x)
    if x.ndim == 1 and x.shape[0] == shape[0]:
        return jnp.broadcast_to(x[:, None], shape)
    if x.shape == tuple(shape):
        return x
    raise ValueError(f"{name} has shape {x.shape}; expected [{shape[0]}] or {list(shape)}")


def grpo_token_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: GRPOLossConfig,
    *,
    segment_ids: jax.Array | None = None,
    truncated: jax.Array | None = None,
    zero_variance: jax.Array | None = None,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """The GRPO loss of one (micro-)batch from [B, T] log-probs; differentiable w.r.t. logp.

    advantages, truncated, zero_variance: [B] per row or [B, T] per token (packed rows). mask: [B, T] tokens
    that are trained on. segment_ids (0 = padding) separate packed sequences; None = one sequence per row.
    ref_logp may be None when cfg.kl_beta == 0.

    Returns (loss, metrics). metrics["weight"] is the make_train_step micro-batch weight (see module doc);
    pg_loss / kl are the two terms in the chosen aggregation (loss = pg_loss + kl_beta * kl); ratio_mean,
    clip_frac_low/high (tokens where the clipped branch is active, so their gradient is 0), entropy, adv_mean
    and adv_abs_mean are masked token means; sum_* are counts (summed, not averaged, across micro-batches).
    """
    logp = jnp.asarray(logp, jnp.float32)
    shape = logp.shape
    if logp.ndim != 2:
        raise ValueError(f"logp must be [B, T], got {shape}")
    for name, x in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp), ("entropy", entropy)):
        if x is not None and tuple(jnp.shape(x)) != tuple(shape):
            raise ValueError(f"{name} has shape {jnp.shape(x)}; expected {list(shape)} like logp")
    if cfg.kl_beta > 0 and ref_logp is None:
        raise ValueError("kl_beta > 0 needs ref_logp (reference-policy log-probs)")
    seg = jnp.ones(shape, jnp.int32) if segment_ids is None else jnp.asarray(segment_ids)
    m = jnp.asarray(mask).astype(jnp.float32) * (seg != 0)
    if cfg.mask_truncated:
        if truncated is None:
            raise ValueError("mask_truncated=True needs the truncated flags")
        m = m * (1.0 - _per_token(truncated, shape, "truncated").astype(jnp.float32))
    if cfg.drop_zero_variance:
        if zero_variance is None:
            raise ValueError("drop_zero_variance=True needs the zero_variance flags")
        m = m * (1.0 - _per_token(zero_variance, shape, "zero_variance").astype(jnp.float32))
    adv = _per_token(advantages, shape, "advantages").astype(jnp.float32)
    valid = m > 0

    # Masked positions may hold garbage (padding logits, -inf from a sampler): zero the exponent there so
    # neither the value nor the gradient can become inf * 0 = nan.
    # The clamp (as in verl) only matters for pathological inputs (|log-ratio| > 20 nats): it keeps exp finite, at
    # the cost of a zero gradient there.
    delta = jnp.where(valid, logp - jnp.asarray(old_logp, jnp.float32), 0.0)
    delta = jnp.clip(delta, -20.0, 20.0)
    ratio = jnp.exp(delta)
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
    unclipped_obj = ratio * adv
    clipped_obj = clipped_ratio * adv
    # min(.,.) written as a select so the tie (rho inside the clip range) takes the unclipped branch's
    # gradient rho*A, instead of lax.min's split of it between two equal branches.
    pg = -jnp.where(clipped_obj < unclipped_obj, clipped_obj, unclipped_obj)
    clip_low = valid & (adv < 0) & (ratio < 1.0 - cfg.clip_eps_low)
    clip_high = valid & (adv > 0) & (ratio > 1.0 + cfg.clip_eps_high)

    if ref_logp is not None:
        d_ref = jnp.where(valid, jnp.asarray(ref_logp, jnp.float32) - logp, 0.0)
        k3 = jnp.exp(d_ref) - d_ref - 1.0
    else:
        k3 = jnp.zeros(shape, jnp.float32)
    per_token = pg + cfg.kl_beta * k3 if cfg.kl_beta > 0 else pg

    n_tok = jnp.sum(m)
    _, n_seq = masked_sequence_mean(jnp.zeros(shape, jnp.float32), m, seg)

    agg = AGGREGATORS[cfg.aggregation]

    def aggregate(values):
        return agg(values, m, seg, n_tok, n_seq, cfg.max_response_len)

    def tok_mean(values):
        return jnp.sum(jax.lax.stop_gradient(values) * m) / jnp.maximum(n_tok, 1.0)

    loss = aggregate(per_token)
    sg = jax.lax.stop_gradient
    metrics = {
        "weight": n_tok if AGGREGATION_WEIGHT[cfg.aggregation] == "tokens" else n_seq,
        "pg_loss": sg(aggregate(pg)),
        "ratio_mean": tok_mean(ratio),
        "clip_frac_low": tok_mean(clip_low.astype(jnp.float32)),
        "clip_frac_high": tok_mean(clip_high.astype(jnp.float32)),
        "adv_mean": tok_mean(adv),
        "adv_abs_mean": tok_mean(jnp.abs(adv)),
        "sum_tokens": n_tok,
        "sum_sequences": n_seq,
        "sum_clip_low": jnp.sum(clip_low.astype(jnp.float32)),
        "sum_clip_high": jnp.sum(clip_high.astype(jnp.float32)),
    }
    if ref_logp is not None:
        metrics["kl"] = sg(aggregate(k3))
    if entropy is not None:
        metrics["entropy"] = tok_mean(jnp.asarray(entropy, jnp.float32))
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------
# LossFn for make_train_step
# ----------------------------------------------------------------------------------------------------------


@register_loss("grpo")
def make_grpo_loss(
    loss_cfg: GRPOLossConfig, mesh_rules: MeshRules | None = None, *, chunk_size: int = 0
) -> LossFn:
    """GRPO `loss_fn(params, batch, model_cfg) -> (loss, aux)` for storm_jax.train.step.make_train_step.

    batch ([B, T] unless noted): tokens, targets, loss_mask, segment_ids, positions; advantages [B] (or
    [B, T] for packed rows); old_logprobs (the sampling policy's log-probs of targets); ref_logprobs when
    kl_beta > 0; truncated [B] when mask_truncated; zero_variance [B] when drop_zero_variance.
    The loop precomputes old_logprobs (behaviour params) and ref_logprobs (frozen reference params) with
    `token_logprobs` on the same batch, so both sides of every ratio come from the same code path: rho == 1
    exactly on the first pass. (A sampler's own log-probs are temperature-scaled and possibly bf16; they are
    not log pi_old of this unscaled policy.) This loss runs the policy forward pass once. aux["weight"] makes
    accumulation exact (module doc).
    """

    def need(batch: dict, key: str, why: str):
        if key not in batch:
            raise KeyError(f"GRPO batch is missing {key!r} ({why}); it has {sorted(batch)}")
        return batch[key]

    def loss_fn(params, batch, model_cfg: ModelConfig):
        for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions"):
            need(batch, k, "model inputs")
        old = need(batch, "old_logprobs", "log-probs of the sampling policy")
        adv = need(batch, "advantages", "per-sequence advantages")
        ref = (
            need(batch, "ref_logprobs", "kl_beta > 0") if loss_cfg.kl_beta > 0 else batch.get("ref_logprobs")
        )
        trunc = need(batch, "truncated", "mask_truncated=True") if loss_cfg.mask_truncated else None
        zv = need(batch, "zero_variance", "drop_zero_variance=True") if loss_cfg.drop_zero_variance else None
        out = batch_logprobs(
            params,
            model_cfg,
            batch,
            mesh_rules=mesh_rules,
            chunk_size=chunk_size,
            return_entropy=loss_cfg.compute_entropy,
        )
        logp, ent = out if loss_cfg.compute_entropy else (out, None)
        return grpo_token_loss(
            logp,
            old,
            ref,
            adv,
            batch["loss_mask"],
            loss_cfg,
            segment_ids=batch["segment_ids"],
            truncated=trunc,
            zero_variance=zv,
            entropy=None if ent is None else jax.lax.stop_gradient(ent),
        )

    return loss_fn
