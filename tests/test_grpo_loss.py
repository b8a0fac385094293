"""GRPO objective: group advantages vs a per-group loop; the token loss and its gradient w.r.t. logp vs an
independent numpy implementation with analytic gradients, per option; grad accumulation through the real
train step reproduces the full-batch aggregation exactly."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import (
    TRANSCENDENTAL,
    U32,
    U64,
    assert_within,
    entropy_atol,
    group_advantage_atol,
    logits_depth,
    logprob_atol,
    reorder_atol,
    sum_atol,
)

from storm_jax.models.qwen import ModelConfig, forward, init_params
from storm_jax.parallel.mesh import MeshRules, make_mesh
from storm_jax.train.grpo_loss import GRPOLossConfig, group_advantages, grpo_token_loss, make_grpo_loss
from storm_jax.train.logprobs import token_logprobs
from storm_jax.train.state import init_train_state, state_shardings
from storm_jax.train.step import make_train_step

# ------------------------------------------------------------------------------------------------------
# group_advantages
# ------------------------------------------------------------------------------------------------------


def loop_advantages(rewards, labels, scale, eps, ddof):
    out = np.zeros(len(rewards))
    zv = np.zeros(len(rewards), bool)
    for g in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == g]
        r = np.array([rewards[i] for i in idx], np.float64)
        if len(set(r.tolist())) == 1 or len(r) <= ddof:
            zv[idx] = True
            continue
        a = r - r.mean()
        if scale:
            a = a / (np.std(r, ddof=ddof) + eps)
        out[idx] = a
    return out, zv


def test_group_advantages_grid_and_labels():
    rng = np.random.default_rng(0)
    R = rng.integers(0, 2, (5, 8)).astype(float)
    R[1] = 1.0  # all correct -> zero variance
    R[3] = 0.0  # all wrong
    R[4] = rng.normal(size=8)  # continuous rewards
    ga = group_advantages(R)
    ref, zv = loop_advantages(R.reshape(-1).tolist(), np.repeat(np.arange(5), 8).tolist(), True, 1e-6, 0)
    # float64 in both (summed in other orders), the library's result rounded to fp32 (tests/tolerances.py)
    bound = np.concatenate([group_advantage_atol(a, r, 1e-6) for a, r in zip(ref.reshape(5, 8), R)])
    assert_within(ga.advantages.reshape(-1), ref, bound)
    np.testing.assert_array_equal(ga.zero_variance.reshape(-1), zv)
    assert ga.advantages.shape == (5, 8) and ga.advantages.dtype == np.float32
    assert (ga.n_groups, ga.n_zero_variance_groups, ga.n_dropped) == (5, 2, 0) and ga.keep.all()
    # A binary group with k of G correct: population std sqrt(p(1-p)), A(correct) = (1-p)/sqrt(p(1-p)).
    k = R[0].sum()
    p = k / 8
    want = (1 - p) / (np.sqrt(p * (1 - p)) + 1e-6)
    assert_within(ga.advantages[0][R[0] == 1], want, group_advantage_atol(want, R[0], 1e-6))
    # Within every non-degenerate group advantages sum to 0: exactly, so the 8 fp32 values (each within its
    # bound of the exact advantage) sum, in float64, to within the sum of their bounds plus that sum's rounding.
    a64 = ga.advantages.astype(np.float64)
    assert_within(a64.sum(1), 0, bound.reshape(5, 8).sum(1) + 8 * U64 * np.abs(a64).sum(1))

    # Flat rewards with shuffled string labels and unequal group sizes; Dr.GRPO (no std); sample std.
    labels = ["a", "b", "a", "c", "b", "a", "c", "d", "b", "b"]
    r = [1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 0.0]
    for scale, ddof in itertools.product((True, False), (0, 1)):
        ga = group_advantages(r, labels, scale_by_std=scale, ddof=ddof, drop_zero_variance=True)
        ref, zv = loop_advantages(r, labels, scale, 1e-6, ddof)
        for g in set(labels):
            idx = [i for i, lab in enumerate(labels) if lab == g]
            bound = group_advantage_atol(ref[idx], [r[i] for i in idx], 1e-6, ddof=ddof, scale_by_std=scale)
            assert_within(ga.advantages[idx], ref[idx], bound, f"group {g} scale={scale} ddof={ddof}")
        np.testing.assert_array_equal(ga.zero_variance, zv)
        np.testing.assert_array_equal(ga.keep, ~zv)
        assert ga.n_groups == 4 and ga.n_zero_variance_groups == 2 and ga.n_dropped == 3  # groups c, d


def test_group_advantages_identical_non_binary_rewards_are_exactly_zero():
    ga = group_advantages([[0.7, 0.7, 0.7], [0.1, 0.2, 0.3]])
    assert np.all(ga.advantages[0] == 0.0) and ga.zero_variance[0].all() and not ga.zero_variance[1].any()


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages([1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        group_advantages([1.0, 0.0], [0])
    with pytest.raises(ValueError, match="non-finite"):
        group_advantages([[1.0, np.nan]])
    with pytest.raises(ValueError, match="already grouped"):
        group_advantages([[1.0, 0.0]], [0, 0])


# ------------------------------------------------------------------------------------------------------
# Independent numpy reference: explicit loops over sequences and tokens, analytic gradient d loss / d logp.
# ------------------------------------------------------------------------------------------------------


def np_grpo(logp, old, ref, adv, mask, seg, trunc, zv, *, eps_low, eps_high, beta, agg, max_len,
            mask_truncated, drop_zero_variance):  # fmt: skip
    B, T = logp.shape
    logp, old = logp.astype(np.float64), old.astype(np.float64)
    seqs = {}  # (row, segment) -> list of valid token positions
    for b in range(B):
        if mask_truncated and trunc[b]:
            continue
        if drop_zero_variance and zv[b]:
            continue
        for t in range(T):
            if mask[b, t] and seg[b, t] != 0:
                seqs.setdefault((b, seg[b, t]), []).append(t)
    n_tok = sum(len(v) for v in seqs.values())
    n_seq = len(seqs)
    loss, pg_loss, kl_loss = 0.0, 0.0, 0.0
    grad = np.zeros((B, T))
    # Per-token values for the error bounds (zero off the kept tokens).
    tok = {k: np.zeros((B, T)) for k in ("c", "adv", "delta", "rho", "pg", "dpg", "d", "kl", "dkl")}
    n_low = n_high = 0
    ratios = []
    for (b, _), ts in seqs.items():
        for t in ts:
            A = adv[b, t] if adv.ndim == 2 else adv[b]
            rho = np.exp(logp[b, t] - old[b, t])
            unclipped = rho * A
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high) * A
            if unclipped <= clipped:
                pg, dpg = -unclipped, -rho * A
            else:  # the clipped (constant) branch is the min: no gradient
                pg, dpg = -clipped, 0.0
            n_low += A < 0 and rho < 1 - eps_low
            n_high += A > 0 and rho > 1 + eps_high
            ratios.append(rho)
            x, kl, dkl = 0.0, 0.0, 0.0
            if ref is not None:
                x = ref[b, t] - logp[b, t]
                kl, dkl = np.exp(x) - x - 1, 1 - np.exp(x)
            if agg == "token_mean":
                c = 1.0 / n_tok
            elif agg == "seq_mean_token_mean":
                c = 1.0 / (n_seq * len(ts))
            else:
                c = 1.0 / (max_len * n_seq)
            loss += c * (pg + beta * kl)
            pg_loss += c * pg
            kl_loss += c * kl
            grad[b, t] = c * (dpg + beta * dkl)
            vals = (c, A, logp[b, t] - old[b, t], rho, pg, dpg, x, kl, dkl)
            for k, v in zip(tok, vals):
                tok[k][b, t] = v
    weight = n_tok if agg == "token_mean" else n_seq
    stats = dict(n_tok=n_tok, n_seq=n_seq, n_low=n_low, n_high=n_high, ratio_mean=np.mean(ratios) if ratios else 0,
                 pg_loss=pg_loss, kl=kl_loss, weight=weight, tok=tok)  # fmt: skip
    return loss, grad, stats


def fp32_error_bounds(st, beta):
    """Bounds on |JAX fp32 - float64 reference| from grpo_token_loss's operations (inputs are fp32 values).

    Per token (u = 2^-24, TRANSCENDENTAL = exp's relative error in u): delta = logp - old rounds by u|delta|,
    which moves exp(delta) by a relative u|delta|; so rho errs by rho (TRANSCENDENTAL + 1 + |delta|) u, and
    pg = -min(rho A, clip(rho) A) by |A| times that plus 2 roundings (the product, the fp32 clip bound
    1 +- eps). k3 = exp(d) - d - 1 (d = ref - logp) cancels: its error is relative to the intermediates,
    u (e^d (TRANSCENDENTAL + |d|) + |d| + 2 (e^d + |d| + 1)). The aggregation sums at most B (T + 1) values
    plus a per-sequence level of T (seq_mean_token_mean) and 2 divisions: a sum_atol of depth
    B (T + 1) + T + 3 over c_t |l_t| (c_t the token's aggregation coefficient). The gradient c_t (-A rho + beta
    (1 - e^d)) is elementwise: the coefficient's 3 roundings (1 / len, 1 / n, the product), those of rho and
    e^d, and 3 more for the products and the sum.
    """
    tok = {k: np.abs(v) for k, v in st["tok"].items()}
    c, A, delta, rho, d = tok["c"], tok["adv"], tok["delta"], tok["rho"], tok["d"]
    B, T = c.shape
    depth = B * (T + 1) + T + 3
    ed = np.where(c > 0, np.exp(st["tok"]["d"]), 0.0)
    err_rho = rho * (TRANSCENDENTAL + 1 + delta) * U32
    err_pg = A * err_rho + 2 * U32 * tok["pg"]
    err_kl = U32 * (ed * (TRANSCENDENTAL + d) + d + 2 * (ed + d + 1))
    per = tok["pg"] + beta * tok["kl"]
    err_per = err_pg + beta * err_kl + 2 * U32 * per
    out = {
        "loss": float((c * err_per).sum()) + sum_atol(c * per, depth),
        "pg_loss": float((c * err_pg).sum()) + sum_atol(c * tok["pg"], depth),
        "kl": float((c * err_kl).sum()) + sum_atol(c * tok["kl"], depth),
        "ratio_mean": float(err_rho.sum()) / st["n_tok"] + sum_atol(rho / st["n_tok"], B * T + 1),
    }
    dpg, ddkl = tok["dpg"] > 0, U32 * ((ed * (TRANSCENDENTAL + d)) + 2 * (ed + 1))
    out["grad"] = c * (dpg * A * (err_rho + 6 * U32 * rho) + beta * (ddkl + 6 * U32 * tok["dkl"]))
    return out


def random_arrays(seed, B=6, T=12, packed=False):
    rng = np.random.default_rng(seed)
    logp = rng.uniform(-4, -0.1, (B, T)).astype(np.float32)
    old = (logp + rng.uniform(-0.5, 0.5, (B, T))).astype(
        np.float32
    )  # ratios in [0.61, 1.65]: clipping both ways
    ref = (logp + rng.uniform(-0.4, 0.4, (B, T))).astype(np.float32)
    mask = (rng.random((B, T)) < 0.7).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    seg[:, T - 2 :] = 0  # padding
    mask[0, 3:] = 0  # a short sequence (seq mean weighs it like the long ones)
    mask[2, 4:] = 1
    mask[2, : T - 2] = 1  # a long one
    if packed:  # row 1 and 3 hold two sequences each; per-token advantages
        seg[1, 5:] = 2
        seg[3, 7 : T - 2] = 2
        adv = np.repeat(rng.normal(size=(B, 1)), T, 1).astype(np.float32)
        adv[1, 5:] = -0.8
        adv[3, 7:] = 1.3
    else:
        adv = rng.normal(size=B).astype(np.float32)
    adv[4] = 0.0  # a zero-variance group member
    # Garbage at masked positions must not leak (nan/inf in the value or the gradient).
    old = np.where(mask * (seg != 0) > 0, old, -np.inf).astype(np.float32)
    trunc = np.array([0, 1, 0, 0, 0, 1], bool)[:B]
    zv = np.array([0, 0, 0, 0, 1, 0], bool)[:B]
    return logp, old, ref, adv, mask, seg, trunc, zv


def check_against_reference(cfg, arrays, with_ref=True):
    logp, old, ref, adv, mask, seg, trunc, zv = arrays
    ref_arg = ref if with_ref else None

    def f(lp):
        return grpo_token_loss(
            lp, old, ref_arg, adv, mask, cfg, segment_ids=seg, truncated=trunc, zero_variance=zv
        )

    (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
    exp_loss, exp_grad, st = np_grpo(
        logp, old, ref_arg, adv, mask, seg, trunc, zv, eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
        beta=cfg.kl_beta, agg=cfg.aggregation, max_len=cfg.max_response_len, mask_truncated=cfg.mask_truncated,
        drop_zero_variance=cfg.drop_zero_variance,
    )  # fmt: skip
    bound = fp32_error_bounds(st, cfg.kl_beta)
    assert_within(loss, exp_loss, bound["loss"], "loss")
    assert np.all(np.isfinite(np.asarray(g)))
    assert_within(g, exp_grad, bound["grad"], "grad")
    # Counts of 0/1 floats are exact integers in fp32; a fraction of two of them rounds once.
    assert metrics["weight"] == st["weight"] and metrics["sum_tokens"] == st["n_tok"]
    assert metrics["sum_sequences"] == st["n_seq"]
    np.testing.assert_allclose(metrics["clip_frac_low"], st["n_low"] / st["n_tok"], rtol=U32, atol=0)
    np.testing.assert_allclose(metrics["clip_frac_high"], st["n_high"] / st["n_tok"], rtol=U32, atol=0)
    assert_within(metrics["ratio_mean"], st["ratio_mean"], bound["ratio_mean"], "ratio_mean")
    assert_within(metrics["pg_loss"], st["pg_loss"], bound["pg_loss"], "pg_loss")
    if with_ref:
        assert_within(metrics["kl"], st["kl"], bound["kl"], "kl")
    else:
        assert "kl" not in metrics
    return st


AGGS = ("token_mean", "seq_mean_token_mean", "constant")


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_token_loss_matches_numpy(agg, clip, beta):
    cfg = GRPOLossConfig(clip_eps_low=clip[0], clip_eps_high=clip[1], kl_beta=beta, aggregation=agg,
                         max_response_len=16)  # fmt: skip
    st = check_against_reference(cfg, random_arrays(1), with_ref=beta > 0)
    # The data exercises both clip sides and both gradient branches (the test would see a wrong branch).
    assert st["n_low"] > 0 and st["n_high"] > 0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("mask_truncated,drop_zv", [(True, False), (False, True), (True, True)])
def test_sequence_dropping_options(agg, mask_truncated, drop_zv):
    cfg = GRPOLossConfig(kl_beta=0.05, aggregation=agg, max_response_len=16, mask_truncated=mask_truncated,
                         drop_zero_variance=drop_zv, clip_eps_high=0.3)  # fmt: skip
    arrays = random_arrays(2)
    st = check_against_reference(cfg, arrays)
    _, _, _, _, mask, seg, trunc, zv = arrays
    full = GRPOLossConfig(kl_beta=0.05, aggregation=agg, max_response_len=16, clip_eps_high=0.3)
    st_full = check_against_reference(full, arrays)
    assert st["n_seq"] == st_full["n_seq"] - mask_truncated * trunc.sum() - drop_zv * zv.sum()
    # Dropping == filtering the rows out of the batch beforehand (same loss and gradient on the kept rows).
    keep = ~((trunc & mask_truncated) | (zv & drop_zv))
    sub = [a[keep] for a in arrays]
    (l1, _), g1 = jax.value_and_grad(
        lambda lp: grpo_token_loss(lp, *[jnp.asarray(a) for a in arrays[1:5]], cfg, segment_ids=arrays[5],
                                   truncated=trunc, zero_variance=zv), has_aux=True)(jnp.asarray(arrays[0]))  # fmt: skip
    (l2, _), g2 = jax.value_and_grad(
        lambda lp: grpo_token_loss(lp, *sub[1:5], full, segment_ids=sub[5]), has_aux=True)(jnp.asarray(sub[0]))  # fmt: skip
    # Two programs (zero-weight rows vs no rows) of one computation, each within its bound of the exact value.
    bound = fp32_error_bounds(st, cfg.kl_beta)
    assert_within(l1, l2, 2 * bound["loss"], "loss")
    assert_within(np.asarray(g1)[keep], g2, 2 * bound["grad"][keep], "grad")
    assert np.all(np.asarray(g1)[~keep] == 0)


@pytest.mark.parametrize("agg", AGGS)
def test_packed_rows_with_per_token_advantages(agg):
    cfg = GRPOLossConfig(kl_beta=0.1, aggregation=agg, max_response_len=16, clip_eps_high=0.28)
    st = check_against_reference(cfg, random_arrays(3, packed=True))
    assert st["n_seq"] == 8  # 6 rows, two of them holding two sequences


@pytest.mark.parametrize("agg", AGGS)
def test_first_pass_ratio_one(agg):
    """logp == old_logp (and == ref): loss = -mean(A) in the aggregation, no clipping, ratio 1, KL 0."""
    logp, _, _, adv, mask, seg, trunc, zv = random_arrays(4)
    cfg = GRPOLossConfig(kl_beta=0.1, aggregation=agg, max_response_len=16)
    loss, metrics = grpo_token_loss(logp, logp, logp, adv, mask, cfg, segment_ids=seg)
    m = (mask * (seg != 0)).astype(np.float64)
    n_s = m.sum(1)
    rows = n_s > 0
    if agg == "token_mean":
        expect = -(adv[:, None] * m).sum() / m.sum()
    elif agg == "seq_mean_token_mean":
        expect = -adv[rows].mean()
    else:
        expect = -(adv * n_s).sum() / (16 * rows.sum())
    # delta = 0 exactly, so rho = exp(0) = 1 and k3 = exp(0) - 0 - 1 = 0 exactly: pg = -A exactly, and the
    # only error is the aggregation's, a sum of at most B (T + 1) + T values and 3 divisions (tests/tolerances.py).
    B, T = logp.shape
    c = m / m.sum() if agg == "token_mean" else m / (16 * rows.sum())
    if agg == "seq_mean_token_mean":
        c = m / np.maximum(n_s, 1)[:, None] / rows.sum()
    assert_within(loss, expect, sum_atol(c * adv[:, None], B * (T + 1) + T + 3))
    assert metrics["clip_frac_low"] == 0 and metrics["clip_frac_high"] == 0
    assert metrics["ratio_mean"] == 1.0 and metrics["kl"] == 0.0  # sum(m) / sum(m) and a sum of exact zeros
    # Gradient at rho = 1 is -A * (aggregation coefficient), the policy-gradient estimator.
    g = jax.grad(lambda lp: grpo_token_loss(lp, logp, logp, adv, mask, cfg, segment_ids=seg)[0])(
        jnp.asarray(logp)
    )
    if agg == "token_mean":
        # elementwise: the coefficient 1 / n (1 rounding, 2 if formed as a reciprocal and a product) times -A
        np.testing.assert_allclose(g, -adv[:, None] * m / m.sum(), rtol=3 * U32, atol=0)


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="aggregation"):
        GRPOLossConfig(aggregation="mean")
    with pytest.raises(ValueError, match="max_response_len"):
        GRPOLossConfig(aggregation="constant")
    logp, old, ref, adv, mask, seg, trunc, zv = random_arrays(5)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_token_loss(logp, old, None, adv, mask, GRPOLossConfig(kl_beta=0.1))
    with pytest.raises(ValueError, match="truncated"):
        grpo_token_loss(logp, old, None, adv, mask, GRPOLossConfig(mask_truncated=True))
    with pytest.raises(ValueError, match="advantages"):
        grpo_token_loss(logp, old, None, adv[:3], mask, GRPOLossConfig())
    with pytest.raises(KeyError, match="old_logprobs"):
        make_grpo_loss(GRPOLossConfig())(None, {k: 0 for k in ("tokens", "targets", "loss_mask", "segment_ids",
                                                                 "positions", "advantages")}, None)  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# Through a tiny model and make_train_step: grad accumulation 2 == 1, loss == numpy on the model's log-probs.
# ------------------------------------------------------------------------------------------------------

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                  head_dim=8, tie_word_embeddings=False)  # fmt: skip


@jax.jit
def perturbed(params, seed, scale):
    keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params)))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(jax.tree.leaves(params), keys)]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


@pytest.fixture(scope="module")
def rl_batch():
    B, T = 8, 16
    rng = np.random.default_rng(7)
    b = {
        k: np.zeros((B, T), np.int32) for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions")
    }
    for i in range(B):
        p = int(rng.integers(2, 5))
        n = p + int(rng.integers(3, T - p + 1))
        ids = rng.integers(1, CFG.vocab_size, n + 1)
        b["tokens"][i, :n] = ids[:n]
        b["targets"][i, :n] = ids[1:]
        b["segment_ids"][i, :n] = 1
        b["positions"][i, :n] = np.arange(n)
        b["loss_mask"][i, p - 1 : n] = 1  # targets after the prompt
    params = jax.jit(lambda k: init_params(CFG, k, std=0.2))(jax.random.key(0))  # jit: eager init is slow
    lp_jit = jax.jit(lambda prm: token_logprobs(prm, CFG, b["tokens"], b["targets"], segment_ids=b["segment_ids"],
                                                positions=b["positions"], return_entropy=True))  # fmt: skip
    lp = lambda prm: np.asarray(lp_jit(prm)[0])
    b["old_logprobs"] = lp(perturbed(params, 1, 0.05))
    b["ref_logprobs"] = lp(perturbed(params, 2, 0.05))
    b["advantages"] = rng.normal(size=B).astype(np.float32)
    b["advantages"][6] = 0.0
    # Micro-batches take rows a, a+2, ...: odd rows lose 2 of 4 sequences, even rows none -> unequal weights.
    b["truncated"] = np.array([0, 1, 0, 0, 0, 1, 0, 0], bool)
    b["zero_variance"] = np.array([0, 0, 0, 1, 0, 0, 0, 0], bool)
    logp, ent = jax.device_get(lp_jit(params))
    return params, b, logp, ent


def sgd_step(params, batch, loss_cfg, grad_accum):
    rules = MeshRules(make_mesh(1, 1, 1, devices=jax.devices()[:1]))  # sharding is test_train_step's business
    opt = optax.sgd(1.0)  # update = -grad: compares gradients directly
    state = init_train_state(params, opt, 0)
    sh = state_shardings(jax.eval_shape(lambda: state), CFG, rules)
    state = jax.device_put(state, sh)
    step = make_train_step(make_grpo_loss(loss_cfg, rules), CFG, opt, None, mesh_rules=rules, state_sharding=sh,
                           grad_accum=grad_accum, donate=False)  # fmt: skip
    new, metrics = step(state, batch)
    return jax.device_get(new.params), jax.device_get(metrics)


@pytest.mark.parametrize("agg", AGGS)
def test_train_step_grad_accumulation_exact(rl_batch, agg):
    params, batch, logp, ent = rl_batch
    cfg = GRPOLossConfig(clip_eps_low=0.2, clip_eps_high=0.28, kl_beta=0.05, aggregation=agg, max_response_len=16,
                         mask_truncated=True, drop_zero_variance=True)  # fmt: skip
    p1, m1 = sgd_step(params, batch, cfg, 1)
    p2, m2 = sgd_step(params, batch, cfg, 2)
    exp_loss, _, st = np_grpo(
        logp, batch["old_logprobs"], batch["ref_logprobs"], batch["advantages"], batch["loss_mask"],
        batch["segment_ids"], batch["truncated"], batch["zero_variance"], eps_low=0.2, eps_high=0.28, beta=0.05,
        agg=agg, max_len=16, mask_truncated=True, drop_zero_variance=True,
    )  # fmt: skip
    assert st["n_low"] + st["n_high"] > 0  # the old policy differs enough for clipping to matter
    # The train step recomputes the log-probs in its own program: the model's logits in another order move
    # each log-prob by logprob_atol (tests/tolerances.py); through the loss each token weighs
    # |d l_t / d logp_t| <= c_t (rho |A| + beta (e^d + 1)).
    B, T = logp.shape
    logits = np.asarray(forward(params, jnp.asarray(batch["tokens"]), CFG, segment_ids=batch["segment_ids"],
                                positions=batch["positions"])[0], np.float64)  # fmt: skip
    depth = logits_depth(CFG, T)
    d_logp = logprob_atol(logits, depth)
    tok = {k: np.abs(v) for k, v in st["tok"].items()}
    e_d = np.where(tok["c"] > 0, np.exp(st["tok"]["d"]), 0.0)
    lip_kl = float((tok["c"] * (e_d + 1)).sum())
    bound = fp32_error_bounds(st, 0.05)
    per = tok["c"] * (tok["pg"] + 0.05 * tok["kl"])
    b_loss = d_logp * (float((tok["c"] * tok["rho"] * tok["adv"]).sum()) + 0.05 * lip_kl) + bound["loss"]
    assert_within(m1["loss"], exp_loss, b_loss, "loss, one micro-batch")
    # two micro-batches: combined as sum_i w_i L_i / sum_i w_i, 4 more roundings
    assert_within(m2["loss"], exp_loss, b_loss + 4 * U32 * float(per.sum()), "loss, two micro-batches")
    assert (
        m2["weight"] == m1["weight"]
        and m2["sum_tokens"] == st["n_tok"]
        and m2["sum_sequences"] == st["n_seq"]
    )
    b_kl = d_logp * lip_kl + bound["kl"] + 4 * U32 * float((tok["c"] * tok["kl"]).sum())
    assert_within(m2["kl"], m1["kl"], 2 * b_kl, "kl")
    assert m2["sum_clip_low"] + m2["sum_clip_high"] == st["n_low"] + st["n_high"]
    keep = ~(batch["truncated"] | batch["zero_variance"])
    m = batch["loss_mask"] * keep[:, None]
    d_ent = entropy_atol(logits, depth)  # the entropy from the two programs' logits (tests/tolerances.py)
    w = m / m.sum()
    assert_within(m1["entropy"], (ent * w).sum(), d_ent + 2 * sum_atol(ent * w, B * T + 1), "entropy")
    moved = 0.0
    for a, b, p0 in zip(jax.tree.leaves(p2), jax.tree.leaves(p1), jax.tree.leaves(params)):
        # SGD(1): the update is -grad, the same gradient in another order: the backward pass retraces the
        # forward's reductions and each weight's gradient sums over the B T tokens, plus the micro-batch
        # combination (4 roundings). A wrong micro-batch weight changes whole leaves by tens of percent.
        atol = reorder_atol(b - p0, 2 * depth + B * T + 4)
        assert_within(a - p0, b - p0, atol, "update")
        moved = max(moved, float(np.abs(b - p0).max()))
    assert moved > 1e-4  # a real update happened


def test_extreme_log_ratio_stays_finite():
    """A valid token whose old log-prob is absurdly far off (-1e4 nats) gives a finite loss and gradient."""
    logp, old, ref, adv, mask, seg, trunc, zv = random_arrays(6)
    old = np.where(np.isfinite(old), old, 0.0).astype(np.float32)
    old[2, 3], old[2, 4] = -1e4, 1e4  # rho -> e^+20 and e^-20 after the clamp
    adv[2] = -1.0
    for agg in AGGS:
        cfg = GRPOLossConfig(kl_beta=0.1, aggregation=agg, max_response_len=16)
        (loss, _), g = jax.value_and_grad(
            lambda lp, cfg=cfg: grpo_token_loss(lp, old, ref, adv, mask, cfg, segment_ids=seg), has_aux=True
        )(jnp.asarray(logp))
        assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(g)))
