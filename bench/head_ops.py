"""The vocabulary head's operations alone, XLA:CPU (jax.jit) against torch (CPU) on the same arrays.

  python bench/head_ops.py [--tokens 2048] [--hidden 512] [--vocab 151936] [--repeats 3]

The anchor train step (bench/train_step.py, bench/train_step_profile.py) spends most of its time in the head:
logits = h @ E^T ([tokens, hidden] x [hidden, vocab]), the log-sum-exp over the vocabulary, and in the backward
pass dh = dlogits @ E and dE = dlogits^T @ h. This times each of those on its own, jax and torch alternating
call by call, and prints seconds, GFLOP/s (matmuls) or G elements/s (the rest) and the jax/torch speed ratio
(> 1: jax faster). Minimum over --repeats after one warm-up call each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from train_step import cpu_model  # bench/ is sys.path[0] when run as a script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    M, K, N = a.tokens, a.hidden, a.vocab
    rng = np.random.default_rng(0)
    h = rng.standard_normal((M, K), np.float32)
    e = rng.standard_normal((N, K), np.float32)
    g = rng.standard_normal((M, N), np.float32)
    jh, je, jg = (jnp.asarray(x) for x in (h, e, g))
    th, te, tg = (torch.from_numpy(x) for x in (h, e, g))
    mm = 2 * M * K * N / 1e9  # GFLOP of each product
    ops = {  # name: (jax fn, jax args, torch thunk, work, unit)
        "logits = h @ E^T": (lambda h, e: h @ e.T, (jh, je), lambda: th @ te.T, mm, "GFLOP/s"),
        "dh = dlogits @ E": (lambda g, e: g @ e, (jg, je), lambda: tg @ te, mm, "GFLOP/s"),
        "dE = dlogits^T @ h": (lambda g, h: g.T @ h, (jg, jh), lambda: tg.T @ th, mm, "GFLOP/s"),
        "exp": (jnp.exp, (jg,), lambda: torch.exp(tg), M * N / 1e9, "Gelem/s"),
        "logsumexp over vocab": (
            lambda x: jax.nn.logsumexp(x, axis=-1),
            (jg,),
            lambda: torch.logsumexp(tg, -1),
            M * N / 1e9,
            "Gelem/s",
        ),  # fmt: skip
        "log_softmax over vocab": (
            lambda x: jax.nn.log_softmax(x, axis=-1),
            (jg,),
            lambda: torch.log_softmax(tg, -1),
            M * N / 1e9,
            "Gelem/s",
        ),  # fmt: skip
        "x + 1 (memory bound)": (lambda x: x + 1, (jg,), lambda: tg + 1, M * N / 1e9, "Gelem/s"),
    }
    res = {}
    for name, (fn, args, tfn, work, unit) in ops.items():
        jf = jax.jit(fn).lower(*args).compile()
        jax.block_until_ready(jf(*args))
        tfn()
        jt, tt = [], []
        for _ in range(a.repeats):  # alternate, so a slow spell of the machine hits both
            t = time.perf_counter()
            jax.block_until_ready(jf(*args))
            jt.append(time.perf_counter() - t)
            t = time.perf_counter()
            tfn()
            tt.append(time.perf_counter() - t)
        res[name] = {"jax_s": min(jt), "torch_s": min(tt), "unit": unit,
                     "jax_rate": work / min(jt), "torch_rate": work / min(tt), "jax_over_torch": min(tt) / min(jt)}  # fmt: skip
    setup = {"tokens": M, "hidden": K, "vocab": N, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
             "jax": jax.__version__, "torch": torch.__version__}  # fmt: skip
    print(json.dumps({"setup": setup, "ops": res}, indent=2))
    print(
        f"\n{'op':26s} {'jax s':>7s} {'torch s':>7s} {'jax rate':>9s} {'torch rate':>10s}  unit     jax/torch"
    )
    for name, r in res.items():
        print(f"{name:26s} {r['jax_s']:7.3f} {r['torch_s']:7.3f} {r['jax_rate']:9.1f} {r['torch_rate']:10.1f}  "
              f"{r['unit']:8s} {r['jax_over_torch']:.2f}x")  # fmt: skip
    print(f"(cpu {setup['cpu']}, torch threads {setup['torch_threads']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
