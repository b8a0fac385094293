"""Train step: sharding equivalence across meshes, gradient accumulation, optimizer schedule."""

import jax
import ml_collections
import numpy as np
import pytest
from tolerances import TRANSCENDENTAL, U32, adam_first_step_atol, assert_within, logits_depth, logprob_atol

from storm_jax.models.qwen import ModelConfig, forward, init_params
from storm_jax.parallel.mesh import MeshRules, make_mesh
from storm_jax.train.losses import make_sft_loss
from storm_jax.train.optim import make_optimizer, make_schedule
from storm_jax.train.state import init_train_state, state_shardings
from storm_jax.train.step import make_train_step

# 8 heads / 4 KV heads so that tensor=2 shards heads; tensor=8 shards heads and replicates KV heads.
CFG = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8,
                  num_kv_heads=4, head_dim=8, tie_word_embeddings=False)  # fmt: skip
# Sharded or accumulated vs one device: two programs of one fp32 computation (tests/tolerances.py). The loss
# reorders the forward; the gradients also the backward (which retraces the forward's reductions) and the sum
# over the B T tokens of each weight's gradient; Adam's first step then amplifies their noise where |g| << eps.


# Adam's first update is ~lr*sign(g): for a gradient entry ~1e-9 the reduction-order noise would flip it, so
# the equivalence check uses eps=1e-3, which keeps the update a smooth function of the gradient.
def optim_cfg(**kw):
    c = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, decay="constant", min_lr_ratio=0.0,
                                       weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-3, clip_norm=1.0))  # fmt: skip
    c.update(kw)
    return c


def packed_batch(B=8, T=32, seed=0):
    """Rows of 1-3 packed documents plus padding; loss_mask zero on a 'prompt' and a 'tool output' span."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((B, T), np.int32)
    targets = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    pos = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    for b in range(B):
        t = 0
        for d in range(1, rng.integers(1, 4) + 1):
            n = int(rng.integers(5, 14))
            if t + n > T - 2:
                break
            doc = rng.integers(1, CFG.vocab_size, n + 1)
            tokens[b, t : t + n] = doc[:n]
            targets[b, t : t + n] = doc[1:]
            seg[b, t : t + n] = d
            pos[b, t : t + n] = np.arange(n)
            m = np.ones(n, np.int32)
            m[:2] = 0  # prompt
            m[n // 2 : n // 2 + 2] = 0  # tool output
            m[n - 1] = 0  # last position of a doc predicts nothing real
            mask[b, t : t + n] = m
            t += n
    return dict(tokens=tokens, targets=targets, loss_mask=mask, segment_ids=seg, positions=pos)


def run_step(mesh_shape, batch, grad_accum=1, devices=None):
    mesh = make_mesh(*mesh_shape, devices=devices)
    rules = MeshRules(mesh)
    opt, sched = make_optimizer(optim_cfg(), 10)
    params = init_params(CFG, jax.random.key(0))
    state = init_train_state(params, opt, 0)
    sh = state_shardings(jax.eval_shape(lambda: state), CFG, rules)
    state = jax.device_put(state, sh)
    step = make_train_step(make_sft_loss(mesh_rules=rules), CFG, opt, sched, mesh_rules=rules,
                           state_sharding=sh, grad_accum=grad_accum)  # fmt: skip
    new_state, metrics = step(state, batch)
    return jax.device_get(new_state.params), jax.device_get(metrics), new_state


@pytest.fixture(scope="module")
def reference():
    batch = packed_batch()
    params, metrics, _ = run_step((1, 1, 1), batch, devices=jax.devices()[:1])
    return batch, params, metrics


@pytest.fixture(scope="module")
def bounds(reference):
    """Derived bounds (tests/tolerances.py) for a step that reorders the reference step's fp32 reductions."""
    batch = reference[0]
    params = init_params(CFG, jax.random.key(0))
    kw = dict(segment_ids=batch["segment_ids"], positions=batch["positions"])
    logits = np.asarray(forward(params, batch["tokens"], CFG, **kw)[0], np.float64)
    loss, _ = make_sft_loss()(params, batch, CFG)
    grads = jax.device_get(jax.grad(lambda p: make_sft_loss()(p, batch, CFG)[0])(params))
    B, T = batch["tokens"].shape
    depth = logits_depth(CFG, T)
    # token-mean NLL: each token within logprob_atol, the mean of <= B (T + 1) + T + 2 terms (nll >= 0);
    # + 4: the micro-batch combination sum_i w_i L_i / sum_i w_i
    loss_atol = logprob_atol(logits, depth) + 2 * (B * (T + 1) + T + 2 + 4) * U32 * float(loss)
    c = optim_cfg()
    params_atol, norm_atol = adam_first_step_atol(
        grads, params, lr=c.lr, eps=c.eps, clip_norm=c.clip_norm, depth=2 * depth + B * T + 4
    )
    return dict(loss=loss_atol, params=params_atol, grad_norm=norm_atol)


@pytest.mark.parametrize(
    "mesh_shape",
    [
        (2, 2, 2),
        pytest.param((1, 8, 1), marks=pytest.mark.slow),
        pytest.param((1, 1, 8), marks=pytest.mark.slow),
    ],
)
def test_sharded_step_matches_single_device(reference, bounds, mesh_shape):
    batch, ref_params, ref_metrics = reference
    params, metrics, state = run_step(mesh_shape, batch)
    assert len(state.params["layers"]["q"].sharding.device_set) == 8
    assert_within(metrics["loss"], ref_metrics["loss"], bounds["loss"], "loss")
    assert_within(metrics["grad_norm"], ref_metrics["grad_norm"], bounds["grad_norm"], "grad_norm")
    for a, b, tol in zip(
        jax.tree.leaves(params), jax.tree.leaves(ref_params), jax.tree.leaves(bounds["params"])
    ):
        assert_within(a, b, tol, "params")
    # The update really changed the params (the comparison is not trivially equal).
    init = init_params(CFG, jax.random.key(0))
    assert np.abs(params["layers"]["q"] - np.asarray(init["layers"]["q"])).max() > 1e-3


def test_grad_accumulation_is_global_token_mean(reference, bounds):
    """4 micro-batches with different masked-token counts == one big batch (token-normalized loss)."""
    batch, ref_params, ref_metrics = reference
    params, metrics, _ = run_step((1, 2, 1), batch, grad_accum=4, devices=jax.devices()[:2])
    assert_within(metrics["loss"], ref_metrics["loss"], bounds["loss"], "loss")
    assert metrics["weight"] == batch["loss_mask"].sum()  # a count: exact in fp32
    for a, b, tol in zip(
        jax.tree.leaves(params), jax.tree.leaves(ref_params), jax.tree.leaves(bounds["params"])
    ):
        assert_within(a, b, tol, "params")


def test_schedule_warmup_then_cosine():
    c = optim_cfg(lr=1.0, warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    s = make_schedule(c, 14)
    got = np.array([float(s(i)) for i in range(15)])
    expect_warm = np.array([0.25, 0.5, 0.75, 1.0])
    k = np.arange(0, 11) / 10
    expect_decay = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * k))
    np.testing.assert_array_equal(got[:4], expect_warm)  # lr * (step + 1) / 4: exact in fp32
    # optax: lr ((1 - alpha) (0.5 (1 + cos(pi k / n)))^1 + alpha) in fp32: the argument rounds twice (2 pi u
    # absolute in cos), cos and pow(., 1) by TRANSCENDENTAL u each, fp32(alpha), fp32(1 - alpha) and 5
    # arithmetic roundings, all relative to values <= 1 (lr = 1).
    np.testing.assert_allclose(got[4:], expect_decay, rtol=0, atol=(2 * np.pi + 2 * TRANSCENDENTAL + 7) * U32)
    lin = make_schedule(optim_cfg(lr=1.0, warmup_steps=0, decay="linear", min_lr_ratio=0.0), 10)
    # (init - end) (1 - k / n)^1 + end: pow(., 1) and 3 roundings relative to values <= 1
    np.testing.assert_allclose(
        [float(lin(i)) for i in (0, 5, 10)], [1.0, 0.5, 0.0], rtol=0, atol=(TRANSCENDENTAL + 3) * U32
    )
