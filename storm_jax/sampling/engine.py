"""The jitted device side of the sampler: decode a chunk of tokens, prefill cache rows, copy cache rows.

Every function takes the KV cache arrays and the host's small per-slot arrays explicitly and returns the new
cache: the host scheduler (storm_jax.sampling.sampler) owns all state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from storm_jax.models.head import vocab_logits_t
from storm_jax.models.qwen import KVCache, ModelConfig, Params, forward
from storm_jax.sampling.distribution import sample_step

# ----------------------------------------------------------------------------------------------------------------
# Device functions
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("cfg", "n_steps", "mesh_rules", "attend_len"), donate_argnums=(1, 2)
)
def decode_chunk(
    params: Params,
    k,
    v,
    slots: dict,
    forced,
    n_forced,
    *,
    cfg: ModelConfig,
    n_steps: int,
    mesh_rules=None,
    attend_len: int | None = None,
):
    """Up to `n_steps` decode steps for every active slot, on device.

    attend_len (static): the caller guarantees lengths + n_steps <= attend_len for every active slot, so the
    whole chunk reads and writes only the first attend_len cache positions. That window is copied out of the
    cache once, decoded on in place, and written back once per chunk: slicing it inside every step would copy
    it out of the cache layer by layer on every token.

    slots: lengths, pending, active (bool), remaining, key [S,2], step, temperature, top_k, top_p, min_p,
    eos [S, MAX_EOS]. A slot stops on an eos id or when `remaining` hits 0. Returns (k, v, tokens [S, n],
    raw_lp [S, n], samp_lp [S, n], n_out [S], hit_eos [S]).
    """
    S = slots["pending"].shape[0]
    f32 = jnp.float32
    out_tok = jnp.zeros((S, n_steps), jnp.int32)
    out_raw = jnp.zeros((S, n_steps), f32)
    out_samp = jnp.zeros((S, n_steps), f32)

    def cond(c):
        i, active = c[0], c[4]
        return (i < n_steps) & jnp.any(active)

    def body(c):
        i, k, v, lengths, active, pending, remaining, step, n_out, hit_eos, ot, orw, osp = c
        cache = KVCache(k, v, lengths, keys_transposed=isinstance(k, tuple))
        hidden, cache = forward(
            params,
            pending[:, None],
            cfg,
            segment_ids=active[:, None].astype(jnp.int32),
            kv_cache=cache,
            mesh_rules=mesh_rules,
            return_hidden=True,
        )
        use_forced = i < n_forced
        tok, raw_lp, samp_lp = sample_step(
            vocab_logits_t(params, hidden[:, 0], cfg),
            slots["key"],
            step,
            slots["temperature"],
            slots["top_k"],
            slots["top_p"],
            slots["min_p"],
            forced[:, jnp.minimum(i, forced.shape[1] - 1)],
            use_forced,
        )
        ot = ot.at[:, i].set(jnp.where(active, tok, 0))
        orw = orw.at[:, i].set(jnp.where(active, raw_lp, 0.0))
        osp = osp.at[:, i].set(jnp.where(active, samp_lp, 0.0))
        is_eos = jnp.any(tok[:, None] == slots["eos"], axis=-1) & active
        remaining = remaining - active
        n_out = n_out + active
        step = step + active
        pending = jnp.where(active, tok, pending)
        hit_eos = hit_eos | is_eos
        active = active & ~is_eos & (remaining > 0)
        return (
            i + 1,
            cache.k,
            cache.v,
            cache.lengths,
            active,
            pending,
            remaining,
            step,
            n_out,
            hit_eos,
            ot,
            orw,
            osp,
        )

    zeros = jnp.zeros((S,), jnp.int32)
    init = (
        jnp.int32(0),
        k,
        v,
        slots["lengths"],
        slots["active"],
        slots["pending"],
        slots["remaining"],
        slots["step"],
        zeros,
        jnp.zeros((S,), bool),
        out_tok,
        out_raw,
        out_samp,
    )
    W = k.shape[3] if attend_len is None else min(attend_len, k.shape[3])
    if isinstance(params["layers"], (list, tuple)):  # per-layer window arrays: no slicing inside the loop
        # Keys as [B, K, hd, W] for the chunk (see KVCache.keys_transposed): transposed once per chunk here and
        # back below, which costs far less than it saves over the chunk's steps.
        init = (
            init[0],
            tuple(k[i, :, :, :W].transpose(0, 1, 3, 2) for i in range(k.shape[0])),
            tuple(v[i, :, :, :W] for i in range(k.shape[0])),
        ) + init[3:]
    elif W < k.shape[3]:
        init = (init[0], k[:, :, :, :W], v[:, :, :, :W]) + init[3:]
    c = jax.lax.while_loop(cond, body, init)
    kw, vw = c[1], c[2]
    if isinstance(kw, tuple):
        kw, vw = jnp.stack([a.transpose(0, 1, 3, 2) for a in kw]), jnp.stack(vw)
    if W < k.shape[3]:
        kw = jax.lax.dynamic_update_slice_in_dim(k, kw, 0, axis=3)
        vw = jax.lax.dynamic_update_slice_in_dim(v, vw, 0, axis=3)
    return kw, vw, c[10], c[11], c[12], c[8], c[9]


@functools.partial(jax.jit, static_argnames=("cfg", "mesh_rules", "attend_len"), donate_argnums=(1, 2))
def prefill_rows(
    params: Params,
    k,
    v,
    slot_idx,
    tokens,
    n_tokens,
    start,
    *,
    cfg: ModelConfig,
    mesh_rules=None,
    attend_len: int | None = None,
):
    """Write tokens [P, T] (right-padded, n_tokens valid) into cache rows `slot_idx` [P] from `start` [P].

    Padding entries of slot_idx point past the last slot: their rows are computed on a clipped copy and the
    writes are dropped. attend_len as in `decode_chunk` (start + T <= attend_len).
    """
    kk = jnp.take(k, slot_idx, axis=1, mode="clip")
    vv = jnp.take(v, slot_idx, axis=1, mode="clip")
    seg = (jnp.arange(tokens.shape[1])[None, :] < n_tokens[:, None]).astype(jnp.int32)
    # return_hidden: the logits of a prefill are never needed (the last token stays pending), and [P, T, V]
    # logits would dominate memory for a 152k vocabulary.
    _, cache = forward(
        params,
        tokens,
        cfg,
        segment_ids=seg,
        kv_cache=KVCache(kk, vv, start),
        mesh_rules=mesh_rules,
        return_hidden=True,
        attend_len=attend_len,
    )
    k = k.at[:, slot_idx].set(cache.k, mode="drop")
    v = v.at[:, slot_idx].set(cache.v, mode="drop")
    return k, v


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _copy_rows(k, v, src, dst):
    """Copy cache rows src[i] -> dst[i] (shared prefill of n samples); dst past the end is dropped."""
    k = k.at[:, dst].set(jnp.take(k, src, axis=1, mode="clip"), mode="drop")
    v = v.at[:, dst].set(jnp.take(v, src, axis=1, mode="clip"), mode="drop")
    return k, v


def compile_counts() -> dict[str, int]:
    """How many executables each jitted sampler function holds (tests keep these bounded)."""
    return {
        "decode_chunk": decode_chunk._cache_size(),
        "prefill_rows": prefill_rows._cache_size(),
        "copy_rows": _copy_rows._cache_size(),
    }
