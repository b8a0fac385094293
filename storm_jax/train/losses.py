"""Loss functions with the generic train-step contract `loss_fn(params, batch, model_cfg) -> (loss, aux)`.

`aux["weight"]` (not differentiated) is how much this micro-batch counts: the step combines micro-batches as
sum_i(weight_i * loss_i) / sum_i(weight_i). For the SFT token mean, loss_i is the mean NLL over the masked
tokens of micro-batch i and weight_i its masked-token count, which gives exactly the per-token mean over the
global batch however it is split into micro-batches.

Losses are registered by name (`LOSSES`, a plain dict filled by `@register_loss`): a trainer builds its loss
with `make_loss(name, **options)`; storm_jax.train.grpo_loss registers "grpo", new objectives (weighted DPO,
GenPRM) register theirs the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from storm_jax.models.qwen import ModelConfig
from storm_jax.parallel.mesh import MeshRules
from storm_jax.train.fused_head import weighted_logprob_sum
from storm_jax.train.logprobs import token_logprobs

LossFn = Callable[[Any, dict, ModelConfig], tuple[jax.Array, dict]]

#: name -> factory(**options) -> LossFn.
LOSSES: dict[str, Callable[..., LossFn]] = {}


def register_loss(name: str) -> Callable[[Callable[..., LossFn]], Callable[..., LossFn]]:
    """Decorator: register a loss factory under `name` (a name may be registered once)."""

    def deco(factory):
        if name in LOSSES and LOSSES[name] is not factory:
            raise ValueError(f"loss {name!r} is already registered ({LOSSES[name].__module__})")
        LOSSES[name] = factory
        return factory

    return deco


def make_loss(name: str, **options: Any) -> LossFn:
    """The registered loss `name` built with `options`."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    return LOSSES[name](**options)


def batch_logprobs(
    params: Any,
    model_cfg: ModelConfig,
    batch: dict,
    *,
    mesh_rules: MeshRules | None = None,
    chunk_size: int = 0,
    return_entropy: bool = False,
    needed: Any = None,
):
    """token_logprobs of batch["targets"] given the batch's tokens, segment_ids and positions."""
    return token_logprobs(
        params,
        model_cfg,
        batch["tokens"],
        batch["targets"],
        segment_ids=batch["segment_ids"],
        positions=batch["positions"],
        mesh_rules=mesh_rules,
        chunk_size=chunk_size,
        return_entropy=return_entropy,
        needed=needed,
    )


def masked_token_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum(values*mask)/max(sum(mask),1), sum(mask))."""
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    return jnp.sum(values * m) / jnp.maximum(n, 1.0), n


def _documents(m: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(flat document index of every position, masked-token count of every document); documents are
    (row, segment id) pairs, and segment ids are < T + 1 per row."""
    B, T = m.shape
    doc = (jnp.arange(B)[:, None] * T + segment_ids).reshape(-1)
    return doc, jax.ops.segment_sum(m.reshape(-1), doc, num_segments=B * (T + 1))


def masked_sequence_mean(
    values: jax.Array, mask: jax.Array, segment_ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean over documents of each document's masked-token mean; documents = (row, segment id) pairs.

    Returns (loss, number of documents with at least one masked token).
    """
    B, T = values.shape
    m = mask.astype(jnp.float32) * (segment_ids != 0)
    doc, counts = _documents(m, segment_ids)
    sums = jax.ops.segment_sum((values * m).reshape(-1), doc, num_segments=B * (T + 1))
    has = counts > 0
    per_doc = jnp.where(has, sums / jnp.maximum(counts, 1.0), 0.0)
    n_docs = jnp.sum(has.astype(jnp.float32))
    return jnp.sum(per_doc) / jnp.maximum(n_docs, 1.0), n_docs


def normalization_weights(
    mask: jax.Array, segment_ids: jax.Array, normalization: str
) -> tuple[jax.Array, jax.Array]:
    """Constant weights c [B, T] with NORMALIZATIONS[normalization](v, mask, seg)[0] == sum(c * v), and the weight.

    The SFT loss is linear in the per-token values, so these weights are all the fused head needs."""
    m = mask.astype(jnp.float32) * (segment_ids != 0)
    if normalization == "token":
        n = jnp.sum(m)
        return m / jnp.maximum(n, 1.0), n
    doc, counts = _documents(m, segment_ids)
    n_docs = jnp.sum((counts > 0).astype(jnp.float32))
    per_tok = counts[doc].reshape(m.shape)
    return m / (jnp.maximum(per_tok, 1.0) * jnp.maximum(n_docs, 1.0)), n_docs


#: SFT normalizations: name -> (values, mask, segment_ids) -> (loss, micro-batch weight).
NORMALIZATIONS: dict[str, Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]] = {
    "token": lambda values, mask, segment_ids: masked_token_mean(values, mask),
    "sequence": masked_sequence_mean,
}


@register_loss("sft")
def make_sft_loss(
    *,
    normalization: str = "token",
    chunk_size: int = 0,
    mesh_rules: MeshRules | None = None,
    skip_masked_chunks: bool = False,
    fused: bool = False,
) -> LossFn:
    """SFT loss: masked mean of -token_logprobs over batch["loss_mask"] (token or sequence normalization).

    fused (with chunk_size): the vocabulary projection's gradient is formed in the forward pass
    (train/fused_head.py: no recompute of the chunk logits; chunks without a loss token are skipped); same loss
    and gradients up to fp32 summation order.

    skip_masked_chunks (with chunk_size): time chunks without a loss token skip the vocabulary projection
    (token_logprobs `needed`); the loss and gradients are unchanged, only unused work is dropped."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"loss normalization {normalization!r}: expected one of {sorted(NORMALIZATIONS)}")
    normalize = NORMALIZATIONS[normalization]

    def fused_loss_fn(params, batch, model_cfg: ModelConfig):
        mask = batch["loss_mask"].astype(jnp.float32) * (batch["segment_ids"] != 0)
        c, weight = normalization_weights(mask, batch["segment_ids"], normalization)
        total, logp = weighted_logprob_sum(
            params, model_cfg, batch["tokens"], batch["targets"], c, chunk_size=chunk_size,
            segment_ids=batch["segment_ids"], positions=batch["positions"], mesh_rules=mesh_rules,
        )  # fmt: skip
        tok_loss, n_tok = masked_token_mean(-logp, mask)
        return -total, {"weight": weight, "token_nll": tok_loss, "sum_loss_tokens": n_tok}

    if fused and chunk_size:
        return fused_loss_fn

    def loss_fn(params, batch, model_cfg: ModelConfig):
        mask = batch["loss_mask"].astype(jnp.float32) * (batch["segment_ids"] != 0)
        logp = batch_logprobs(params, model_cfg, batch, mesh_rules=mesh_rules, chunk_size=chunk_size,
                              needed=(mask > 0) if skip_masked_chunks and chunk_size else None)  # fmt: skip
        nll = -logp
        tok_loss, n_tok = masked_token_mean(nll, mask)
        loss, weight = normalize(nll, mask, batch["segment_ids"])
        return loss, {"weight": weight, "token_nll": tok_loss, "sum_loss_tokens": n_tok}

    return loss_fn
