"""Weighted DPO: the pair loss against numpy, the model-level LossFn (masks, finite differences), the train step.

Tolerances are derived from the fp32 arithmetic (`fp32_pair_bounds`, `summed_logp_atol` in tests/tolerances.py): pair-loss
inputs are fp32 values handed to numpy as exact float64 copies, so the pair-level bound is JAX's own fp32
error; at model level the summed log-probs of two programs differ by `summed_logp_atol`, which then moves
delta by beta times the two sides' errors (|d l / d delta| <= 1).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tolerances import (
    TRANSCENDENTAL,
    U32,
    adam_first_step_atol,
    assert_within,
    fp32_pair_bounds,
    logits_depth,
    summed_logp_atol,
)

from storm_jax.data.preference import PreferencePair, eval_batches, make_pair_dataset
from storm_jax.data.sft import TokenizedExample
from storm_jax.models.qwen import ModelConfig, forward, init_params
from storm_jax.train.dpo_loss import (
    LOSSES,
    dpo_metrics,
    make_dpo_loss,
    pair_logps,
    precompute_reference_logps,
    weighted_dpo_loss,
    with_reference_logps,
)

BETA = 0.3

# ------------------------------------------------------------------------------------------------------
# Independent numpy reference (float64)


def np_sigmoid(x):
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def np_weighted_dpo(pc, pr, rc, rr, w, *, beta, reference_free, ls, normalize):
    """(loss, d loss / d pc, d loss / d pr, delta) in float64; gradient derived by hand."""
    pc, pr, rc, rr, w = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr, w))
    if reference_free:
        x = beta * (pc - pr)
    else:
        x = beta * ((pc - rc) - (pr - rr))
    # -log sigmoid(x) = log(1 + exp(-x)) = logaddexp(0, -x)
    per = (1 - ls) * np.logaddexp(0.0, -x) + ls * np.logaddexp(0.0, x)
    n = len(x) if normalize == "pairs" else w.sum()
    loss = (w * per).sum() / n
    dper_dx = -(1 - ls) * np_sigmoid(-x) + ls * np_sigmoid(x)
    g_pc = w * dper_dx * beta / n
    return loss, g_pc, -g_pc, x


def random_inputs(P=16, seed=0, zero_weights=True):
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = (-rng.uniform(1.0, 80.0, P).astype(np.float32) for _ in range(4))
    w = rng.uniform(0.0, 2.0, P).astype(np.float32)
    if zero_weights:
        w[[1, 5]] = 0.0
    return pc, pr, rc, rr, w


def jax_loss_and_grads(pc, pr, rc, rr, w, **kw):
    def f(a, b):
        return weighted_dpo_loss(a, b, rc, rr, w, **kw)

    (loss, aux), (g_pc, g_pr) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(pc), jnp.asarray(pr)
    )
    return float(loss), np.asarray(g_pc), np.asarray(g_pr), jax.device_get(aux)


@pytest.mark.parametrize("normalize", ["pairs", "weights"])
@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("reference_free", [False, True])
def test_pair_loss_and_grad_match_numpy(reference_free, ls, normalize):
    pc, pr, rc, rr, w = random_inputs(seed=int(reference_free) * 4 + int(ls > 0) * 2 + (normalize == "pairs"))
    kw = dict(beta=BETA, reference_free=reference_free, label_smoothing=ls, normalize=normalize)
    loss, g_pc, g_pr, aux = jax_loss_and_grads(pc, pr, rc, rr, w, **kw)
    want, w_pc, w_pr, x = np_weighted_dpo(pc, pr, rc, rr, w, beta=BETA, reference_free=reference_free, ls=ls,
                                          normalize=normalize)  # fmt: skip
    b = fp32_pair_bounds(
        pc, pr, rc, rr, w, beta=BETA, reference_free=reference_free, ls=ls, normalize=normalize
    )
    assert_within(loss, want, b["loss"], "loss")
    assert_within(g_pc, w_pc, b["grad"], "d loss / d chosen")
    assert_within(g_pr, w_pr, b["grad"], "d loss / d rejected")
    # The gradient is not trivially small: some entries are far above the bound.
    assert np.abs(w_pc).max() > 100 * b["grad"].max()
    # aux against the same reference
    assert_within(aux["margins"], x, b["x"], "margins")
    rc_, rr_ = (0.0, 0.0) if reference_free else (rc.astype(np.float64), rr.astype(np.float64))
    assert_within(aux["chosen_rewards"], BETA * (pc - rc_), b["cr"], "chosen_rewards")
    assert_within(aux["rejected_rewards"], BETA * (pr - rr_), b["rj"], "rejected_rewards")
    assert np.all(np.abs(x) > b["x"])  # no margin within its error of 0: the accuracy count is exact
    assert float(aux["accuracy"]) == pytest.approx(
        np.mean(x > 0), rel=U32, abs=0
    )  # a count / 16, one rounding
    assert 0 < float(aux["accuracy"]) < 1  # random inputs give both signs: the check can fail
    assert_within(aux["weight_mean"], w.astype(np.float64).mean(), b["weight_mean"], "weight_mean")
    assert_within(aux["margin_mean"], x.mean(), b["margin_mean"], "margin_mean")


def test_reference_free_ignores_reference_inputs():
    pc, pr, rc, rr, w = random_inputs(seed=3)
    a = weighted_dpo_loss(pc, pr, rc, rr, w, beta=BETA, reference_free=True)[0]
    b = weighted_dpo_loss(pc, pr, None, None, w, beta=BETA, reference_free=True)[0]
    c = weighted_dpo_loss(pc, pr, rc, rr, w, beta=BETA, reference_free=False)[0]
    assert float(a) == float(b)
    assert abs(float(a) - float(c)) > 1e-2


def plain_dpo(pc, pr, rc, rr, beta, ls=0.0):
    """The unweighted (conservative, ls > 0) DPO loss written directly: a mean over pairs."""
    pc, pr, rc, rr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr))
    z = beta * (pc - rc - pr + rr)
    sig = 1.0 / (1.0 + np.exp(-z))
    return float(np.mean(-(1 - ls) * np.log(sig) - ls * np.log(1.0 - sig)))


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_unit_weights_equal_plain_dpo(ls):
    rng = np.random.default_rng(7)
    # |z| <= ~9 so that the direct log(sigmoid) of plain_dpo is accurate in float64
    pc, pr, rc, rr = (-rng.uniform(1.0, 15.0, 32).astype(np.float32) for _ in range(4))
    want = plain_dpo(pc, pr, rc, rr, BETA, ls)
    for normalize in ("pairs", "weights"):
        got = weighted_dpo_loss(pc, pr, rc, rr, np.ones(32, np.float32), beta=BETA, label_smoothing=ls,
                                normalize=normalize)[0]  # fmt: skip
        # plain_dpo's direct float64 log(sigmoid) at |z| <= 9 is exact to ~1e-12 beside these fp32 bounds
        b = fp32_pair_bounds(pc, pr, rc, rr, np.ones(32), beta=BETA, reference_free=False, ls=ls,
                             normalize=normalize)  # fmt: skip
        assert_within(float(got), want, b["loss"] + 1e-12, normalize)


@pytest.mark.parametrize("normalize", ["pairs", "weights"])
def test_weight_zero_pairs_have_exactly_zero_gradient(normalize):
    pc, pr, rc, rr, w = random_inputs(seed=11)
    # Extreme margins on the zero-weight pairs: their losses (~1e4) would dominate if they leaked in.
    pc[1], pr[1] = -1.0, -3e4
    pc[5], pr[5] = -3e4, -1.0
    loss, g_pc, g_pr, aux = jax_loss_and_grads(pc, pr, rc, rr, w, beta=BETA, normalize=normalize)
    assert np.isfinite(loss) and np.all(np.isfinite(g_pc))
    assert g_pc[1] == 0.0 and g_pc[5] == 0.0 and g_pr[1] == 0.0 and g_pr[5] == 0.0
    assert np.all(g_pc[w > 0] != 0.0)
    # And they add nothing to the loss: it equals the loss without them (pairs: rescaled by P' / P).
    keep = w > 0
    sub = weighted_dpo_loss(pc[keep], pr[keep], rc[keep], rr[keep], w[keep], beta=BETA, normalize=normalize)[
        0
    ]
    scale = keep.sum() / len(w) if normalize == "pairs" else 1.0
    # The same per-pair values (elementwise) summed in two programs (exact zeros vs no terms): twice the sum's
    # bound, plus the rescaling's rounding (float64) and the division.
    n = len(w) if normalize == "pairs" else w.sum()
    wl = np.abs(w * np.asarray(aux["losses"], np.float64))[keep]
    assert_within(
        loss, float(sub) * scale, 2 * (len(w) + 2) * U32 * wl.sum() / n * (1 + (normalize == "weights"))
    )
    assert np.isfinite(aux["losses"]).all() and aux["losses"][5] > 1e3  # stable log-sigmoid at delta ~ -9e3


def test_valid_mask_removes_padding_pairs():
    pc, pr, rc, rr, w = random_inputs(seed=5, zero_weights=False)
    valid = np.ones(16, np.float32)
    valid[[0, 9]] = 0.0
    keep = valid > 0
    for normalize in ("pairs", "weights"):
        a, aux_a = weighted_dpo_loss(pc, pr, rc, rr, w, beta=BETA, normalize=normalize, valid=valid)
        b, aux_b = weighted_dpo_loss(
            pc[keep], pr[keep], rc[keep], rr[keep], w[keep], beta=BETA, normalize=normalize
        )
        # The same per-pair values summed in two programs (masked zeros vs no terms): twice each sum's bound.
        P = len(w)
        n = P if normalize == "pairs" else w[keep].sum()
        wl = np.abs(w * np.asarray(aux_a["losses"], np.float64))[keep]
        assert_within(float(a), float(b), 2 * (P + 2) * U32 * wl.sum() / n * (1 + (normalize == "weights")))
        for k in ("accuracy", "num_pairs"):  # counts, and a count over a count: exact / identical
            assert float(aux_a[k]) == float(aux_b[k]), k
        assert_within(aux_a["weight_sum"], aux_b["weight_sum"], 2 * P * U32 * w[keep].sum())
        assert_within(
            aux_a["weight_mean"], aux_b["weight_mean"], 2 * (P + 1) * U32 * w[keep].sum() / keep.sum()
        )
        margins = np.abs(np.asarray(aux_a["margins"], np.float64))[keep]
        assert_within(
            aux_a["margin_mean"], aux_b["margin_mean"], 2 * (P + 1) * U32 * margins.sum() / keep.sum()
        )


def test_invalid_options_raise():
    pc, pr, rc, rr, w = random_inputs()
    with pytest.raises(ValueError, match="normalize"):
        weighted_dpo_loss(pc, pr, rc, rr, w, beta=BETA, normalize="tokens")
    with pytest.raises(ValueError, match="reference"):
        weighted_dpo_loss(pc, pr, None, None, w, beta=BETA)
    with pytest.raises(ValueError, match="label_smoothing"):
        weighted_dpo_loss(pc, pr, rc, rr, w, beta=BETA, label_smoothing=0.5)
    assert "weighted_dpo" in LOSSES


# ------------------------------------------------------------------------------------------------------
# Model level: a tiny Qwen3 over a toy vocabulary

CFG = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, tie_word_embeddings=False)  # fmt: skip
T = 32


def make_pair(rng, prompt_len, resp_lens, tool_span=True, weight=1.0, source="test"):
    """A pair with a shared prompt (mask 0) and responses with a mask-0 'tool output' span in the middle."""
    prompt = rng.integers(1, CFG.vocab_size, prompt_len)
    sides = []
    for n in resp_lens:
        resp = rng.integers(1, CFG.vocab_size, n)
        m = np.ones(n, np.uint8)
        if tool_span and n >= 8:
            m[n // 2 - 2 : n // 2 + 1] = 0
        sides.append(TokenizedExample(np.concatenate([prompt, resp]).astype(np.int32),
                                      np.concatenate([np.zeros(prompt_len, np.uint8), m]), source))  # fmt: skip
    return PreferencePair(sides[0], sides[1], float(weight), source)


def make_pairs(P=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(P):
        pl = int(rng.integers(3, 9))
        lens = [int(rng.integers(4, T + 1 - pl)), int(rng.integers(4, T + 1 - pl))]
        out.append(make_pair(rng, pl, lens, weight=float(rng.uniform(0.1, 2.0)), source=f"pair{i}"))
    return out


def pair_batch(pairs, with_ref=False):
    batch, n = next(eval_batches(pairs, seq_len=T, batch_pairs=len(pairs), with_ref=with_ref))
    assert n == len(pairs)
    return batch


def params_for_test(seed=0, std=0.3):
    # A larger init than the default makes the logits far from uniform, so gradients are well above noise.
    return init_params(CFG, jax.random.key(seed), std=std)


def reference_pair_logps(params, batch):
    """[P, 2] summed log-probs from full logits (no chunking), log-softmax in float64 numpy."""
    P = batch["tokens"].shape[0]
    tok = batch["tokens"].reshape(2 * P, T)
    logits, _ = forward(params, jnp.asarray(tok), CFG, positions=jnp.asarray(batch["positions"].reshape(2 * P, T)),
                        segment_ids=jnp.asarray(batch["segment_ids"].reshape(2 * P, T)))  # fmt: skip
    lg = np.asarray(logits, np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    tg = batch["targets"].reshape(2 * P, T)
    picked = np.take_along_axis(lg, tg[..., None], -1)[..., 0]
    m = batch["loss_mask"].reshape(2 * P, T) * (batch["segment_ids"].reshape(2 * P, T) != 0)
    return ((picked - lse) * m).sum(-1).reshape(P, 2)


def test_pair_logps_match_full_logits_and_loss_matches_numpy():
    params = params_for_test()
    pairs = make_pairs()
    batch = pair_batch(pairs)
    got = np.asarray(pair_logps(params, CFG, batch, chunk_size=8))
    want = reference_pair_logps(params, batch)
    assert_within(got, want, summed_logp_atol(params, CFG, batch, 2 * CFG.hidden_size), "pair log-probs")
    # the jitted loss below is another program: the whole forward may reorder
    d_logp = summed_logp_atol(params, CFG, batch, logits_depth(CFG, T)).max(-1)
    ref = want + np.random.default_rng(1).normal(0, 2.0, want.shape)
    batch["ref_logps"] = ref.astype(np.float32)
    for normalize in ("pairs", "weights"):
        loss_fn = jax.jit(
            functools.partial(make_dpo_loss(beta=BETA, normalize=normalize, chunk_size=8), model_cfg=CFG)
        )
        loss, aux = loss_fn(params, batch)
        w = batch["weight"]
        np_loss, *_ = np_weighted_dpo(want[:, 0], want[:, 1], ref[:, 0], ref[:, 1], w, beta=BETA,
                                      reference_free=False, ls=0.0, normalize=normalize)  # fmt: skip
        b = fp32_pair_bounds(want[:, 0], want[:, 1], ref[:, 0], ref[:, 1], w, beta=BETA, reference_free=False,
                             ls=0.0, normalize=normalize, d_logp=d_logp)  # fmt: skip
        assert_within(float(loss), np_loss, b["loss"], normalize)
        if normalize == "pairs":
            assert float(aux["weight"]) == 8.0  # a count
        else:  # an 8-term fp32 sum of weights
            assert_within(float(aux["weight"]), w.sum(), 8 * U32 * np.abs(w).sum())


def test_padding_pairs_change_nothing_at_model_level():
    """A batch padded with empty pairs (eval / reference tails) gives the loss and sums of the real pairs."""
    params = params_for_test(seed=13)
    pairs = make_pairs(P=3, seed=14)
    real = pair_batch(pairs)
    padded, n = next(eval_batches(pairs, seq_len=T, batch_pairs=5, with_ref=False))
    assert n == 3 and padded["tokens"].shape[0] == 5
    for b in (real, padded):
        b["ref_logps"] = np.zeros((b["tokens"].shape[0], 2), np.float32) - 40.0
    for normalize in ("pairs", "weights"):
        loss_fn = jax.jit(
            functools.partial(make_dpo_loss(beta=BETA, normalize=normalize, chunk_size=8), model_cfg=CFG)
        )
        la, aux_a = loss_fn(params, real)
        lb, aux_b = loss_fn(params, padded)
        # Two compiled programs (3 vs 5 pairs): the real pairs' log-probs within summed_logp_atol, then the
        # pair loss's own fp32 error in each (fp32_pair_bounds).
        lp = reference_pair_logps(params, real)
        d_logp = summed_logp_atol(params, CFG, real, logits_depth(CFG, T))
        b = fp32_pair_bounds(lp[:, 0], lp[:, 1], real["ref_logps"][:, 0], real["ref_logps"][:, 1], real["weight"],
                             beta=BETA, reference_free=False, ls=0.0, normalize=normalize, d_logp=d_logp.max(-1))  # fmt: skip
        assert_within(float(lb), float(la), 2 * b["loss"], "loss")
        assert float(aux_b["sum_pairs"]) == 3.0 and float(aux_b["weight"]) == float(aux_a["weight"])
        w3 = np.abs(real["weight"]).sum()
        x = np.abs(lp[:, 0] - lp[:, 1] - real["ref_logps"][:, 0] + real["ref_logps"][:, 1])
        assert np.all(BETA * x > b["x"])  # no margin within its error of 0: the counts agree exactly
        bounds = {"sum_pair_weight": 2 * 3 * U32 * w3, "weight": 2 * 3 * U32 * w3,
                  "sum_margin": 2 * (b["x"].sum() + 3 * U32 * BETA * x.sum()),
                  "sum_chosen_reward": 2 * (b["cr"].sum() + 3 * U32 * BETA * np.abs(lp[:, 0] - real["ref_logps"][:, 0]).sum()),
                  "sum_rejected_reward": 2 * (b["rj"].sum() + 3 * U32 * BETA * np.abs(lp[:, 1] - real["ref_logps"][:, 1]).sum())}  # fmt: skip
        for k in aux_a:
            if k in bounds:
                assert_within(float(aux_b[k]), float(aux_a[k]), bounds[k], k)
            else:  # counts (pairs, correct pairs, response tokens)
                assert float(aux_b[k]) == float(aux_a[k]), k


def test_param_gradient_matches_finite_differences():
    """d loss / d theta on a few coordinates vs central differences of the fp32 loss.

    Error budget: the fp32 loss has rounding noise delta ~1e-6 (sums of ~50 log-probs of size ~5 at rel 1e-7,
    times beta = 1); a central difference with step h errs by ~delta / h + h^2 |f'''| / 6 ~ 1e-4 + 1e-5 for
    h = 1e-2. The coordinates checked have |g| >= 1e-2, so tol = 5e-4 + 2% still fails a wrong gradient (a
    missing beta, a dropped chosen/rejected term, or a sign error changes it by O(|g|)).
    """
    params = params_for_test(seed=2)
    pairs = make_pairs(P=4, seed=3)
    batch = pair_batch(pairs)
    batch["ref_logps"] = (reference_pair_logps(params, batch) + 1.5).astype(np.float32)
    loss_fn = make_dpo_loss(beta=1.0, normalize="weights", chunk_size=8)

    def f(p):
        return loss_fn(p, batch, CFG)[0]

    grads = jax.jit(jax.grad(f))(params)
    f_jit = jax.jit(f)
    checked = 0
    for name in ("embed", "lm_head", "final_norm"):
        g = np.asarray(grads[name])
        flat = np.argsort(np.abs(g).ravel())[-2:]  # the largest entries: far above the FD noise
        for idx in flat:
            i = np.unravel_index(idx, g.shape)
            h = 1e-2
            up = jax.tree.map(lambda x: x, params)
            dn = jax.tree.map(lambda x: x, params)
            up[name] = params[name].at[i].add(h)
            dn[name] = params[name].at[i].add(-h)
            fd = (float(f_jit(up)) - float(f_jit(dn))) / (2 * h)
            assert abs(g[i]) >= 1e-2, (name, i, g[i])
            assert abs(fd - g[i]) <= 5e-4 + 2e-2 * abs(g[i]), (name, i, fd, g[i])
            checked += 1
    q = np.asarray(grads["layers"]["q"])
    i = np.unravel_index(np.argmax(np.abs(q)), q.shape)
    up = jax.tree.map(lambda x: x, params)
    dn = jax.tree.map(lambda x: x, params)
    up["layers"] = dict(params["layers"], q=params["layers"]["q"].at[i].add(1e-2))
    dn["layers"] = dict(params["layers"], q=params["layers"]["q"].at[i].add(-1e-2))
    fd = (float(f_jit(up)) - float(f_jit(dn))) / 2e-2
    assert abs(fd - q[i]) <= 5e-4 + 2e-2 * abs(q[i]), (fd, q[i])
    assert checked == 6


@functools.cache
def _value_and_grad(**kw):
    # One jitted function per option set (compiled once per batch shape), instead of op-by-op evaluation.
    loss_fn = make_dpo_loss(beta=BETA, chunk_size=8, **kw)
    return jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, CFG), has_aux=True))


def _loss_and_grads(params, batch, **kw):
    (loss, _), g = _value_and_grad(**kw)(params, batch)
    return float(loss), g


def test_masks_targets_outside_responses_change_nothing():
    """What is invariant, precisely.

    The loss depends on (a) every INPUT token up to the last loss-masked position of its row - prompt tokens
    and tool-output tokens condition the response tokens after them - and (b) the TARGET ids only at
    loss-masked positions. So: changing targets where loss_mask = 0 (the prompt's next tokens, the tool
    output's own tokens as targets, padding) and changing input tokens after a row's last loss-masked
    position (padding) leave loss and gradient bit-identical. Changing a prompt token, or a tool-output token
    as input, does change it (asserted too, so the invariance checks are not vacuous).
    """
    params = params_for_test(seed=4)
    batch = pair_batch(make_pairs(seed=5))
    batch["ref_logps"] = np.zeros((8, 2), np.float32) - 30.0
    base_loss, base_g = _loss_and_grads(params, batch)
    rng = np.random.default_rng(0)
    m = batch["loss_mask"] * (batch["segment_ids"] != 0)
    assert (m == 0).any() and (m == 1).any()
    # Targets at every mask-0 position (prompt, tool output, padding) replaced by random ids.
    b2 = {k: v.copy() for k, v in batch.items()}
    b2["targets"] = np.where(m == 0, rng.integers(0, CFG.vocab_size, m.shape), batch["targets"]).astype(
        np.int32
    )
    assert (b2["targets"] != batch["targets"]).sum() > 20
    loss2, g2 = _loss_and_grads(params, b2)
    assert loss2 == base_loss
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(base_g)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Input tokens after each row's last loss-masked position.
    b3 = {k: v.copy() for k, v in batch.items()}
    last = np.where(m.any(-1), T - 1 - np.argmax(m[..., ::-1], -1), -1)  # [P, 2]
    after = np.arange(T)[None, None, :] > last[..., None]
    b3["tokens"] = np.where(after, rng.integers(0, CFG.vocab_size, m.shape), batch["tokens"]).astype(np.int32)
    assert (b3["tokens"] != batch["tokens"]).sum() > 20
    loss3, _ = _loss_and_grads(params, b3)
    assert loss3 == base_loss
    # Controls: a prompt token (input) and a tool-output token (input) condition what follows.
    b4 = {k: v.copy() for k, v in batch.items()}
    b4["tokens"][0, 0, 1] = (b4["tokens"][0, 0, 1] + 1) % CFG.vocab_size
    assert abs(_loss_and_grads(params, b4)[0] - base_loss) > 1e-7
    b5 = {k: v.copy() for k, v in batch.items()}
    p, s = next((p, s) for p in range(8) for s in range(2) if (batch["segment_ids"][p, s] != 0).sum() >= 12)
    row_m = m[p, s]
    tool = [
        t for t in range(1, T) if row_m[t] == 0 and row_m[:t].any()
    ]  # a mask-0 position inside the response
    assert tool, "fixture has a tool-output span"
    b5["tokens"][p, s, tool[0] + 1] = (b5["tokens"][p, s, tool[0] + 1] + 1) % CFG.vocab_size
    assert abs(_loss_and_grads(params, b5)[0] - base_loss) > 1e-7
    # And a target at a loss-masked position does count.
    b6 = {k: v.copy() for k, v in batch.items()}
    t1 = int(np.argmax(m[0, 0]))
    b6["targets"][0, 0, t1] = (b6["targets"][0, 0, t1] + 1) % CFG.vocab_size
    assert abs(_loss_and_grads(params, b6)[0] - base_loss) > 1e-7


def test_weight_zero_pair_tokens_do_not_reach_the_param_gradient():
    params = params_for_test(seed=6)
    batch = pair_batch(make_pairs(seed=7))
    batch["ref_logps"] = np.zeros((8, 2), np.float32) - 30.0
    batch["weight"][3] = 0.0
    loss, g = _loss_and_grads(params, batch, normalize="weights")
    b2 = {k: v.copy() for k, v in batch.items()}
    rng = np.random.default_rng(1)
    seg = batch["segment_ids"][3] != 0
    b2["tokens"][3] = np.where(seg, rng.integers(1, CFG.vocab_size, seg.shape), 0)
    b2["targets"][3] = np.where(seg, rng.integers(1, CFG.vocab_size, seg.shape), 0)
    b2["ref_logps"][3] = [-1e4, 5.0]
    loss2, g2 = _loss_and_grads(params, b2, normalize="weights")
    # The same compiled program on the same shapes: the other rows' arithmetic is identical (no output element's
    # reduction involves row 3's values), row 3 contributes exact zeros (where, not a product) to the loss and
    # to every gradient sum: bitwise equal.
    assert loss2 == loss
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reference_precompute_and_on_the_fly_agree():
    params = params_for_test(seed=8)
    pairs = make_pairs(P=5, seed=9)
    # batch_pairs=2: three batches, the last one padded; each value must match its own pair.
    stored = precompute_reference_logps(params, CFG, pairs, seq_len=T, batch_pairs=2, chunk_size=8)
    direct = reference_pair_logps(params, pair_batch(pairs))
    got = np.array([[p.ref_chosen_logp, p.ref_rejected_logp] for p in stored])
    # a compiled reference pass over batches of 2 vs the eager full batch: two programs (tests/tolerances.py)
    S = summed_logp_atol(params, CFG, pair_batch(pairs), logits_depth(CFG, T))
    assert_within(got, direct, S, "precomputed")
    assert [p.source for p in stored] == [p.source for p in pairs]
    # Policy == reference: delta = 0 up to rounding, so every pair's loss is log 2 (loss = log 2 * mean w).
    batch = pair_batch(stored, with_ref=True)
    loss, aux = make_dpo_loss(beta=BETA, chunk_size=8)(params, batch, CFG)
    # delta = beta (policy - stored) errs by the two sides' S; the pair loss at delta = 0 by fp32_pair_bounds
    b = fp32_pair_bounds(direct[:, 0], direct[:, 1], direct[:, 0], direct[:, 1], batch["weight"], beta=BETA,
                         reference_free=False, ls=0.0, normalize="pairs", d_logp=S.max(-1))  # fmt: skip
    assert_within(float(loss), np.log(2.0) * batch["weight"].mean(), b["loss"], "loss at delta = 0")
    assert_within(float(aux["sum_margin"]), 0.0, b["x"].sum(), "sum of margins at delta = 0")
    # On the fly: the same values added per batch from params held in memory.
    it = with_reference_logps(iter([pair_batch(pairs)]), params, CFG, chunk_size=8)
    assert_within(np.asarray(next(it)["ref_logps"]), got, S, "on the fly")
    # The wrapper resumes through the wrapped grain iterator's state.
    it = with_reference_logps(iter(make_pair_dataset(pairs, seq_len=T, batch_pairs=2, seed=1)), params, CFG,
                              chunk_size=8)  # fmt: skip
    next(it)
    state = it.get_state()
    a = next(it)
    it.set_state(state)
    b = next(it)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    by_first_token = {int(p.chosen.ids[0]): g for p, g in zip(pairs, got)}
    for i in range(2):
        j = [int(p.chosen.ids[0]) for p in pairs].index(int(a["tokens"][i, 0, 0]))
        assert_within(a["ref_logps"][i], by_first_token[int(a["tokens"][i, 0, 0])], S[j], "resumed")
    if jax.device_count() >= 8:  # the same pass sharded over a (2, 2, 2) mesh
        from storm_jax.models.qwen import param_logical_axes
        from storm_jax.parallel.mesh import MeshRules, make_mesh, tree_shardings

        rules = MeshRules(make_mesh(2, 2, 2))
        p_sh = tree_shardings(params, param_logical_axes(CFG), rules)
        sharded = precompute_reference_logps(jax.device_put(params, p_sh), CFG, pairs, seq_len=T, batch_pairs=4,
                                             chunk_size=8, mesh_rules=rules, params_sharding=p_sh)  # fmt: skip
        got8 = np.array([[p.ref_chosen_logp, p.ref_rejected_logp] for p in sharded])
        assert_within(got8, got, S, "sharded reference pass")


# ------------------------------------------------------------------------------------------------------
# The generic train step with this loss: sharding and gradient accumulation


def _optim_cfg():
    # eps=1e-3 keeps Adam's first update a smooth function of the gradient (as in tests/test_train_step.py).
    return ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, decay="constant", min_lr_ratio=0.0,
                                          weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-3, clip_norm=1.0))  # fmt: skip


def _run_step(mesh_shape, batch, devices, grad_accum=1, normalize="pairs"):
    from storm_jax.parallel.mesh import MeshRules, make_mesh
    from storm_jax.train.optim import make_optimizer
    from storm_jax.train.state import init_train_state, state_shardings
    from storm_jax.train.step import make_train_step

    rules = MeshRules(make_mesh(*mesh_shape, devices=devices))
    opt, sched = make_optimizer(_optim_cfg(), 10)
    state = init_train_state(params_for_test(seed=10, std=0.05), opt, 0)
    sh = state_shardings(jax.eval_shape(lambda: state), CFG, rules)
    state = jax.device_put(state, sh)
    loss = make_dpo_loss(beta=BETA, normalize=normalize, chunk_size=8, mesh_rules=rules)
    step = make_train_step(loss, CFG, opt, sched, mesh_rules=rules, state_sharding=sh, grad_accum=grad_accum)
    new_state, metrics = step(state, batch)
    return jax.device_get(new_state.params), jax.device_get(metrics)


@pytest.mark.parametrize("normalize", ["pairs", "weights"])
def test_sharded_and_accumulated_step_match_single_device(normalize):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    pairs = make_pairs(P=8, seed=12)
    batch = pair_batch(pairs)
    batch["ref_logps"] = np.random.default_rng(2).uniform(-60, -20, (8, 2)).astype(np.float32)
    batch["weight"][2] = 0.0
    ref_params, ref_m = _run_step((1, 1, 1), batch, jax.devices()[:1], normalize=normalize)
    # Sharded / accumulated vs one device: two programs (tests/tolerances.py). The summed log-probs within S,
    # the pair loss's own fp32 error in each; the gradients reorder the forward, the backward and the sum over
    # the 2 P T tokens, plus the T-term sums, the P-term pair sum and the micro-batch combination (4).
    init = params_for_test(seed=10, std=0.05)
    lp = reference_pair_logps(init, batch)
    S = summed_logp_atol(init, CFG, batch, logits_depth(CFG, T))
    rc, rr, w = batch["ref_logps"][:, 0], batch["ref_logps"][:, 1], batch["weight"]
    b = fp32_pair_bounds(lp[:, 0], lp[:, 1], rc, rr, w, beta=BETA, reference_free=False, ls=0.0,
                         normalize=normalize, d_logp=S.max(-1))  # fmt: skip
    x = np.abs(BETA * (lp[:, 0] - rc - lp[:, 1] + rr))
    assert np.all(x > b["x"])  # no margin within its error of 0: the correct-pair counts agree exactly
    loss_fn = make_dpo_loss(beta=BETA, normalize=normalize, chunk_size=8)
    grads = jax.device_get(jax.grad(lambda p: loss_fn(p, batch, CFG)[0])(init))
    oc = _optim_cfg()
    depth = 2 * logits_depth(CFG, T) + 2 * 8 * T + T + 8 + 4
    params_atol, norm_atol = adam_first_step_atol(grads, init, lr=oc.lr, eps=oc.eps, clip_norm=oc.clip_norm,
                                                  depth=depth)  # fmt: skip
    P = len(w)
    metric_atol = {
        "dpo_accuracy": 0.0,  # the same count over the same count
        "dpo_margin": 2 * (b["x"].sum() + (P + 1) * U32 * x.sum()) / P,
        "dpo_chosen_reward": 2 * (b["cr"].sum() + (P + 1) * U32 * BETA * np.abs(lp[:, 0] - rc).sum()) / P,
        "dpo_rejected_reward": 2 * (b["rj"].sum() + (P + 1) * U32 * BETA * np.abs(lp[:, 1] - rr).sum()) / P,
        "dpo_weight_mean": 2 * (P + 4) * U32 * np.abs(w).sum() / P,
    }
    for shape, devs, accum in (((2, 2, 2), jax.devices(), 1), ((1, 2, 1), jax.devices()[:2], 4)):
        params, m = _run_step(shape, batch, devs, grad_accum=accum, normalize=normalize)
        assert_within(m["loss"], ref_m["loss"], 2 * b["loss"] + 4 * U32 * float(b["per"].sum()) / P, "loss")
        assert_within(m["grad_norm"], ref_m["grad_norm"], norm_atol, "grad_norm")
        assert m["sum_pairs"] == 8.0  # a count
        assert_within(m["sum_pair_weight"], w.sum(), (P + 4) * U32 * np.abs(w).sum(), "sum_pair_weight")
        assert m["sum_pairs_correct"] == ref_m["sum_pairs_correct"]
        for k, v in dpo_metrics(m).items():
            assert_within(v, dpo_metrics(ref_m)[k], metric_atol[k], k)
        for a, b_, tol in zip(
            jax.tree.leaves(params), jax.tree.leaves(ref_params), jax.tree.leaves(params_atol)
        ):
            assert_within(a, b_, tol, "params")
    assert np.abs(ref_params["lm_head"] - np.asarray(init["lm_head"])).max() > 1e-3
    # The step's loss is the weighted DPO loss of the batch (numpy reference on the initial params).
    want, *_ = np_weighted_dpo(lp[:, 0], lp[:, 1], rc, rr, w, beta=BETA, reference_free=False, ls=0.0,
                               normalize=normalize)  # fmt: skip
    assert_within(ref_m["loss"], want, b["loss"], "loss vs numpy")


def test_recipe_config_marks_unpublished_values():
    from pathlib import Path

    from storm_jax.config import base_config, load_config_file
    from storm_jax.train.dpo_loss import dpo_defaults, loss_from_config

    path = Path(__file__).resolve().parents[1] / "storm_jax" / "configs" / "steporlm_dpo.py"
    for arg in ("", ":tiny"):
        c = load_config_file(f"{path}{arg}")
        assert c.recipe == "dpo" and set(c.dpo.keys()) == set(dpo_defaults().keys())
        assert set(c.keys()) == set(base_config().keys()) and "dpo" in c
        assert c.data.batch_size % c.train.grad_accum == 0 and not c.data.pack
        assert callable(loss_from_config(c.dpo, chunk_size=c.train.logprob_chunk, mesh_rules=None))
    full_scale = path.read_text().split("def tiny")[0]  # the real recipe, not the CPU variant
    lines = {ln.split("=")[0].strip(): ln for ln in full_scale.splitlines() if "=" in ln}
    for key in ("c.dpo.beta", "c.optim.lr", "c.data.num_epochs"):
        assert "GUESS" in lines[key], key


def test_pipeline_rows_to_steps_fits_training_pairs(tmp_path):
    """Token rows -> pairs -> precomputed reference -> resumable iterator -> make_train_step: the pieces fit,
    and a few steps on 8 pairs drive the training-pair loss down from w * log 2 and the accuracy up."""
    import json

    from storm_jax.data.preference import PreferenceDataConfig, load_pairs, make_preference_iterator
    from storm_jax.parallel.mesh import MeshRules, make_mesh
    from storm_jax.train.optim import make_optimizer
    from storm_jax.train.state import init_train_state, state_shardings
    from storm_jax.train.step import make_train_step

    rng = np.random.default_rng(20)
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for _ in range(8):
            c, r = rng.integers(1, CFG.vocab_size, 10).tolist(), rng.integers(1, CFG.vocab_size, 9).tolist()
            f.write(json.dumps({"prompt_ids": rng.integers(1, CFG.vocab_size, 5).tolist(), "chosen_ids": c,
                                "chosen_mask": [1] * 10, "rejected_ids": r, "rejected_mask": [1] * 9,
                                "weight": 1.0}) + "\n")  # fmt: skip
    pairs, stats = load_pairs(str(path), seq_len=T)
    assert stats.pairs == 8
    params = params_for_test(seed=21, std=0.05)
    pairs = precompute_reference_logps(params, CFG, pairs, seq_len=T, batch_pairs=4, chunk_size=8)
    cfg = PreferenceDataConfig(path=str(path), seq_len=T, batch_size=8, seed=0)
    it = make_preference_iterator(cfg, pairs=pairs, process_index=0, process_count=1)
    rules = MeshRules(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    oc = _optim_cfg()
    oc.lr = 3e-3
    opt, sched = make_optimizer(oc, 20)
    state = init_train_state(params, opt, 0)
    sh = state_shardings(jax.eval_shape(lambda: state), CFG, rules)
    state = jax.device_put(state, sh)
    step = make_train_step(make_dpo_loss(beta=0.5, chunk_size=8, mesh_rules=rules), CFG, opt, sched,
                           mesh_rules=rules, state_sharding=sh)  # fmt: skip
    # Step 0 sees policy == reference: delta = 0 up to rounding (the reference pass batched 4 pairs, the
    # step 8: two compiled programs, so the sums differ in the last bits; "delta > 0" there is a coin flip).
    # |delta| <= beta (b_chosen + b_rejected) with b the summed log-prob bound of two programs; the loss
    # -log sigmoid(delta) = log 2 - delta / 2 + delta^2 / 8 - ..., so |loss - log 2| <= max|delta| / 2 + max|delta|^2
    # / 8, plus its own fp32 roundings (exp, log1p, the 8-pair mean: (TRANSCENDENTAL + 8) u log 2).
    first = next(it)
    b_pair = summed_logp_atol(params, CFG, first, logits_depth(CFG, T))  # before the step donates params
    d_max = float(0.5 * (b_pair[:, 0] + b_pair[:, 1]).max())  # beta = 0.5
    own = (2 * TRANSCENDENTAL + 8) * U32 * np.log(2.0)
    history = []
    for i in range(15):
        state, m = step(state, first if i == 0 else next(it))
        d = dpo_metrics(jax.device_get(m))
        history.append((float(m["loss"]), d["dpo_accuracy"], d["dpo_margin"]))
    assert abs(history[0][0] - np.log(2.0)) <= d_max / 2 + d_max**2 / 8 + own, (history[0], d_max)
    assert abs(history[0][2]) <= d_max + 8 * U32 * d_max, (history[0], d_max)  # the margin: a mean of deltas
    assert history[-1][0] < 0.5 * np.log(2.0) and history[-1][1] >= 0.9 and history[-1][2] > 1.0, history
