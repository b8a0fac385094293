"""Pure-functional Qwen2/Qwen2.5 and Qwen3 (dense) decoder.

`forward(params, tokens, cfg, ...) -> (logits, kv_cache)`: the params are a plain dict pytree, the KV cache is
passed in and returned explicitly, nothing is hidden in objects. Layers are stacked on a leading `layers` axis
and run under `lax.scan`, which keeps compile time flat in depth and lets remat wrap one layer body.

The parameter layout (shapes, dtypes, logical axes, initializers) is one table, `param_specs` in
`storm_jax.models.spec`; the KV cache's is `cache_specs` in `storm_jax.models.cache`. Both are re-exported
here. Activations are constrained with logical names through `storm_jax.parallel.constrain`, so the same code
shards over any mesh under any rules preset.

Attention is `storm_jax.models.attention` (re-exported here): dense, blockwise (online softmax, no [T, T]
array) or the Pallas TPU splash kernel, chosen by `ModelConfig.attention_impl`; masks travel as an
`AttentionMask` (causal index + segment ids), built into a [B, T, S] array only for the dense path.

Conventions matching transformers' `Qwen2ForCausalLM` / `Qwen3ForCausalLM`:
- RoPE is the non-interleaved "rotate half" form; YaRN / linear scaling as in `modeling_rope_utils`.
- RMSNorm normalizes in fp32, casts back to the activation dtype, then multiplies by the weight.
- Qwen3 applies RMSNorm over `head_dim` to q and k (QK-norm) before RoPE; Qwen2 has q/k/v biases instead.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from storm_jax.models.attention import (  # noqa: F401 - re-exported: callers import attention from here
    ATTENTION_IMPLS,
    AttentionMask,
    attention,
    blockwise_attention,
    dense_attention,
    resolve_impl,
    splash_attention,
)
from storm_jax.models.attention import MASK_VALUE as _MASK_VALUE  # noqa: F401 - the old private name
from storm_jax.models.cache import (  # noqa: F401 - re-exported: callers import the cache API from here
    CACHE_LENGTHS_LOGICAL_AXES,
    CACHE_LOGICAL_AXES,
    KVCache,
    abstract_cache,
    cache_logical_axes,
    cache_shape,
    cache_shardings,
    cache_specs,
    init_cache,
)
from storm_jax.models.head import logits_from_hidden
from storm_jax.models.spec import (  # noqa: F401 - re-exported: callers import the params API from here
    ArraySpec,
    Params,
    abstract_params,
    init_params,
    param_logical_axes,
    param_shapes,
    param_shardings,
    param_specs,
)
from storm_jax.models.spec import num_params as _num_params
from storm_jax.parallel.mesh import MeshRules, constrain

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture + numerics of a Qwen2/Qwen3 dense model. Frozen and hashable (a static jit argument)."""

    model_type: str = "qwen3"  # "qwen3" (QK-norm, no bias) or "qwen2" (QKV bias, no QK-norm)
    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_layers: int = 28
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    # RoPE scaling: "default", "linear" or "yarn" (Qwen3 long-context configs use yarn).
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_original_max_position: int = 0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_attention_factor: float | None = None
    rope_truncate: bool = True
    max_position_embeddings: int = 40960
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    dtype: str = "float32"  # compute dtype of matmuls; norms, softmax and logits stay fp32
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots | dots_no_batch
    # Attention implementation (storm_jax/models/attention.py): "auto" (splash on TPU, dense elsewhere),
    # "dense" ([T, S] scores; the reference), "blockwise" (online softmax over key blocks, portable JAX) or
    # "splash" (Pallas TPU kernel). Block sizes are the query / key tiles of blockwise and splash.
    attention_impl: str = "auto"
    attention_block_q: int = 512
    attention_block_kv: int = 512

    def __post_init__(self):
        if self.model_type not in ("qwen2", "qwen3"):
            raise ValueError(f"model_type {self.model_type!r} is not supported (expected 'qwen2' or 'qwen3')")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.rope_type not in ("default", "linear", "yarn"):
            raise ValueError(f"rope_type {self.rope_type!r} is not supported (default, linear, yarn)")
        if self.dtype not in _DTYPES or self.param_dtype not in _DTYPES:
            raise ValueError(f"dtype/param_dtype must be one of {sorted(_DTYPES)}")
        if self.remat not in _REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} is not one of {sorted(_REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if self.attention_block_q < 1 or self.attention_block_kv < 1:
            raise ValueError("attention_block_q and attention_block_kv must be positive")

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count from the config alone (no arrays)."""
        return _num_params(self)

    def flops_per_token(self, seq_len: int) -> float:
        """Training (forward + backward) FLOPs per token: 6 x matmul params + causal attention scores.

        Matmul params exclude the embedding lookup but include the vocabulary projection (tied or not).
        """
        n = self.num_params()
        if not self.tie_word_embeddings:
            n -= self.vocab_size * self.hidden_size  # the untied input embedding is a gather, not a matmul
        attn = 6.0 * self.num_layers * self.num_heads * self.head_dim * seq_len  # QK^T + PV, causal half, x3
        return 6.0 * n + attn


_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


# ----------------------------------------------------------------------------------------------------------------
# Parameter layout
# ----------------------------------------------------------------------------------------------------------------


def unstack_layers(params: Params) -> Params:
    """The same params with `layers` as a tuple of per-layer dicts instead of stacked arrays.

    `forward` then runs the layers in a Python loop instead of `lax.scan`. Decoding wants this on CPU: inside a
    scan XLA copies each layer's weights out of the stacked arrays before its matmuls (~40 % of a decode step
    of the 100M model at batch 32), while separate arrays feed the matmuls directly. Costs one copy of the layer
    weights and longer compiles; training keeps the stacked form.
    """
    layers = params["layers"]
    if isinstance(layers, (list, tuple)):
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": tuple(jax.tree.map(lambda a, i=i: a[i], layers) for i in range(n))}


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in fp32, result cast back to x's dtype before the weight (as transformers does)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim/2] and the cos/sin scale, for the configured RoPE scaling."""
    dim = cfg.head_dim
    pos_freqs = cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    inv = (1.0 / pos_freqs).astype(np.float32)
    if cfg.rope_type == "default":
        return inv, 1.0
    if cfg.rope_type == "linear":
        return (inv / cfg.rope_factor).astype(np.float32), 1.0
    # YaRN: blend interpolated and extrapolated frequencies across a ramp of dimensions.
    factor = cfg.rope_factor
    orig = cfg.rope_original_max_position or cfg.max_position_embeddings
    attn_factor = cfg.rope_attention_factor
    if attn_factor is None:
        attn_factor = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0

    def corr_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(cfg.rope_theta))

    low, high = corr_dim(cfg.rope_beta_fast), corr_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrap = 1.0 - ramp
    inv_interp = (1.0 / (factor * pos_freqs)).astype(np.float32)
    inv_y = inv_interp * (1 - extrap) + inv * extrap
    return inv_y.astype(np.float32), float(attn_factor)


def rope_cos_sin(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, head_dim] in fp32 for integer positions [B, T]."""
    inv, scale = rope_inv_freq(cfg)
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, N, hd]; rotate-half RoPE computed in fp32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def _attention(q, k, v, mask, cfg: ModelConfig, cache_layout: bool = False, keys_transposed: bool = False):
    """Dense attention with a [B, T, S] bool mask (kept for callers of the old name; see models.attention)."""
    layout = ("bkds" if keys_transposed else "bksd") if cache_layout else "bskd"
    return dense_attention(q, k, v, mask, kv_layout=layout)


def _layer(x, lp, cos, sin, mask, cache_kv, write_pos, cfg: ModelConfig, mesh_rules):
    """One decoder layer. cache_kv is None (no cache) or (k_cache, v_cache) [B,S,K,hd] for this layer."""
    dt = cfg.compute_dtype
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dhk->bthk", h, lp["q"].astype(dt))
    k = jnp.einsum("btd,dhk->bthk", h, lp["k"].astype(dt))
    v = jnp.einsum("btd,dhk->bthk", h, lp["v"].astype(dt))
    if cfg.qkv_bias:
        q = q + lp["q_bias"].astype(dt)
        k = k + lp["k_bias"].astype(dt)
        v = v + lp["v_bias"].astype(dt)
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    q = constrain(apply_rope(q, cos, sin), ("batch", "length", "act_heads", None), mesh_rules)
    k = constrain(apply_rope(k, cos, sin), ("batch", "length", "act_kv_heads", None), mesh_rules)
    v = constrain(v, ("batch", "length", "act_kv_heads", None), mesh_rules)

    if cache_kv is None:
        keys, values, new_cache, keys_t = k, v, None, False
    else:
        # cache_kv = (k, v, layer, keys_t): with `layer` an index, k/v are the whole stacked cache [L, B, K, S, hd]
        # (the scan carry) and this layer's entries are written in place (carrying the cache as scan xs/ys instead
        # would copy every layer's cache on every decode step); with `layer` None, k/v are this layer's own
        # [B, K, S, hd] ([B, K, hd, S] keys with keys_t, see KVCache.keys_transposed).
        kc, vc, layer, keys_t = cache_kv
        B, T = write_pos.shape
        b_idx = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
        # Advanced indices around slices: the update is indexed [B, T, K, hd], i.e. k as it is.
        # mode="drop": a write past the end of the cache is discarded instead of clobbering valid entries.
        idx = (b_idx,) if layer is None else (jnp.broadcast_to(jnp.asarray(layer, jnp.int32), (B, T)), b_idx)
        k_idx = (*idx, slice(None), slice(None), write_pos) if keys_t else (*idx, slice(None), write_pos)
        kc = kc.at[k_idx].set(k.astype(kc.dtype), mode="drop")
        vc = vc.at[(*idx, slice(None), write_pos)].set(v.astype(vc.dtype), mode="drop")
        keys, values = kc, vc
        if layer is not None:
            keys = jax.lax.dynamic_index_in_dim(kc, layer, 0, keepdims=False)
            values = jax.lax.dynamic_index_in_dim(vc, layer, 0, keepdims=False)
        W = mask.kv_len  # attend to the first W positions only (the caller's static bound, <= max_len)
        if W < values.shape[2]:
            keys = keys[..., :W] if keys_t else keys[:, :, :W]
            values = values[:, :, :W]
        keys, values, new_cache = keys.astype(dt), values.astype(dt), (kc, vc)

    layout = "bskd" if cache_kv is None else ("bkds" if keys_t else "bksd")
    attn = attention(q, keys, values, mask, cfg, kv_layout=layout, mesh_rules=mesh_rules)
    x = x + jnp.einsum("bthk,hkd->btd", attn, lp["o"].astype(dt))
    x = constrain(x, ("batch", "length", "act_embed"), mesh_rules)

    h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", h, lp["gate"].astype(dt))
    up = jnp.einsum("btd,df->btf", h, lp["up"].astype(dt))
    act = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"), mesh_rules)
    x = x + jnp.einsum("btf,fd->btd", act, lp["down"].astype(dt))
    x = constrain(x, ("batch", "length", "act_embed"), mesh_rules)
    return x, new_cache


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


def forward(
    params: Params,
    tokens: jax.Array,
    cfg: ModelConfig,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    kv_cache: KVCache | None = None,
    mesh_rules: MeshRules | None = None,
    return_hidden: bool = False,
    attend_len: int | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Logits [B, T, V] (fp32) for tokens [B, T], and the updated KV cache (None if none was given).

    Without a cache: `segment_ids` [B, T] (0 = padding) restricts attention to the same document, which covers
    packed sequences; `attention_mask` [B, T] (1 = token) is the padding-only special case, and left padding
    gets positions from the mask's running count unless `positions` is given.

    With a cache: the T new tokens are appended at each row's `lengths[b]` (rows may differ: continuous
    batching). New tokens must be right-padded; `segment_ids`/`attention_mask` mark which are valid, and
    only those advance `lengths`. Positions default to the cache index.

    `attend_len` (static) limits attention to the first cache positions: the caller promises that every row's
    lengths + T <= attend_len, and attention reads (and compiles for) that many positions instead of max_len.

    With `return_hidden`, returns the final-normed hidden states [B, T, D] instead of logits (so losses can
    chunk the vocabulary projection).

    `params["layers"]` may be stacked arrays (run under `lax.scan`) or a tuple of per-layer dicts (a Python
    loop, see `unstack_layers`); both give the same result.
    """
    B, T = tokens.shape
    if attention_mask is not None and segment_ids is not None:
        raise ValueError("pass either segment_ids or attention_mask, not both")
    if attention_mask is not None:
        segment_ids = attention_mask.astype(jnp.int32)

    if kv_cache is None:
        if positions is None:
            if segment_ids is None:
                positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
            else:
                positions = jnp.maximum(jnp.cumsum(segment_ids != 0, axis=1) - 1, 0).astype(jnp.int32)
        # Causal over the row's own tokens, within a segment, never a padding key (see AttentionMask).
        q_index = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        mask = AttentionMask(q_index, segment_ids, T)
        write_pos = None
    else:
        start = kv_cache.lengths.astype(jnp.int32)
        write_pos = start[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
        if positions is None:
            positions = write_pos
        S = kv_cache.max_len if attend_len is None else min(attend_len, kv_cache.max_len)
        mask = AttentionMask(write_pos, None, S)  # key s visible iff s <= the query's write position
    if resolve_impl(cfg, T, cached=kv_cache is not None) == "dense":
        mask = mask.with_dense()  # [B, T, S] once per forward, not once per layer

    cos, sin = rope_cos_sin(positions, cfg)
    x = params["embed"][tokens].astype(cfg.compute_dtype)
    x = constrain(x, ("batch", "length", "act_embed"), mesh_rules)

    layers = params["layers"]
    unstacked = isinstance(layers, (list, tuple))
    if kv_cache is None:

        def body(y, lp):
            return _layer(y, lp, cos, sin, mask, None, None, cfg, mesh_rules)[0], None

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
        if unstacked:
            for lp in layers:
                x, _ = body(x, lp)
        else:
            x, _ = jax.lax.scan(body, x, layers)
        new_cache = None
    else:

        def cached_body(carry, xs):
            y, ks, vs = carry
            lp, layer = xs
            y, (ks, vs) = _layer(y, lp, cos, sin, mask, (ks, vs, layer, False), write_pos, cfg, mesh_rules)
            return (y, ks, vs), None

        keys_t = kv_cache.keys_transposed
        if isinstance(kv_cache.k, (list, tuple)):  # one array per layer (see KVCache)
            if not unstacked:
                raise ValueError("a per-layer KV cache needs per-layer params (unstack_layers)")
            ks, vs = list(kv_cache.k), list(kv_cache.v)
            for i, lp in enumerate(layers):
                x, (ks[i], vs[i]) = _layer(
                    x, lp, cos, sin, mask, (ks[i], vs[i], None, keys_t), write_pos, cfg, mesh_rules
                )
            ks, vs = tuple(ks), tuple(vs)
        else:
            if keys_t:
                raise ValueError("keys_transposed is for per-layer KV caches (tuples of arrays) only")
            carry = (x, kv_cache.k, kv_cache.v)
            if unstacked:
                for i, lp in enumerate(layers):
                    carry, _ = cached_body(carry, (lp, i))
            else:
                layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
                carry, _ = jax.lax.scan(cached_body, carry, (layers, layer_ids))
            x, ks, vs = carry
        n_valid = T if segment_ids is None else jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32)
        new_cache = KVCache(ks, vs, kv_cache.lengths + n_valid, keys_t)

    x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    if return_hidden:
        return x, new_cache
    return logits_from_hidden(params, x, cfg, mesh_rules), new_cache
