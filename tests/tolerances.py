"""Float tolerances derived from the arithmetic, not from what one CPU happened to produce.

Two valid programs for the same fp32 computation (a scan vs a Python loop over layers, a fused vs an unfused
kernel, one device vs a sharded mesh, Intel vs AMD vector widths) may sum the same terms in different orders.
A sum of n terms in fp32 is within n·u·Σ|terms| of the exact sum in any order (u = 2^-24, the unit roundoff),
so two orders differ by at most 2·n·u·Σ|terms|. Through a chain of such reductions the first-order errors add,
each relative to the magnitudes entering it; in these models every layer re-normalizes its input (RMSNorm), so
the magnitudes stay of the order of the compared tensor's own. Hence the bound used throughout:

    |a - b| <= 2 · depth · u · max|b|

with `depth` the summed length of the reductions on the path from the inputs to the compared value. This is a
first-order bound (no Jacobian amplification beyond O(1)); it is used only where the *same* computation runs
under two programs. Claims against an independent implementation (1e-4 on logits against transformers) are
claims, not derived bounds, and are never loosened to fit.
"""

from __future__ import annotations

import numpy as np

#: fp32 unit roundoff (half the machine epsilon).
U32 = 2.0**-24


def reorder_atol(reference, depth: int) -> float:
    """Bound on |a - b| for two evaluation orders of the same fp32 computation of `reference`."""
    return 2.0 * depth * U32 * float(np.max(np.abs(np.asarray(reference))))


def layer_depth(cfg, seq_len: int) -> int:
    """Summed reduction lengths of one Qwen decoder layer at `seq_len` keys (norms, projections, attention, MLP)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    qk_norm = 2 * hd if cfg.model_type == "qwen3" else 0  # q/k RMSNorm over head_dim
    attention = hd + 2 * seq_len  # scores over head_dim, softmax denominator and probs x values over keys
    attention += rescale_depth(cfg, seq_len)
    return (d + d) + qk_norm + attention + cfg.num_heads * hd + (d + d + cfg.intermediate_size)


def rescale_depth(cfg, seq_len: int) -> int:
    """Extra roundings of an online softmax (blockwise / splash attention) over `seq_len` keys; 0 for dense.

    Per key block the running numerator and denominator are each multiplied by exp(m_old - m_new): at most
    three roundings (the exp and two products; the same rounded factor scales both, so its own error largely
    cancels in their ratio, which the bound does not rely on), plus one final division."""
    impl = getattr(cfg, "attention_impl", "dense")
    if impl in ("dense", "auto"):  # auto is dense off TPU, where these tests run
        return 0
    return 3 * -(-seq_len // max(1, getattr(cfg, "attention_block_kv", seq_len))) + 1


def logits_depth(cfg, seq_len: int) -> int:
    """Reduction depth of the logits: every layer, the final norm and the vocabulary projection."""
    return cfg.num_layers * layer_depth(cfg, seq_len) + 2 * cfg.hidden_size


def keys_depth(cfg, seq_len: int) -> int:
    """Reduction depth of the last layer's cached keys: the layers below, its input norm, k projection, k norm."""
    k_norm = cfg.head_dim if cfg.model_type == "qwen3" else 0
    return (cfg.num_layers - 1) * layer_depth(cfg, seq_len) + 2 * cfg.hidden_size + k_norm


# ----------------------------------------------------------------------------------------------------------
# fp32 JAX against a float64 numpy reference on the same (exactly representable) fp32 inputs: the reference
# is exact to ~2^-53, so the bound is the fp32 evaluation's own error, counted from its operations.
# ----------------------------------------------------------------------------------------------------------

#: float64 unit roundoff.
U64 = 2.0**-53

#: Relative error of XLA's fp32 exp, log, log1p and logistic (log_sigmoid and softplus are built from them),
#: in units of u: at most 2 ulp, and 1 ulp is at most 2u relative. Basic operations (+ - * / sqrt) round
#: correctly, each within u of its exact result relative to that result.
TRANSCENDENTAL = 4


def sum_atol(terms, depth: int | None = None) -> float:
    """Bound on |fp32 sum - exact sum| of `terms` in any order: depth · u · Σ|terms|.

    depth defaults to the number of terms (n - 1 additions, plus one for a final division or scaling); pass
    the total length of nested reductions and the divisions applied after them where there are several."""
    t = np.abs(np.asarray(terms, np.float64))
    return (t.size if depth is None else depth) * U32 * float(t.sum())


def assert_within(actual, desired, bound, err_msg: str = "") -> None:
    """|actual - desired| <= bound elementwise (bound may be an array: a per-element derived error)."""
    actual, desired, bound = np.broadcast_arrays(
        np.asarray(actual, np.float64), np.asarray(desired, np.float64), np.asarray(bound, np.float64)
    )
    diff = np.abs(actual - desired)
    bad = ~(diff <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, diff - bound, -np.inf)), bad.shape)
        raise AssertionError(
            f"{err_msg} {int(bad.sum())}/{bad.size} elements outside the derived bound; worst at {i}: "
            f"actual {actual[i]!r}, desired {desired[i]!r}, |diff| {diff[i]:.3e} > bound {bound[i]:.3e}"
        )


def group_advantage_atol(ref, rewards, eps: float, *, ddof: int = 0, scale_by_std: bool = True):
    """Bound on |group_advantages(...) - ref| for one group: two float64 programs (the library's and a
    reference's, summing in any order) of A = (r - mean) / (std + eps), then the library's cast to fp32.

    In float64 (unit roundoff U64) the mean errs by (n + 1) U64 max|r| and the centered c = r - mean by
    dc = (n + 2) U64 max|r| -- an absolute error, large relative to c when the spread is near rounding level.
    std moves by at most dc sqrt(n / (n - ddof)) (Cauchy-Schwarz on sum |c| dc) plus its own (n + 2) U64 std,
    so A moves by (dc (1 + |A| sqrt(n / (n - ddof)))) / (std + eps) + (n + 3) U64 |A|. Twice that (two
    programs), plus u |ref| for the fp32 rounding of the result."""
    ref, r = np.abs(np.asarray(ref, np.float64)), np.asarray(rewards, np.float64)
    n = r.size
    dc = (n + 2) * U64 * float(np.abs(r).max())
    if not scale_by_std:
        return U32 * ref + 2 * dc
    std = float(np.sqrt(((r - r.mean()) ** 2).sum() / max(n - ddof, 1)))
    f64 = (dc * (1 + ref * np.sqrt(n / max(n - ddof, 1)))) / (std + eps) + (n + 3) * U64 * ref
    return U32 * ref + 2 * f64


def logprob_atol(logits, depth: int) -> float:
    """Bound on |a - b| for log-softmax values (picked logit minus log-sum-exp over V) from two programs whose
    logits are two evaluation orders of depth `depth` (reorder_atol), each log-softmax evaluated in fp32 in
    any order (a float64 reference on one side only makes this an upper bound).

    The picked logit and the log-sum-exp each move by at most the logits' error (the lse is 1-Lipschitz in
    the max norm): twice reorder_atol. Per program, lse = m + log(sum exp(l - m)): l - m rounds by u|l - m|,
    exp by TRANSCENDENTAL u, so the V-term sum errs by (V + TRANSCENDENTAL + range) u relative, as its log
    absolutely, plus the log's own TRANSCENDENTAL u and the roundings of m + log and of the picked - lse,
    u (|lse| + |logp|) <= u (2 max|l| + 2 log V)."""
    logits = np.asarray(logits, np.float64)
    V, l_max = logits.shape[-1], float(np.abs(logits).max())
    spread = float((logits.max(-1) - logits.min(-1)).max())
    own = (V + 2 * TRANSCENDENTAL + spread) * U32 + U32 * (2 * l_max + 2 * np.log(V))
    return 2 * reorder_atol(logits, depth) + 2 * own


def entropy_atol(logits, depth: int) -> float:
    """Bound on |a - b| for the entropy H = lse - sum_v p_v l_v from two programs (as logprob_atol).

    Logits moved by <= dl (reorder_atol): dH = -sum_v dp_v l_v = -sum_v p_v (dl_v - E dl)(l_v - E l), so
    |dH| <= 2 dl range(l). Per program: lse as in logprob_atol, then p = exp(l - lse) errs by
    (TRANSCENDENTAL + 2 + range) u relative, and the V-term sum of p l by V u sum p |l| <= V u max|l|, plus
    the final subtraction u (|lse| + max|l|)."""
    logits = np.asarray(logits, np.float64)
    V, l_max = logits.shape[-1], float(np.abs(logits).max())
    spread = float((logits.max(-1) - logits.min(-1)).max())
    lse = (V + 2 * TRANSCENDENTAL + spread) * U32 + U32 * (l_max + np.log(V))
    own = lse + (V + TRANSCENDENTAL + 2 + spread) * U32 * l_max + U32 * (2 * l_max + np.log(V))
    return 2 * reorder_atol(logits, depth) * spread + 2 * own


def adam_first_step_atol(grads, params, *, lr: float, eps: float, clip_norm: float, depth: int):
    """Per-element bounds on |p_a - p_b| after one AdamW step from zero moments (optax.adamw after
    clip_by_global_norm, as storm_jax.train.optim builds it) in two programs whose raw gradients are two
    evaluation orders, of depth `depth`, of `grads` (a tree of float64 arrays, the same structure as params).

    Returns (tree of bounds, bound on |grad_norm_a - grad_norm_b|).

    Each gradient leaf errs by dg = reorder_atol(leaf, depth). The global norm by ||dg|| plus its own sum of
    squares reordered (per-leaf sums, then across leaves: n = largest leaf + number of leaves, 2 n u relative
    in the square, n u in the norm). Clipping scales by s = clip / norm (when norm > clip), whose relative
    error is that of the norm plus 2 roundings. After bias correction the first update is
    f(g) = g / (|g| + eps) with f'(g) = eps / (|g| + eps)^2, taken at the low end of the interval (|g| - dg)+
    and capped at 2 (|f| < 1): the gradient's noise is amplified up to 1 / eps where |g| << eps. Each program
    rounds f about 10 times (moments, bias corrections, sqrt, + eps, division) relative to |f| <= 1, and the
    parameter update twice more (lr (f + wd p), p - that) relative to |p|."""
    import jax

    leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    p_leaves = [np.asarray(p, np.float64) for p in jax.tree.leaves(params)]
    norm = float(np.sqrt(sum(float((g**2).sum()) for g in leaves)))
    dgs = [reorder_atol(g, depth) for g in leaves]
    n_sq = max(g.size for g in leaves) + len(leaves)
    d_norm = float(np.sqrt(sum(d * d * g.size for d, g in zip(dgs, leaves)))) + n_sq * U32 * norm
    clipped = clip_norm > 0 and norm > clip_norm
    s = clip_norm / norm if clipped else 1.0
    rel_s = (d_norm / norm + 2 * U32) if clipped else 0.0
    out = []
    for g, dg, p in zip(leaves, dgs, p_leaves):
        gc = s * np.abs(g)
        dgc = s * dg + gc * rel_s
        sens = eps / (np.maximum(gc - dgc, 0.0) + eps) ** 2
        d_f = np.minimum(sens * dgc, 2.0)
        out.append(lr * (d_f + 2 * 10 * U32) + 2 * 2 * U32 * (np.abs(p) + lr))
    return jax.tree.unflatten(jax.tree.structure(params), out), d_norm


def summed_logp_atol(params, cfg, batch, depth: int):
    """[P, 2] bounds on |summed response log-probs of DPO pair batches ([P, 2, T]) from two programs|.

    Each loss-masked token's log-prob is within logprob_atol(logits, depth), n of them are summed, and each
    program's own T-term fp32 sum adds 2 T u sum |logp m|. depth: logits_depth for two compiled programs; 2 D
    (the final norm and the chunked projection) where both run the same eager forward on the same shapes,
    whose hidden states then agree."""
    import jax.numpy as jnp

    from storm_jax.models.qwen import forward

    P, _, T = batch["tokens"].shape
    flat = lambda k: jnp.asarray(np.asarray(batch[k]).reshape(2 * P, T))
    logits = forward(
        params, flat("tokens"), cfg, positions=flat("positions"), segment_ids=flat("segment_ids")
    )[0]
    lg = np.asarray(logits, np.float64)
    mx = lg.max(-1)
    lse = np.log(np.exp(lg - mx[..., None]).sum(-1)) + mx
    picked = np.take_along_axis(lg, np.asarray(flat("targets"))[..., None], -1)[..., 0]
    m = np.asarray(batch["loss_mask"]).reshape(2 * P, T) * (
        np.asarray(batch["segment_ids"]).reshape(2 * P, T) != 0
    )
    lp = (picked - lse) * m
    return (m.sum(-1) * logprob_atol(lg, depth) + 2 * T * U32 * np.abs(lp).sum(-1)).reshape(P, 2)


def fp32_pair_bounds(pc, pr, rc, rr, w, *, beta, reference_free, ls, normalize, d_logp=0.0):
    """Bounds on |JAX fp32 - float64| for weighted_dpo_loss's outputs (u = 2^-24; inputs exact fp32 values).

    log-ratio pc - rc rounds once, beta * it twice more (fp32(beta), the product): the rewards err by
    3 u |r|; delta = r_c - r_r by that of both plus u |delta|. d_logp (model level: two programs' summed
    log-probs) adds beta (d_logp_c + d_logp_r) to delta. log_sigmoid = -(max(-x, 0) + log1p(exp(-|x|))): 1-Lipschitz
    in x, (2 TRANSCENDENTAL + 1) u log 2 from exp and log1p, u |l| from the sum; the loss mixes the two sides with
    fp32(1 - ls), fp32(ls) and 3 roundings. The total is a sum of P products w l (P + 1 roundings), divided by
    the count or by a P-term fp32 sum of weights (P u relative more). The gradient w beta dl/dx / n: sigmoid
    via exp with (TRANSCENDENTAL + 2) u relative and |sigmoid'| <= 1/4 times delta's error, and 8 roundings
    (the coefficient 1 / n, w, the ls mix, fp32(beta), beta *).
    """
    f = lambda a: np.asarray(a, np.float64)
    pc, pr, w = f(pc), f(pr), f(w)
    rc, rr = (np.zeros_like(pc), np.zeros_like(pr)) if reference_free else (f(rc), f(rr))
    cr, rj = beta * (pc - rc), beta * (pr - rr)
    x = cr - rj
    e_cr, e_rj = 3 * U32 * np.abs(cr), 3 * U32 * np.abs(rj)
    e_x = e_cr + e_rj + U32 * np.abs(x) + beta * 2 * d_logp
    lp_c, lp_r = np.logaddexp(0.0, -x), np.logaddexp(0.0, x)  # -log_sigmoid(x), -log_sigmoid(-x)
    per = (1 - ls) * lp_c + ls * lp_r
    e_ls = (2 * TRANSCENDENTAL + 1) * U32 * np.log(2.0)
    e_per = e_x + (1 - ls) * (e_ls + U32 * lp_c) + ls * (e_ls + U32 * lp_r) + 3 * U32 * per
    keep = w > 0
    P = len(x)
    n = P if normalize == "pairs" else w.sum()
    wl = np.where(keep, w * per, 0.0)
    loss = float((np.where(keep, w * e_per, 0.0)).sum() / n + (P + 2) * U32 * wl.sum() / n)
    if normalize == "weights":
        loss += P * U32 * float(wl.sum() / n)
    sig_c, sig_r = 1 / (1 + np.exp(x)), 1 / (1 + np.exp(-x))  # sigmoid(-x), sigmoid(x)
    dl = (1 - ls) * sig_c + ls * sig_r
    grad = (
        w
        * beta
        / n
        * (e_x / 4 + (TRANSCENDENTAL + 10) * U32 * dl + (P * U32 * dl if normalize == "weights" else 0))
    )
    return dict(loss=loss, grad=np.where(keep, grad, 0.0), x=e_x, cr=e_cr + 2 * beta * d_logp,
                rj=e_rj + 2 * beta * d_logp, per=wl, margin_mean=float(e_x.sum() / P + (P + 1) * U32 * np.abs(x).sum() / P),
                weight_mean=(P + 1) * U32 * float(w.sum()) / P)  # fmt: skip
