"""Learning-rate schedules and the AdamW optimizer (optax) built from the `optim` config section."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def make_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr over warmup_steps, then cosine / linear decay to lr*min_lr_ratio, or constant."""
    lr = float(optim_cfg.lr)
    warmup = int(optim_cfg.warmup_steps)
    end = lr * float(optim_cfg.min_lr_ratio)
    decay_steps = max(int(total_steps) - warmup, 1)
    if optim_cfg.decay == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif optim_cfg.decay == "linear":
        after = optax.linear_schedule(lr, end, decay_steps)
    elif optim_cfg.decay == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"optim.decay: unknown schedule {optim_cfg.decay!r}")
    if warmup == 0:
        return after
    # Step 0 of warmup already uses lr/warmup so the very first update is not a no-op.
    warm = lambda step: lr * jnp.minimum((step + 1.0) / warmup, 1.0)
    return optax.join_schedules([warm, after], [warmup])


def decay_mask(params: Any) -> Any:
    """Weight decay only on matrices (ndim >= 2 per layer); norms and biases are excluded."""

    def is_matrix(path, x):
        name = getattr(path[-1], "key", "")
        return not (name.endswith("norm") or name.endswith("bias"))

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(optim_cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping (clip_norm > 0) and the configured schedule."""
    schedule = make_schedule(optim_cfg, total_steps)
    parts = []
    if float(optim_cfg.clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(optim_cfg.b1),
            b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule
