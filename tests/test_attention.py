"""Blockwise and splash attention against dense attention (storm_jax/models/attention.py).

Tolerance (fp32, both sides the same mathematical function, two evaluation orders). For one output row
out_t = sum_s p_ts v_s with sum_s p_ts = 1, a relative error e_s in each p_ts moves out_t by at most
2 max|e| max|v|, and reordering the sums over keys costs the usual n·u per program. Per program:
  - scores: a dot over head_dim, error <= hd·u·A with A = max_ts sum_d |q_td k_sd| / sqrt(hd); through exp it
    becomes a relative error of p (the absolute score error is the relative error of exp(s));
  - subtracting the row max (a different max per block in the online softmax): <= 2A·u, plus 1 for exp;
  - softmax denominator and probs x values over T keys: 2T;
  - online-softmax rescaling: 3 roundings per key block, plus the final division (tests/tolerances.py,
    rescale_depth).
So depth = 2(hd + 2)A + 2 + 2T + 3·n_kv_blocks + 1 in `reorder_atol(v, depth)` (= 2·depth·u·max|v|). Gradients
add the backward's reductions (dp over head_dim, the row term D over head_dim, dq over T keys, dk/dv over T
queries times G heads) and are compared on the scale of the gradient terms (max|dO|·max|v|-sized products),
see `_grad_atol`.
Padding queries (segment 0) have unspecified outputs and are excluded (their cotangent is 0, as under a
loss mask).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import U32, reorder_atol

from storm_jax.models.attention import (
    AttentionMask,
    blockwise_attention,
    dense_attention,
    splash_attention,
    splash_padding,
    splash_segments,
)
from storm_jax.models.qwen import ModelConfig, forward, init_cache, init_params


def _qkv(B, T, H, K, hd, seed=0, S=None):
    r = np.random.RandomState(seed)
    S = T if S is None else S
    q = jnp.asarray(r.randn(B, T, H, hd), jnp.float32)
    k = jnp.asarray(r.randn(B, S, K, hd), jnp.float32)
    v = jnp.asarray(r.randn(B, S, K, hd), jnp.float32)
    return q, k, v


def _segments(kind: str, B: int, T: int) -> np.ndarray | None:
    if kind == "causal":
        return None
    seg = np.ones((B, T), np.int32)
    if kind == "packed":  # documents of uneven lengths, some crossing block boundaries, a padded tail
        for b in range(B):
            cuts = sorted(np.random.RandomState(b).choice(np.arange(1, T - 3), 3, replace=False))
            for i, c in enumerate(cuts):
                seg[b, c:] = i + 2
            seg[b, T - 3 :] = 0
    elif kind == "left_pad":
        for b in range(B):
            seg[b, : 3 + 7 * b] = 0
    elif kind == "right_pad":
        for b in range(B):
            seg[b, T - (2 + 9 * b) :] = 0
    return seg


def _score_mag(q, k, G: int) -> float:
    """A = max over (row, query, key) of sum_d |q k| / sqrt(hd), with query head h reading KV head h // G."""
    hd = q.shape[-1]
    kk = np.repeat(np.abs(np.asarray(k)), G, axis=2)
    return float(np.einsum("bthd,bshd->bhts", np.abs(np.asarray(q)), kk).max()) / math.sqrt(hd)


def _depth(hd: int, T: int, n_blocks: int, A: float) -> int:
    return int(math.ceil(2 * (hd + 2) * A + 2 + 2 * T + 3 * n_blocks + 1))


def _grad_atol(q, k, v, dout, depth_fwd: int, T: int, G: int) -> float:
    """Backward terms are products of p (<= 1) with dO, v, q, k: bound on the scale of those products."""
    hd = q.shape[-1]
    scale = float(np.max(np.abs(np.asarray(dout)))) * max(
        float(np.max(np.abs(np.asarray(x)))) for x in (q, k, v)
    )
    scale *= max(1.0, float(np.max(np.abs(np.asarray(q))))) * max(1.0, float(np.max(np.abs(np.asarray(k)))))
    depth = depth_fwd + 2 * hd + 2 * T * G
    return 2.0 * depth * U32 * scale


def _mask(B, T, seg):
    return AttentionMask(jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)),
                         None if seg is None else jnp.asarray(seg), T)  # fmt: skip


CASES = [
    # (kind, B, T, H, K, hd, block_q, block_kv): T never a multiple of the blocks except the last row
    ("causal", 2, 37, 4, 4, 16, 8, 16),  # GQA ratio 1
    ("causal", 2, 45, 4, 2, 16, 16, 8),  # ratio 2, bq > bkv
    ("causal", 1, 53, 8, 2, 8, 8, 8),  # ratio 4
    ("packed", 2, 61, 4, 2, 16, 8, 16),
    ("packed", 2, 40, 8, 2, 8, 16, 16),
    ("left_pad", 2, 37, 4, 2, 16, 8, 8),
    ("right_pad", 2, 37, 4, 1, 16, 16, 8),
    ("right_pad", 2, 32, 4, 4, 16, 64, 64),  # one block (blocks larger than the sequence)
]


@pytest.mark.parametrize(
    "kind,B,T,H,K,hd,bq,bkv", CASES, ids=[f"{c[0]}-T{c[2]}-G{c[3] // c[4]}-{c[6]}x{c[7]}" for c in CASES]
)
def test_blockwise_equals_dense_forward_and_grads(kind, B, T, H, K, hd, bq, bkv):
    q, k, v = _qkv(B, T, H, K, hd, seed=T)
    seg = _segments(kind, B, T)
    m = _mask(B, T, seg)
    valid = np.ones((B, T), bool) if seg is None else seg != 0
    dense = jax.jit(lambda q, k, v: dense_attention(q, k, v, m.to_dense()))
    block = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, m, block_q=bq, block_kv=bkv))
    ref, got = np.asarray(dense(q, k, v)), np.asarray(block(q, k, v))
    depth = _depth(hd, T, -(-T // bkv), _score_mag(q, k, H // K))
    atol = reorder_atol(v, depth)
    np.testing.assert_allclose(got[valid], ref[valid], atol=atol, rtol=0)
    assert np.isfinite(got).all()  # padding rows: unspecified but finite

    dout = (
        jnp.asarray(np.random.RandomState(1).randn(*q.shape), jnp.float32)
        * jnp.asarray(valid)[:, :, None, None]
    )
    g_ref = jax.grad(lambda *a: jnp.sum(dense(*a) * dout), argnums=(0, 1, 2))(q, k, v)
    g_got = jax.grad(lambda *a: jnp.sum(block(*a) * dout), argnums=(0, 1, 2))(q, k, v)
    g_atol = _grad_atol(q, k, v, dout, depth, T, H // K)
    for name, a, b in zip("qkv", g_got, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=g_atol, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("layout", ["bksd", "bkds"])
def test_blockwise_cache_layouts_with_row_offsets(layout):
    """Prefill into a cache: rows start at different lengths, the window S exceeds start + T, keys in the
    cache layout [B, K, S, hd] or transposed [B, K, hd, S]."""
    B, T, H, K, hd, S = 3, 19, 4, 2, 16, 48
    q, k, v = _qkv(B, T, H, K, hd, seed=5, S=S)
    start = jnp.asarray([0, 7, 29], jnp.int32)
    m = AttentionMask(start[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :], None, S)
    kc, vc = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    kl = kc.transpose(0, 1, 3, 2) if layout == "bkds" else kc
    ref = np.asarray(dense_attention(q, kl, vc, m.to_dense(), kv_layout=layout))
    got = np.asarray(blockwise_attention(q, kl, vc, m, block_q=8, block_kv=16, kv_layout=layout))
    atol = reorder_atol(v, _depth(hd, S, -(-S // 16), _score_mag(q, k, H // K)))
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------ splash


def test_splash_mask_construction_matches_dense_mask():
    """What splash is told (causal mask over the padded length, segment ids from `splash_segments`) allows
    exactly the dense mask's keys for every valid query, and leaves no row of the padded problem empty."""
    B, T = 3, 45
    for kind in ("causal", "packed", "left_pad", "right_pad"):
        seg = _segments(kind, B, T)
        Tp, bq, bkv = splash_padding(T, 512, 512)
        assert Tp % bq == 0 and Tp % bkv == 0 and Tp >= T and bq % 128 == 0
        s = np.asarray(splash_segments(None if seg is None else jnp.asarray(seg), B, T, Tp))
        idx = np.arange(Tp)
        allowed = (idx[None, :, None] >= idx[None, None, :]) & (s[:, :, None] == s[:, None, :])
        dense = np.asarray(_mask(B, T, seg).to_dense())
        valid = np.ones((B, T), bool) if seg is None else seg != 0
        np.testing.assert_array_equal(allowed[:, :T, :T][valid], dense[valid])
        assert not allowed[:, :T, T:][valid].any()  # valid queries never see the padded tail
        assert allowed.any(axis=-1).all()  # no empty softmax row


@pytest.mark.parametrize("kind,K", [("causal", 2), ("packed", 4), ("left_pad", 1), ("right_pad", 2)])
def test_splash_interpret_equals_dense(kind, K):
    """The Pallas splash kernel in interpret mode (CPU) against dense attention, forward and gradients.

    Splash scales q before the dot (one more rounding per score: +1 in the score term) and tiles 128."""
    B, T, H, hd = 2, 150, 4, 16
    q, k, v = _qkv(B, T, H, K, hd, seed=11)
    seg = _segments(kind, B, T)
    m = _mask(B, T, seg)
    valid = np.ones((B, T), bool) if seg is None else seg != 0
    sj = None if seg is None else jnp.asarray(seg)
    dense = jax.jit(lambda q, k, v: dense_attention(q, k, v, m.to_dense()))
    splash = jax.jit(lambda q, k, v: splash_attention(q, k, v, sj, block_q=128, block_kv=128, interpret=True))
    ref, got = np.asarray(dense(q, k, v)), np.asarray(splash(q, k, v))
    Tp = splash_padding(T, 128, 128)[0]
    depth = _depth(hd + 1, Tp, Tp // 128, _score_mag(q, k, H // K))
    np.testing.assert_allclose(got[valid], ref[valid], atol=reorder_atol(v, depth), rtol=0)
    dout = (
        jnp.asarray(np.random.RandomState(2).randn(*q.shape), jnp.float32)
        * jnp.asarray(valid)[:, :, None, None]
    )
    g_ref = jax.grad(lambda *a: jnp.sum(dense(*a) * dout), argnums=(0, 1, 2))(q, k, v)
    g_got = jax.grad(lambda *a: jnp.sum(splash(*a) * dout), argnums=(0, 1, 2))(q, k, v)
    g_atol = _grad_atol(q, k, v, dout, depth, Tp, H // K)
    for name, a, b in zip("qkv", g_got, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=g_atol, rtol=0, err_msg=f"d{name}")


# ------------------------------------------------------------------------------------------------ the model

_TINY = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, max_position_embeddings=256)  # fmt: skip


def _model_depth(cfg, T):
    from tolerances import logits_depth

    return logits_depth(cfg, T)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_model_blockwise_logits_and_param_grads_equal_dense(remat):
    """forward() with attention_impl="blockwise" (packed rows, odd length) equals "dense": logits and the
    gradient of a masked loss w.r.t. every parameter, under each remat policy."""
    dense_cfg = _TINY.replace(attention_impl="dense", remat=remat)
    block_cfg = dense_cfg.replace(attention_impl="blockwise", attention_block_q=8, attention_block_kv=8)
    params = init_params(dense_cfg, jax.random.PRNGKey(0))
    B, T = 2, 29
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 97, (B, T)))
    seg = _segments("packed", B, T)
    pos = np.zeros_like(seg)
    for b in range(B):
        for t in range(1, T):
            pos[b, t] = pos[b, t - 1] + 1 if seg[b, t] == seg[b, t - 1] else 0
    w = jnp.asarray(seg != 0, jnp.float32)

    def loss(p, cfg):
        logits, _ = forward(p, tokens, cfg, segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos))
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * w), logits

    (l_d, lg_d), g_d = jax.jit(jax.value_and_grad(lambda p: loss(p, dense_cfg), has_aux=True))(params)
    (l_b, lg_b), g_b = jax.jit(jax.value_and_grad(lambda p: loss(p, block_cfg), has_aux=True))(params)
    valid = seg != 0
    atol = reorder_atol(lg_d, _model_depth(block_cfg, T))
    np.testing.assert_allclose(np.asarray(lg_b)[valid], np.asarray(lg_d)[valid], atol=atol, rtol=0)
    # parameter gradients: the same backward under two attention programs; the loss sums B*T rows, so the
    # depth adds B*T to the logits' depth (the sum over rows in every weight gradient)
    depth = _model_depth(block_cfg, T) + B * T
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_b)[0], jax.tree.leaves(g_d)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=reorder_atol(b, depth), rtol=0,
                                   err_msg=jax.tree_util.keystr(path))  # fmt: skip


def test_model_blockwise_prefill_into_cache_equals_dense():
    """Prefill of right-padded prompts into a cache at different row lengths (the sampler's prefill_rows
    contract) with blockwise attention writes the same cache and gives the same logits as dense."""
    dense_cfg = _TINY.replace(attention_impl="dense")
    block_cfg = dense_cfg.replace(attention_impl="blockwise", attention_block_q=4, attention_block_kv=8)
    params = init_params(dense_cfg, jax.random.PRNGKey(1))
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 97, (2, 21)))
    out = {}
    for name, cfg in (("dense", dense_cfg), ("block", block_cfg)):
        cache = init_cache(cfg, 2, 64)
        _, cache = forward(params, tokens[:, :5], cfg, kv_cache=cache)  # rows at length 5 ...
        seg = jnp.asarray([[1] * 16, [1] * 11 + [0] * 5], jnp.int32)  # ... then 16 and 11 new tokens
        logits, cache = forward(params, tokens[:, 5:], cfg, kv_cache=cache, segment_ids=seg, attend_len=40)
        out[name] = (np.asarray(logits), cache)
    atol = reorder_atol(out["dense"][0], _model_depth(block_cfg, 40))
    np.testing.assert_allclose(out["block"][0][0], out["dense"][0][0], atol=atol, rtol=0)
    np.testing.assert_allclose(out["block"][0][1, :11], out["dense"][0][1, :11], atol=atol, rtol=0)
    assert np.asarray(out["block"][1].lengths).tolist() == [21, 16]
    k_ref = np.asarray(out["dense"][1].k)
    np.testing.assert_allclose(np.asarray(out["block"][1].k), k_ref, atol=reorder_atol(k_ref, _model_depth(block_cfg, 40)), rtol=0)  # fmt: skip


# ------------------------------------------------------------------------------------------------ memory

_T_LONG = 4096


def _has_square(hlo: str, T: int) -> bool:
    """Whether any array shape in the HLO text has two dimensions of size >= T (a [T, T]-sized buffer)."""
    for dims in re.findall(r"\[([0-9,]+)\]", hlo):
        big = [int(d) for d in dims.split(",") if d and int(d) >= T]
        if len(big) >= 2:
            return True
    return False


def test_no_txt_buffer_at_4096_attention_fwd_bwd():
    """Compiled forward + backward of attention at T=4096: dense's temp memory holds [H, T, T] fp32 arrays
    and its HLO has [.., 4096, 4096] shapes; blockwise has neither, and its temp is below one [T, T] fp32."""
    B, T, H, K, hd = 1, _T_LONG, 2, 1, 16
    q = jax.ShapeDtypeStruct((B, T, H, hd), jnp.float32)
    kv = jax.ShapeDtypeStruct((B, T, K, hd), jnp.float32)
    m = _mask(B, T, None)

    def loss(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))

    dense = loss(lambda q, k, v: dense_attention(q, k, v, m.to_dense())).lower(q, kv, kv).compile()
    block = (
        loss(lambda q, k, v: blockwise_attention(q, k, v, m, block_q=512, block_kv=512))
        .lower(q, kv, kv)
        .compile()
    )
    tt = T * T * 4
    d_temp = dense.memory_analysis().temp_size_in_bytes
    b_temp = block.memory_analysis().temp_size_in_bytes
    assert d_temp >= H * tt, d_temp  # dense really holds the [H, T, T] scores
    assert b_temp < tt // 4, b_temp  # blockwise: not even a quarter of one [T, T] fp32 array
    assert _has_square(dense.as_text(), T)
    assert not _has_square(block.as_text(), T)


def test_no_txt_buffer_at_4096_model_prefill():
    """Model-level: the training forward + backward and the cached prefill of a 4096-token prompt with
    attention_impl="blockwise" compile without any [T, T]-sized array."""
    cfg = _TINY.replace(attention_impl="blockwise", max_position_embeddings=2 * _T_LONG)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    tokens = jax.ShapeDtypeStruct((1, _T_LONG), jnp.int32)
    train = jax.jit(jax.grad(lambda p, t: jnp.sum(forward(p, t, cfg)[0][..., 0])))
    c = train.lower(params, tokens).compile()
    assert not _has_square(c.as_text(), _T_LONG)
    assert c.memory_analysis().temp_size_in_bytes < _T_LONG * _T_LONG * 4
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, _T_LONG + 64))
    prefill = jax.jit(lambda p, t, c: forward(p, t, cfg, kv_cache=c, return_hidden=True)[1])
    c = prefill.lower(params, tokens, cache).compile()
    assert not _has_square(c.as_text(), _T_LONG)
    assert c.memory_analysis().temp_size_in_bytes < _T_LONG * _T_LONG * 4


# ------------------------------------------------------------------------------------------------ sharded

_SHARDED_SCRIPT = r"""
import json, numpy as np, jax, jax.numpy as jnp
from storm_jax.models.attention import AttentionMask, dense_attention, splash_attention
from storm_jax.models.qwen import ModelConfig, forward, init_params
from storm_jax.parallel import MeshRules, make_mesh
mr = MeshRules(make_mesh(2, 2, 2))
r = np.random.RandomState(0)
B, T, H, hd = 4, 130, 4, 16
seg = jnp.asarray(np.repeat([[1] * 70 + [2] * 60], B, 0), jnp.int32)
m = AttentionMask(jnp.broadcast_to(jnp.arange(T), (B, T)), seg, T)
out = {}
for K in (2, 1):  # KV heads split like the query heads (2 over tensor=2), and not splittable (1)
    q = jnp.asarray(r.randn(B, T, H, hd), jnp.float32)
    k, v = (jnp.asarray(r.randn(B, T, K, hd), jnp.float32) for _ in range(2))
    ref = dense_attention(q, k, v, m.to_dense())
    got = jax.jit(lambda q, k, v: splash_attention(q, k, v, seg, block_q=128, block_kv=128, mesh_rules=mr))(q, k, v)
    out[f"splash_K{K}"] = [float(np.abs(np.asarray(got) - np.asarray(ref)).max()), float(np.abs(np.asarray(v)).max())]
cfg = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, attention_impl="blockwise", attention_block_q=8, attention_block_kv=8)
p = init_params(cfg, jax.random.PRNGKey(0))
tok = jnp.asarray(r.randint(0, 97, (4, 21)))
ref = forward(p, tok, cfg)[0]
got = jax.jit(lambda p, t: forward(p, t, cfg, mesh_rules=mr)[0])(p, tok)
out["blockwise_model"] = [float(np.abs(np.asarray(got) - np.asarray(ref)).max()), float(np.abs(np.asarray(ref)).max())]
print("RESULT " + json.dumps(out))
"""


def test_sharded_splash_and_blockwise_on_8_fake_devices(tmp_path):
    """On a 2x2x2 mesh of fake CPU devices: splash under shard_map (batch over data/fsdp, heads over tensor,
    including the KV-head repeat when KV heads do not split) equals dense, and the blockwise model forward
    under the mesh equals one device (a subprocess: the device count is fixed at JAX start-up)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    res = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res, p.stderr[-2000:]
    out = json.loads(res[-1][7:])
    Tp = 256  # 130 padded to the 128 tile
    for K in (2, 1):
        err, vmax = out[f"splash_K{K}"]
        # same bound as test_splash_interpret_equals_dense with A <= 4·sqrt(hd) (|q|,|k| < ~4.5 at this size)
        assert err <= 2 * _depth(17, Tp, Tp // 128, 4.5 * 4.5 * 16 / 4) * U32 * vmax, (K, err)
    err, lmax = out["blockwise_model"]
    cfg = _TINY.replace(attention_impl="blockwise", attention_block_kv=8)
    assert err <= reorder_atol(np.array([lmax]), _model_depth(cfg, 21)), err
