"""The vocabulary projection and the decode layout of the weights, in one place.

`logits_from_hidden` is the training / teacher-forcing form ([..., D] -> [..., V]); `vocab_logits_t` the
decode form ([B, D] -> [V, B], vocabulary first, XLA's fastest CPU layout); `decode_layout` the weights as the
sampler decodes with them (per-layer arrays and, for an untied head, a [V, D] copy of the projection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from storm_jax.parallel.mesh import MeshRules, constrain

if TYPE_CHECKING:
    from storm_jax.models.qwen import ModelConfig

Params = dict[str, Any]


def logits_from_hidden(params: Params, h: jax.Array, cfg: ModelConfig, mesh_rules: MeshRules | None = None):
    """Project final hidden states [..., D] to fp32 logits [..., V]."""
    dt = cfg.compute_dtype
    if cfg.tie_word_embeddings:
        logits = jnp.einsum(
            "...d,vd->...v", h, params["embed"].astype(dt), preferred_element_type=jnp.float32
        )
    else:
        logits = jnp.einsum(
            "...d,dv->...v", h, params["lm_head"].astype(dt), preferred_element_type=jnp.float32
        )
    if logits.ndim == 3:
        logits = constrain(logits, ("batch", "length", "act_vocab"), mesh_rules)
    return logits


def vocab_logits_t(params: Params, h: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits [V, B] of final hidden states h [B, D] (vocabulary first: XLA's fastest CPU layout)."""
    dt = cfg.compute_dtype
    # An untied head is used through the Sampler's [V, D] copy when there is one: contracting the inner axis is
    # ~2.5x faster than the [D, V] checkpoint layout.
    if cfg.tie_word_embeddings:
        w = params["embed"]
    elif "lm_head_vd" in params:
        w = params["lm_head_vd"]
    else:
        return jnp.einsum("bd,dv->bv", h, params["lm_head"].astype(dt), preferred_element_type=jnp.float32).T
    # One form on every backend. An fp32 multiply-reduce (bit-identical on CPU) was once chosen on CPU for B > 1
    # after one AMD host measured it ~7 % faster; measured again it loses at B 8 on an Intel Xeon (0.94x) and at
    # B 8 / 32 on another AMD EPYC (0.88x / 0.90x): no rule picks it on both, so the einsum stays.
    return jnp.einsum("vd,bd->vb", w.astype(dt), h, preferred_element_type=jnp.float32)


def decode_layout(params: Params, *, unstack: bool = True) -> Params:
    """Weights as the sampler decodes with them: per-layer arrays (XLA copies a layer's weights out of a stacked
    array inside a loop before using them) and, for an untied head, a [V, D] copy of the projection."""
    from storm_jax.models.qwen import unstack_layers

    if not unstack:
        return params
    params = unstack_layers(params)
    if "lm_head" in params:
        params = {**params, "lm_head_vd": jnp.transpose(params["lm_head"])}
    return params
