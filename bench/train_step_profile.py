"""Where one SFT train step's time goes: the step of bench/train_step.py split into separately jitted pieces.

  python bench/train_step_profile.py [--seq 512] [--batch 4] [--chunk 0] [--unfused] [--dtype float32] [--repeats 3]

Pieces (each its own jax.jit on the same params and batch, median wall time of --repeats calls after a warm-up;
GFLOP from XLA's compiled cost analysis of that piece):
  trunk       forward through the layers to the final-normed hidden states (no vocabulary projection)
  head        vocabulary projection + log-softmax + target pick on those hidden states (forward only)
  loss        the SFT loss as the trainer computes it (trunk + head, forward only)
  head_grad   value and gradient of the head w.r.t. (hidden, embedding table)
  embed_grad  gradient of the input embedding gather w.r.t. the table (the scatter-add the tied table receives)
  grad        value and gradient of the SFT loss w.r.t. all params (forward + backward)
  optimizer   the AdamW update + apply on gradients of the params' shapes
  step        the trainer's jitted step (grad + optimizer + metrics, state donated)
Derived: backward = grad - loss; step overhead = step - grad - optimizer (what the fused step saves or costs
against running its pieces apart). Pieces overlap (trunk is inside loss, loss inside grad), so the rows do not add
up to the step; the derived rows are the differences that do.
XLA's cost analysis counts the body of a lax.scan once, not once per layer: the GFLOP (and so GFLOP/s) of the
pieces that run the scanned layers (trunk, loss, grad, step) are under-counted by about the layer count; their
wall times are what the breakdown uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from train_step import build_jax_run, cpu_model  # bench/ is sys.path[0] when run as a script


def timed(fn, *args, repeats: int) -> dict:
    """Compile fn (a jitted function), run it once, then the median wall time of `repeats` calls; GFLOP from the
    compiled cost analysis."""
    import jax

    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    gflop = float(cost.get("flops", float("nan"))) / 1e9
    return {"s": s, "gflop": gflop, "gflop_per_s": gflop / s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--unfused", action="store_true")
    ap.add_argument("--dtype", default="float32", help="compute dtype (master weights stay fp32)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from storm_jax.models.qwen import forward
    from storm_jax.train.metrics import measure_cpu_peak_flops

    run, state, (batch,) = build_jax_run(a.seq, a.batch, 1, "none", a.chunk, not a.unfused, a.dtype)
    cfg, params = run.model_cfg, state.params
    tokens, targets = batch["tokens"], batch["targets"]

    def trunk(p):
        h, _ = forward(p, tokens, cfg, positions=batch["positions"], segment_ids=batch["segment_ids"],
                       mesh_rules=run.mesh_rules, return_hidden=True)  # fmt: skip
        return h

    h = jax.jit(trunk)(params)
    table = params["embed"]

    def head(h, table):
        logits = jnp.einsum("btd,vd->btv", h, table.astype(h.dtype), preferred_element_type=jnp.float32)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0].mean()

    def loss(p):
        return run.loss_fn(p, batch, cfg)[0]

    def embed_gather(table):
        return (table[tokens].astype(jnp.float32) * g_hidden).sum()

    g_hidden = jax.random.normal(jax.random.key(0), (*tokens.shape, table.shape[1]), jnp.float32)
    grads = jax.tree.map(jnp.zeros_like, params)

    def opt(grads, opt_state, p):
        import optax

        updates, opt_state = run.optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    r = a.repeats
    res = {
        "trunk": timed(jax.jit(trunk), params, repeats=r),
        "head": timed(jax.jit(head), h, table, repeats=r),
        "loss": timed(jax.jit(loss), params, repeats=r),
        "head_grad": timed(jax.jit(jax.value_and_grad(head, argnums=(0, 1))), h, table, repeats=r),
        "embed_grad": timed(jax.jit(jax.grad(embed_gather)), table, repeats=r),
        "grad": timed(jax.jit(jax.value_and_grad(loss)), params, repeats=r),
        "optimizer": timed(jax.jit(opt), grads, state.opt_state, params, repeats=r),
    }
    # The trainer's step donates its state: time it on a fresh copy each call.
    step_times = []
    st = state
    st, m = run.train_step(st, batch)
    jax.block_until_ready(m)
    for _ in range(r):
        t = time.perf_counter()
        st, m = run.train_step(st, batch)
        jax.block_until_ready(m)
        step_times.append(time.perf_counter() - t)
    res["step"] = {"s": statistics.median(step_times)}
    res["backward (grad - loss)"] = {"s": res["grad"]["s"] - res["loss"]["s"]}
    res["step overhead (step - grad - optimizer)"] = {
        "s": res["step"]["s"] - res["grad"]["s"] - res["optimizer"]["s"]
    }
    peak = measure_cpu_peak_flops(n=2048) / 1e9 if jax.devices()[0].platform == "cpu" else float("nan")
    setup = {"seq": a.seq, "batch": a.batch, "chunk": a.chunk, "fused": not a.unfused, "dtype": a.dtype,
             "cpu": cpu_model(), "peak_gflops_measured": peak, "device": jax.devices()[0].device_kind}  # fmt: skip
    print(json.dumps({"setup": setup, "pieces": res}, indent=2))
    step_s = res["step"]["s"]
    print(f"\n{'piece':42s} {'seconds':>8s} {'share of step':>14s} {'GFLOP':>8s} {'GFLOP/s':>8s}")
    for name, v in res.items():
        gf = f"{v['gflop']:8.1f} {v['gflop_per_s']:8.1f}" if "gflop" in v else ""
        print(f"{name:42s} {v['s']:8.3f} {v['s'] / step_s:14.2f} {gf}")
    print(f"(measured fp32 matmul peak {peak:.1f} GFLOP/s; cpu {setup['cpu']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
