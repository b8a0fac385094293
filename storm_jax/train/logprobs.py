"""Per-token log-probabilities of given targets from one forward pass (shared by SFT, GRPO, DPO, GenPRM).

`token_logprobs(...)[b, t] = log p(targets[b, t] | tokens[b, :t+1])`. With `chunk_size`, the vocabulary
projection + log-softmax run over time chunks of the final hidden states under `jax.checkpoint`, so neither
the forward nor the backward pass ever holds the full [B, T, V] fp32 logits (151,936 x 16K tokens x 4 bytes
would be ~10 GB per sequence).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from storm_jax.models.qwen import ModelConfig, forward, logits_from_hidden
from storm_jax.parallel.mesh import MeshRules, constrain


def _logprob_entropy(params, h, targets, cfg: ModelConfig, mesh_rules, with_entropy: bool):
    logits = logits_from_hidden(params, h, cfg, mesh_rules)  # fp32 [B, C, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logp = picked - lse
    if not with_entropy:
        return logp, None
    probs = jnp.exp(logits - lse[..., None])
    ent = lse - jnp.sum(probs * logits, axis=-1)
    return logp, ent


def token_logprobs(
    params: Any,
    cfg: ModelConfig,
    tokens: jax.Array,
    targets: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    mesh_rules: MeshRules | None = None,
    chunk_size: int = 0,
    return_entropy: bool = False,
    needed: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """[B, T] fp32 log p(targets[t] | tokens[:t+1]) (and the [B, T] entropy of p(. | tokens[:t+1]) if asked).

    segment_ids (0 = padding) keep packed documents apart; positions restart per document when given.
    chunk_size > 0 (must divide T) bounds the logits memory to [B, chunk_size, V].
    needed ([B, T], with chunk_size): the positions whose values are used (a loss mask); a time chunk with
    none of them skips its vocabulary projection (a `lax.cond`) and returns 0 there. The projection is
    most of a small model's cost, and a long masked prompt (a GenPRM critique row) is mostly such chunks.
    """
    hidden, _ = forward(
        params,
        tokens,
        cfg,
        positions=positions,
        segment_ids=segment_ids,
        mesh_rules=mesh_rules,
        return_hidden=True,
    )
    B, T, D = hidden.shape
    if not chunk_size or chunk_size >= T:
        logp, ent = _logprob_entropy(params, hidden, targets, cfg, mesh_rules, return_entropy)
        return (logp, ent) if return_entropy else logp
    if T % chunk_size:
        raise ValueError(f"chunk_size={chunk_size} does not divide the sequence length {T}")
    n = T // chunk_size
    h = jnp.moveaxis(hidden.reshape(B, n, chunk_size, D), 1, 0)  # [n, B, C, D]
    tg = jnp.moveaxis(targets.reshape(B, n, chunk_size), 1, 0)

    @jax.checkpoint
    def one(args):
        hc, tc = args[:2]
        hc = constrain(hc, ("batch", "length", "act_embed"), mesh_rules)
        lp, en = _logprob_entropy(params, hc, tc, cfg, mesh_rules, return_entropy)
        return lp, (en if return_entropy else jnp.zeros((), jnp.float32))

    if needed is None:
        lp, en = jax.lax.map(one, (h, tg))
    else:
        nd = jnp.moveaxis(needed.reshape(B, n, chunk_size), 1, 0).any(axis=(1, 2))  # [n]

        def skip(args):
            z = jnp.zeros(args[1].shape, jnp.float32)
            return z, (z if return_entropy else jnp.zeros((), jnp.float32))

        lp, en = jax.lax.map(lambda a: jax.lax.cond(a[2], one, skip, a), (h, tg, nd))
    logp = jnp.moveaxis(lp, 0, 1).reshape(B, T)
    if not return_entropy:
        return logp
    return logp, jnp.moveaxis(en, 0, 1).reshape(B, T)
