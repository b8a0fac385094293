"""The fused SFT head (train/fused_head.py): the value and gradients of sum(c * log p) against a float64
numpy formula written separately, and the fused SFT loss against the generic chunked one on a packed batch
(tied and untied heads, token and sequence normalization, chunks without a loss token)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import U32, assert_within, logits_depth, reorder_atol

from storm_jax.config import base_config
from storm_jax.configs import model_presets
from storm_jax.train.fused_head import _weighted_sum
from storm_jax.train.losses import NORMALIZATIONS, make_loss, normalization_weights
from storm_jax.train.setup import build_setup, initial_params


def _reference(W, h, y, c):
    """float64: total, dtotal/dh, dtotal/dW and the per-term magnitudes each sum adds up."""
    logits = np.einsum("btd,vd->btv", h, W)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    logp = np.take_along_axis(logits, y[..., None], -1)[..., 0] - lse
    p = np.exp(logits - lse[..., None])
    onehot = np.eye(W.shape[0])[y]
    d = c[..., None] * (onehot - p)  # d total / d logits
    dh = np.einsum("btv,vd->btd", d, W)
    dW = np.einsum("btv,btd->vd", d, h)
    mag_dh = np.einsum("btv,vd->btd", np.abs(d), np.abs(W))
    mag_dW = np.einsum("btv,btd->vd", np.abs(d), np.abs(h))
    return (c * logp).sum(), logp, dh, dW, np.abs(c * logp).sum(), mag_dh, mag_dW


@pytest.mark.parametrize("chunk", [4, 16])
def test_weighted_sum_and_gradients_match_float64_formula(chunk):
    rng = np.random.default_rng(0)
    B, T, D, V = 2, 16, 8, 50
    W = rng.normal(0, 0.5, (V, D)).astype(np.float32)
    h = rng.normal(0, 1.0, (B, T, D)).astype(np.float32)
    y = rng.integers(0, V, (B, T))
    c = (rng.random((B, T)) < 0.5) * rng.random((B, T))
    c[:, :4] = 0.0  # the first chunk (size 4) carries no weight: it is skipped and must give 0, not garbage
    c = c.astype(np.float32)

    def f(W_, h_):
        total, logp = _weighted_sum(W_, h_, jnp.asarray(y), jnp.asarray(c), chunk, jnp.float32, None)
        return total, logp

    (total, logp), (gW, gh) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(W), jnp.asarray(h)
    )
    rt, rlogp, rdh, rdW, mag_t, mag_dh, mag_dW = _reference(W.astype(np.float64), h.astype(np.float64), y, c)
    # every logit is a D-term dot product and every softmax a V-term sum; the sums on top add B*T (dW), V (dh)
    # or B*T (the total) more terms: depth x u x (sum of |terms|) bounds each
    inner = D + V + 4
    assert_within(total, rt, (inner + B * T) * U32 * mag_t + 1e-30)
    assert_within(gh, rdh, (inner + V) * U32 * mag_dh + 1e-30)
    assert_within(gW, rdW, (inner + B * T) * U32 * mag_dW + 1e-30)
    weighted = c != 0
    lp_bound = (inner + 2) * U32 * (np.abs(rlogp) + np.abs(np.einsum("btd,vd->btv", h, W)).max(-1))
    assert_within(np.asarray(logp)[weighted], rlogp[weighted], lp_bound[weighted])
    if chunk == 4:
        assert np.all(np.asarray(logp)[:, :4] == 0.0)  # the skipped chunk
    assert np.abs(np.asarray(gW)).max() > 1e-3 and np.abs(np.asarray(gh)).max() > 1e-3  # not vacuous


def _packed_batch(rng, B, T, vocab):
    tok = rng.integers(0, vocab, (B, T))
    seg = np.ones((B, T), np.int32)
    seg[0, 30:] = 2
    seg[1, 50:] = 0  # padding
    pos = np.tile(np.arange(T), (B, 1))
    pos[0, 30:] = np.arange(T - 30)
    mask = (rng.random((B, T)) < 0.6).astype(np.int32)
    mask[:, :16] = 0  # whole chunks without a loss token
    return {
        "tokens": jnp.asarray(tok),
        "targets": jnp.asarray(np.roll(tok, -1, 1)),
        "segment_ids": jnp.asarray(seg),
        "positions": jnp.asarray(pos),
        "loss_mask": jnp.asarray(mask),
    }


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_fused_sft_loss_equals_generic_chunked_loss(tie, norm):
    c = base_config()
    model_presets.apply_preset(c, "tiny-toy-vocab", dtype="float32", param_dtype="float32", remat="none")
    c.model.tie_word_embeddings = tie
    c.data.seq_len, c.data.batch_size = 64, 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    setup = build_setup(c, devices=jax.devices()[:1])
    params = initial_params(c, setup)
    batch = _packed_batch(np.random.default_rng(1), 2, 64, 256)
    ref = make_loss("sft", normalization=norm, chunk_size=16, fused=False)
    fused = make_loss("sft", normalization=norm, chunk_size=16, fused=True)

    def vg(fn):
        return jax.jit(jax.value_and_grad(lambda p: fn(p, batch, setup.model_cfg), has_aux=True))(params)

    (l0, a0), g0 = vg(ref)
    (l1, a1), g1 = vg(fused)
    cfg = setup.model_cfg
    # two fp32 programs of the same math in different orders: through every layer forward and back, the
    # vocabulary (softmax, dh) and the B*T positions (the head gradient and the loss sums)
    depth = 2 * logits_depth(cfg, 64) + cfg.vocab_size + 2 * 64
    assert_within(l1, l0, reorder_atol(l0, depth))
    assert float(a1["weight"]) == float(a0["weight"])
    assert_within(a1["token_nll"], a0["token_nll"], reorder_atol(a0["token_nll"], depth))
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        assert_within(x, y, reorder_atol(y, depth))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g0)) > 1e-3


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_normalization_weights_reproduce_the_normalizations(norm):
    rng = np.random.default_rng(2)
    b = _packed_batch(rng, 2, 64, 256)
    v = jnp.asarray(rng.normal(size=(2, 64)).astype(np.float32))
    mask = b["loss_mask"].astype(jnp.float32) * (b["segment_ids"] != 0)
    want, w_want = NORMALIZATIONS[norm](v, mask, b["segment_ids"])
    c, w = normalization_weights(mask, b["segment_ids"], norm)
    got = jnp.sum(c * v)
    assert float(w) == float(w_want)
    # both are 128-term sums plus one division per term or per document
    assert_within(got, want, 2 * (128 + 2) * U32 * float(jnp.sum(jnp.abs(c * v))))
