"""The SFT loss's vocabulary projection with its gradient computed in the forward pass (chunked, no recompute).

SFT's loss is linear in the per-token log-probs: loss = -sum_t c_t log p(y_t | x_<=t), where the weights c
come from the loss mask and the normalization only (never from the parameters). So the gradient of each
time chunk's share can be formed as soon as that chunk's logits exist:

    d/dlogits  = c * (onehot(y) - softmax(logits))       [B, C, V], transient
    d/dh       = d/dlogits @ W                            [B, C, D], kept
    d/dW      += d/dlogits^T @ h                          [V, D], accumulated

The generic chunked path (`token_logprobs` under `jax.checkpoint`) must recompute each chunk's logits in the
backward pass because the cotangent of every log-prob is only known then: four [T, D] x [D, V] matmuls per
step instead of three, and on CPU the recompute loop costs more than that. Here the backward pass only scales
the saved gradients by the scalar cotangent. Memory stays bounded by one chunk's [B, C, V] logits.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from storm_jax.models.qwen import ModelConfig, forward
from storm_jax.parallel.mesh import MeshRules, constrain


def _chunk_terms(w_vd, h, targets, weights, dt, mesh_rules):
    """(sum c*logp, logp [B, C], dh [B, C, D], dW [V, D]) for one time chunk."""
    logits = jnp.einsum("bcd,vd->bcv", h.astype(dt), w_vd.astype(dt), preferred_element_type=jnp.float32)
    logits = constrain(logits, ("batch", "length", "act_vocab"), mesh_rules)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logp = picked - lse
    probs = jnp.exp(logits - lse[..., None])
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
    dlogits = (weights[..., None] * (onehot - probs)).astype(dt)
    dh = jnp.einsum("bcv,vd->bcd", dlogits, w_vd.astype(dt), preferred_element_type=jnp.float32)
    dw = jnp.einsum("bcv,bcd->vd", dlogits, h.astype(dt), preferred_element_type=jnp.float32)
    return jnp.sum(weights * logp), logp, dh, dw


def _scan(w_vd, h, targets, weights, chunk_size, dt, mesh_rules):
    B, T, D = h.shape
    n = T // chunk_size
    split = lambda a: jnp.moveaxis(a.reshape(B, n, chunk_size, *a.shape[2:]), 1, 0)  # noqa: E731
    hs, ts, ws = split(h), split(targets), split(weights)

    def body(carry, xs):
        total, dw = carry
        hc, tc, wc = xs
        hc = constrain(hc, ("batch", "length", "act_embed"), mesh_rules)

        def compute(_):
            return _chunk_terms(w_vd, hc, tc, wc, dt, mesh_rules)

        def skip(_):  # no weighted token in this chunk: its log-probs are not needed (returned as 0)
            z = jnp.zeros(tc.shape, jnp.float32)
            return jnp.zeros((), jnp.float32), z, jnp.zeros(hc.shape, jnp.float32), jnp.zeros_like(dw)

        s, lp, dh, dwc = jax.lax.cond(jnp.any(wc != 0), compute, skip, None)
        return (total + s, dw + dwc), (lp, dh)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(w_vd.shape, jnp.float32))
    (total, dw), (lp, dh) = jax.lax.scan(body, init, (hs, ts, ws))
    merge = lambda a: jnp.moveaxis(a, 0, 1).reshape(B, T, *a.shape[3:])  # noqa: E731
    return total, merge(lp), merge(dh), dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _weighted_sum(w_vd, h, targets, weights, chunk_size, dt, mesh_rules):
    total, logp, _, _ = _scan(w_vd, h, targets, weights, chunk_size, dt, mesh_rules)
    return total, logp


def _fwd(w_vd, h, targets, weights, chunk_size, dt, mesh_rules):
    total, logp, dh, dw = _scan(w_vd, h, targets, weights, chunk_size, dt, mesh_rules)
    # saved in the inputs' dtypes (their cotangents' dtypes); the backward only scales them
    return (total, logp), (dh.astype(h.dtype), dw.astype(w_vd.dtype), targets, weights)


def _bwd(chunk_size, dt, mesh_rules, res, cts):
    dh, dw, targets, weights = res
    g, _ = cts  # the log-probs output is metrics only (stop_gradient'ed by the caller): its cotangent is 0
    no_grad = jnp.zeros(targets.shape, jax.dtypes.float0)
    return (g * dw).astype(dw.dtype), (g * dh).astype(dh.dtype), no_grad, jnp.zeros_like(weights)


_weighted_sum.defvjp(_fwd, _bwd)


def weighted_logprob_sum(
    params: Any,
    cfg: ModelConfig,
    tokens: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    chunk_size: int,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    mesh_rules: MeshRules | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(sum_{b,t} weights[b,t] * log p(targets[b,t] | tokens[b,:t+1]), the [B, T] log-probs).

    Differentiable in `params` through the first output only; `weights` are constants (a loss mask times a
    normalization). The log-probs are returned for metrics and are 0 in chunks without a weighted token.
    `chunk_size` must divide T.
    """
    hidden, _ = forward(
        params, tokens, cfg, positions=positions, segment_ids=segment_ids, mesh_rules=mesh_rules,
        return_hidden=True,
    )  # fmt: skip
    T = hidden.shape[1]
    if T % chunk_size:
        raise ValueError(f"chunk_size={chunk_size} does not divide the sequence length {T}")
    # an untied head is [D, V]: its transpose is differentiated by JAX outside the custom rule
    w_vd = params["embed"] if cfg.tie_word_embeddings else params["lm_head"].T
    weights = jax.lax.stop_gradient(weights.astype(jnp.float32))
    total, logp = _weighted_sum(
        w_vd, hidden, targets, weights, int(chunk_size), cfg.compute_dtype, mesh_rules
    )
    return total, jax.lax.stop_gradient(logp)
