"""Attention of the Qwen decoder: dense, blockwise (portable JAX) and Pallas TPU splash, behind one function.

`attention(q, k, v, mask, cfg, ...)` takes queries [B, T, H, hd], keys/values in one of the layouts the model
uses (see `KV_LAYOUTS`) and an `AttentionMask`, a description of which keys each query may read (a causal
index per query plus optional segment ids) rather than a [T, S] array, so the blockwise implementations never
build one. `cfg.attention_impl` picks the implementation:

- "dense": fp32 scores and probabilities of shape [B, H, T, S]; the reference numerics (HF parity).
- "blockwise": an online softmax over key blocks (flash attention, in plain JAX: runs on CPU, GPU and TPU).
  Query blocks of `attention_block_q` rows visit key blocks of `attention_block_kv` keys; a running max and
  denominator per row rescale the partial sums, so the working set is one [B, H, bq, bkv] block. The backward
  pass is a custom VJP that recomputes each block's probabilities from the saved log-sum-exp (nothing
  quadratic is saved for the gradient either). Key blocks that causality hides from a whole query block are
  skipped (about half the blocks of a causal sequence).
- "splash": the Pallas TPU splash-attention kernel (causal mask, segment ids); on other backends it runs in
  Pallas interpret mode (slow; for tests). Used for the no-cache path (training, scoring); with a KV cache,
  where each row's queries start at its own offset, splash is not expressible as its static mask and the
  blockwise implementation runs instead.
- "auto" (the default): splash on TPU, dense elsewhere, so CPU/GPU numerics are unchanged.

Single-token decode (T = 1) always uses the dense path: its scores are [B, H, 1, S], linear in the context.
Padding queries (segment 0, or queries that may read no key) get unspecified finite outputs in every
implementation; they are never read by valid tokens and carry no loss.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

#: finite, so a fully masked row gives no NaN (dense); matches the value the model always used.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

ATTENTION_IMPLS = ("auto", "dense", "blockwise", "splash")

#: Key/value layouts: "bskd" [B, S, K, hd] (no cache), "bksd" [B, K, S, hd] (the cache), "bkds" keys
#: [B, K, hd, S] (the sampler's transposed decode keys; values stay "bksd").
KV_LAYOUTS = ("bskd", "bksd", "bkds")


class AttentionMask(NamedTuple):
    """Which keys each query may read, without materializing [T, S].

    Key s is visible to query (b, t) iff s <= q_index[b, t] (causal in key coordinates; the cache path passes
    each row's write positions) and, with `segment_ids` (queries and keys are the same sequence, no cache),
    segment_ids[b, s] == segment_ids[b, t] != 0. `kv_len` (static) is the number of keys S. `dense` is the
    [B, T, S] bool array, filled in only when a dense implementation will run (computed once per forward).
    """

    q_index: jax.Array
    segment_ids: jax.Array | None
    kv_len: int
    dense: jax.Array | None = None

    def to_dense(self) -> jax.Array:
        """The [B, T, S] bool mask these rules describe."""
        s = jnp.arange(self.kv_len, dtype=jnp.int32)
        mask = s[None, None, :] <= self.q_index[:, :, None]
        if self.segment_ids is not None:
            seg = self.segment_ids
            mask = mask & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
        return mask

    def with_dense(self) -> AttentionMask:
        return self._replace(dense=self.to_dense())


def resolve_impl(cfg, num_queries: int, cached: bool) -> str:
    """The implementation that runs for `cfg.attention_impl`, T = num_queries, with or without a KV cache."""
    impl = cfg.attention_impl
    if impl == "auto":
        impl = "splash" if jax.default_backend() == "tpu" else "dense"
    if num_queries == 1:
        return "dense"  # decode: [B, H, 1, S] scores, linear in the context
    if impl == "splash" and cached:
        return "blockwise"  # per-row query offsets are not a static splash mask
    return impl


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    cfg,
    *,
    kv_layout: str = "bskd",
    mesh_rules=None,
) -> jax.Array:
    """q [B, T, H, hd], k/v in `kv_layout` -> [B, T, H, hd] in q's dtype; softmax in fp32."""
    impl = resolve_impl(cfg, q.shape[1], cached=kv_layout != "bskd")
    if impl == "dense":
        dense = mask.dense if mask.dense is not None else mask.to_dense()
        return dense_attention(q, k, v, dense, kv_layout=kv_layout)
    if impl == "blockwise":
        return blockwise_attention(
            q, k, v, mask, block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv, kv_layout=kv_layout
        )
    if impl == "splash":
        return splash_attention(
            q, k, v, mask.segment_ids, block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv,
            mesh_rules=mesh_rules,
        )  # fmt: skip
    raise ValueError(f"attention_impl {impl!r} is not one of {ATTENTION_IMPLS}")


# ----------------------------------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------------------------------


def dense_attention(q, k, v, mask: jax.Array, *, kv_layout: str = "bskd") -> jax.Array:
    """q [B,T,H,hd], k/v in kv_layout, mask [B,T,S] bool -> [B,T,H,hd]. Scores [B,K,G,T,S] in fp32."""
    B, T, H, hd = q.shape
    cache_layout = kv_layout != "bskd"
    keys_transposed = kv_layout == "bkds"
    K = k.shape[1] if cache_layout else k.shape[2]
    kv = "bksd" if cache_layout else "bskd"
    qg = q.reshape(B, T, K, H // K, hd)
    if cache_layout and T == 1:
        # One query per row (decode): the scores as a broadcast-multiply-reduce, which XLA's CPU backend fuses
        # with the read of the cache window; as [G, hd] x [hd, S] dots per (row, head) it would first copy the
        # window out of the cache.
        q1 = qg[:, 0].astype(jnp.float32)  # [B, K, G, hd]
        k32 = k[:, :, None].astype(jnp.float32)
        if keys_transposed:
            scores = jnp.sum(q1[:, :, :, :, None] * k32, axis=3)
        else:
            scores = jnp.sum(q1[:, :, :, None, :] * k32, axis=-1)
        scores = scores[:, :, :, None, :]  # [B, K, G, 1, S]
    else:
        spec = "bkds" if keys_transposed else kv
        scores = jnp.einsum(f"btkgd,{spec}->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(hd))
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    # Output as [b, k, g, t, d] then transposed: XLA's CPU dot has no bf16 x bf16 -> f32 kernel for the
    # directly transposed output order with the cache layout.
    out = jnp.einsum(f"bkgts,{kv}->bkgtd", probs, v, preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd).astype(q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Blockwise (portable JAX)
# ----------------------------------------------------------------------------------------------------------------


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    *,
    block_q: int = 512,
    block_kv: int = 512,
    kv_layout: str = "bskd",
) -> jax.Array:
    """Flash attention in plain JAX: same contract as `dense_attention`, O(T·bkv) working memory.

    Lengths that are not multiples of the blocks are padded (queries with index -1 read nothing, padded keys
    are never visible); blocks never exceed the sequence, so short inputs run as one block.
    """
    B, T, H, hd = q.shape
    # Canonical [B, K, S, hd] keys/values: one linear-size copy, then every block is a contiguous slice.
    if kv_layout == "bskd":
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    elif kv_layout == "bkds":
        k = k.transpose(0, 1, 3, 2)
    elif kv_layout != "bksd":
        raise ValueError(f"kv_layout {kv_layout!r} is not one of {KV_LAYOUTS}")
    K, S = k.shape[1], k.shape[2]
    G = H // K
    bq, bkv = min(block_q, T), min(block_kv, S)
    Tp, Sp = _round_up(T, bq), _round_up(S, bkv)
    nq = Tp // bq

    qg = q.reshape(B, T, K, G, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
    q_index = mask.q_index.astype(jnp.int32)
    seg = mask.segment_ids
    if Tp > T:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, 0), (0, Tp - T), (0, 0)))
        q_index = jnp.pad(q_index, ((0, 0), (0, Tp - T)), constant_values=-1)
    if Sp > S:
        k = jnp.pad(k, ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
    q_seg = kv_seg = None
    if seg is not None:
        seg = seg.astype(jnp.int32)
        q_seg = jnp.pad(seg, ((0, 0), (0, Tp - T)))
        kv_seg = jnp.pad(seg, ((0, 0), (0, Sp - S)))
    # Query blocks on a leading axis: [nq, B, K, G, bq, hd], [nq, B, bq].
    qb = qg.reshape(B, K, G, nq, bq, hd).transpose(3, 0, 1, 2, 4, 5)
    qi = q_index.reshape(B, nq, bq).transpose(1, 0, 2)
    qs = None if q_seg is None else q_seg.reshape(B, nq, bq).transpose(1, 0, 2)
    out = _flash(qb, k, v, qi, qs, kv_seg, S, bkv)  # [nq, B, K, G, bq, hd]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, Tp, H, hd)[:, :T]
    return out


def _block_mask(qi, qs, kv_seg, j, bkv: int, S: int):
    """[B, bq, bkv] visibility of key block j for a query block (indices qi [B, bq], segments qs or None)."""
    kidx = j * bkv + jnp.arange(bkv, dtype=jnp.int32)
    m = (kidx[None, None, :] <= qi[:, :, None]) & (kidx < S)[None, None, :]
    if qs is not None:
        ks = jax.lax.dynamic_slice_in_dim(kv_seg, j * bkv, bkv, axis=1)
        m = m & (qs[:, :, None] == ks[:, None, :]) & (ks != 0)[:, None, :]
    return m


def _scores(qblk, kblk, scale: float):
    """[B, K, G, bq, bkv] fp32 scores; the scale after the dot, as the dense path does."""
    s = jnp.einsum("bkgqd,bksd->bkgqs", qblk, kblk, preferred_element_type=jnp.float32)
    return s * scale


def _live(qmax_i, j, bkv: int):
    """Whether key block j holds any key that causality lets some query of the block read."""
    return j * bkv <= qmax_i


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(qb, k, v, qi, qs, kv_seg, S: int, bkv: int):
    return _flash_fwd(qb, k, v, qi, qs, kv_seg, S, bkv)[0]


def _flash_fwd(qb, k, v, qi, qs, kv_seg, S: int, bkv: int):
    """Forward: per query block, an online softmax over the live key blocks. Saves out and log-sum-exp."""
    # Tie the index/segment arrays to q: inside an outer scan (the layers) JAX's partial evaluation would
    # otherwise treat everything computed from them alone (every block's mask) as loop-invariant and hoist it
    # out of the layer loop, stacked over all (query block, key block) pairs: a [T, T]-sized buffer.
    qb, qi, qs, kv_seg = jax.lax.optimization_barrier((qb, qi, qs, kv_seg))
    nq, B, K, G, bq, hd = qb.shape
    nk = k.shape[2] // bkv
    scale = 1.0 / math.sqrt(hd)
    # The largest query index of each block, reduced once (a replicated [nq] vector: no per-block
    # communication when the batch is sharded) to skip the key blocks causality hides.
    qmax = jnp.max(qi, axis=(1, 2))

    def q_block(xs):
        qblk, qi_i, qs_i, qmax_i = xs

        def kv_step(j, carry):
            def compute(c):
                acc, m, den = c
                kblk = jax.lax.dynamic_slice_in_dim(k, j * bkv, bkv, axis=2)
                vblk = jax.lax.dynamic_slice_in_dim(v, j * bkv, bkv, axis=2)
                vis = _block_mask(qi_i, qs_i, kv_seg, j, bkv, S)[:, None, None]
                s = jnp.where(vis, _scores(qblk, kblk, scale), MASK_VALUE)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                alpha = jnp.exp(m - m_new)  # rescales what was summed under the old max
                p = jnp.where(vis, jnp.exp(s - m_new[..., None]), 0.0)
                den = alpha * den + jnp.sum(p, axis=-1)
                pv = jnp.einsum(
                    "bkgqs,bksd->bkgqd", p.astype(v.dtype), vblk, preferred_element_type=jnp.float32
                )
                return alpha[..., None] * acc + pv, m_new, den

            return jax.lax.cond(_live(qmax_i, j, bkv), compute, lambda c: c, carry)

        acc0 = jnp.zeros((B, K, G, bq, hd), jnp.float32)
        m0 = jnp.full((B, K, G, bq), MASK_VALUE, jnp.float32)
        acc, m, den = jax.lax.fori_loop(0, nk, kv_step, (acc0, m0, jnp.zeros_like(m0)))
        ok = den > 0  # rows that read no key (padding) give 0, not 0/0
        out = jnp.where(ok[..., None], acc / jnp.where(ok, den, 1.0)[..., None], 0.0)
        lse = jnp.where(ok, m + jnp.log(jnp.where(ok, den, 1.0)), 0.0)
        return out.astype(qb.dtype), lse

    out, lse = jax.lax.map(q_block, (qb, qi, qs, qmax))  # qs may be None (an empty pytree)
    return out, (qb, k, v, qi, qs, kv_seg, out, lse)


def _flash_bwd(S: int, bkv: int, res, dout):
    """Backward: per key block, walk the query blocks that can see it; recompute p from the saved lse.

    dq accumulates in a full-size fp32 carry (linear in T); dk/dv per key block sum over its query blocks and
    over the G query heads sharing each KV head."""
    qb, k, v, qi, qs, kv_seg, out, lse = res
    qb, qi, qs, kv_seg, dout = jax.lax.optimization_barrier((qb, qi, qs, kv_seg, dout))  # as in _flash_fwd
    nq, B, K, G, bq, hd = qb.shape
    nk = k.shape[2] // bkv
    scale = 1.0 / math.sqrt(hd)
    qmax = jnp.max(qi, axis=(1, 2))
    # D_i = sum_d dO * O: the softmax Jacobian's row term (ds = p * (dp - D)).
    dsum = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def kv_block(dq, j):
        kblk = jax.lax.dynamic_slice_in_dim(k, j * bkv, bkv, axis=2)
        vblk = jax.lax.dynamic_slice_in_dim(v, j * bkv, bkv, axis=2)

        def q_step(i, carry):
            def compute(c):
                dk, dv, dq = c
                qblk, do, qi_i = qb[i], dout[i], qi[i]
                qs_i = None if qs is None else qs[i]
                vis = _block_mask(qi_i, qs_i, kv_seg, j, bkv, S)[:, None, None]
                p = jnp.where(vis, jnp.exp(_scores(qblk, kblk, scale) - lse[i][..., None]), 0.0)
                f32 = jnp.float32
                dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(do.dtype), do, preferred_element_type=f32)
                dp = jnp.einsum("bkgqd,bksd->bkgqs", do, vblk, preferred_element_type=f32)
                ds = (p * (dp - dsum[i][..., None])) * scale
                dk = dk + jnp.einsum(
                    "bkgqs,bkgqd->bksd", ds.astype(qblk.dtype), qblk, preferred_element_type=f32
                )
                dq_i = jnp.einsum(
                    "bkgqs,bksd->bkgqd", ds.astype(kblk.dtype), kblk, preferred_element_type=f32
                )
                return dk, dv, dq.at[i].add(dq_i)

            return jax.lax.cond(_live(qmax[i], j, bkv), compute, lambda c: c, carry)

        z = jnp.zeros((B, K, bkv, hd), jnp.float32)
        dk, dv, dq = jax.lax.fori_loop(0, nq, q_step, (z, z, dq))
        return dq, (dk, dv)

    dq0 = jnp.zeros(qb.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(kv_block, dq0, jnp.arange(nk))
    # [nk, B, K, bkv, hd] -> [B, K, Sp, hd]
    dk = dk.transpose(1, 2, 0, 3, 4).reshape(k.shape)
    dv = dv.transpose(1, 2, 0, 3, 4).reshape(v.shape)
    return dq.astype(qb.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------------------------------------
# Splash (Pallas TPU kernel)
# ----------------------------------------------------------------------------------------------------------------

#: Splash tiles are multiples of the TPU lane width.
_SPLASH_TILE = 128


def splash_padding(T: int, block_q: int, block_kv: int) -> tuple[int, int, int]:
    """(padded length, block_q, block_kv) for splash: blocks rounded to 128 and capped at the padded length."""
    t128 = _round_up(T, _SPLASH_TILE)
    bq = min(_round_up(block_q, _SPLASH_TILE), t128)
    bkv = min(_round_up(block_kv, _SPLASH_TILE), t128)
    return _round_up(t128, math.lcm(bq, bkv)), bq, bkv


def splash_segments(segment_ids: jax.Array | None, B: int, T: int, Tp: int) -> jax.Array:
    """[B, Tp] segment ids handed to splash: the model's (or 1 for every token), 0 on the padded tail.

    Splash allows key s for query t iff s <= t and seg[s] == seg[t]. For a valid query (segment != 0) that is
    exactly the dense rule (same segment, key not padding). A padding query (segment 0) reads padding keys up
    to itself, so no row is empty (splash's softmax needs one visible key per row); its output is unused."""
    seg = jnp.ones((B, T), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    return jnp.pad(seg, ((0, 0), (0, Tp - T)))


@functools.lru_cache(maxsize=32)
def _splash_kernel(num_heads: int, Tp: int, bq: int, bkv: int, interpret: bool):
    """A causal splash MHA kernel (GQA: fewer KV heads than query heads) for local shapes; built once."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    blocks = sa.BlockSizes(
        block_q=bq, block_kv=bkv, block_kv_compute=bkv,
        block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
        block_q_dq=bq, block_kv_dq=bkv,
    )  # fmt: skip
    mask = sa.MultiHeadMask([sa.CausalMask((Tp, Tp)) for _ in range(num_heads)])
    # Concrete mask tables even when first built inside a trace, so the cached kernel holds no tracer.
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(
            mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
        )


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    block_q: int = 512,
    block_kv: int = 512,
    mesh_rules=None,
    interpret: bool | None = None,
) -> jax.Array:
    """Causal self-attention with the Pallas TPU splash kernel: q [B,T,H,hd], k/v [B,T,K,hd] -> [B,T,H,hd].

    The kernel is per example and per device: vmapped over the batch and, with a mesh, run under shard_map
    over the batch and head axes (a Pallas call is not partitioned automatically). Interpret mode off TPU."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    B, T, H, hd = q.shape
    K = k.shape[2]
    Tp, bq, bkv = splash_padding(T, block_q, block_kv)
    seg = splash_segments(segment_ids, B, T, Tp)
    pad = ((0, 0), (0, 0), (0, Tp - T), (0, 0))
    # Splash does not scale the scores: scale q (one rounding, vs the dense path's scaling of the scores).
    qh = jnp.pad((q * (1.0 / math.sqrt(hd))).astype(q.dtype).transpose(0, 2, 1, 3), pad)  # [B, H, Tp, hd]
    kh = jnp.pad(k.transpose(0, 2, 1, 3), pad)  # [B, K, Tp, hd]
    vh = jnp.pad(v.transpose(0, 2, 1, 3), pad)

    q_spec = kv_spec = b_spec = None
    if mesh_rules is not None and mesh_rules.mesh.size > 1:
        q_spec = mesh_rules.spec(("batch", "act_heads", None, None), qh.shape)
        kv_spec = mesh_rules.spec(("batch", "act_kv_heads", None, None), kh.shape)
        if kv_spec[1] != q_spec[1]:
            # Query heads split where KV heads are not (or differently): give every query head its own KV head
            # so each shard's local heads stay paired (head h reads KV head h // G).
            kh, vh = jnp.repeat(kh, H // K, axis=1), jnp.repeat(vh, H // K, axis=1)
            kv_spec = q_spec
        b_spec = jax.sharding.PartitionSpec(q_spec[0], None)

    def local(qh, kh, vh, seg):
        kernel = _splash_kernel(qh.shape[1], Tp, bq, bkv, interpret)
        return jax.vmap(lambda a, b, c, s: kernel(a, b, c, segment_ids=sa.SegmentIds(q=s, kv=s)))(
            qh, kh, vh, seg
        )

    if q_spec is None:
        out = local(qh, kh, vh, seg)
    else:
        out = jax.shard_map(
            local, mesh=mesh_rules.mesh, in_specs=(q_spec, kv_spec, kv_spec, b_spec), out_specs=q_spec,
            check_vma=False,
        )(qh, kh, vh, seg)  # fmt: skip
    return out[:, :, :T].transpose(0, 2, 1, 3).astype(q.dtype)
