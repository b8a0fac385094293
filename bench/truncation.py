"""The sampler's top-k / top-p truncation alone: storm_jax's bisection, a sort-based jax baseline, and transformers'
logits warpers (torch, CPU), on the same logits.

  python bench/truncation.py [--batch 32] [--vocab 151936] [--top-p 0.95] [--top-k 0] [--repeats 5]

One decode step of a top-p rollout (the GRPO recipes sample at top-p 0.95) truncates a [batch, vocab]
distribution. storm_jax finds each row's threshold by bisection over the float32 order
(`storm_jax.sampling.distribution.processed_logprobs`); the baseline is the textbook form (sort descending,
cumulative sum, threshold) jitted with jax; the peer is transformers' `TopKLogitsWarper` / `TopPLogitsWarper`
(a torch sort per row, as `generate` does). Prints milliseconds per call (median of --repeats after a warm-up,
the three alternating) and the ratios; checks that storm_jax and the sort baseline keep the same entries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from storm_jax.sampling.distribution import processed_logprobs

    B, V = a.batch, a.vocab
    # logits of the spread an LM head gives (a few nats), fixed seed; fp32 as the sampler sees them
    logits = np.random.default_rng(0).normal(size=(B, V)).astype(np.float32) * 2.0
    full = lambda v, dt: jnp.full((B,), v, dt)  # noqa: E731
    T, K, P = full(a.temperature, jnp.float32), full(a.top_k, jnp.int32), full(a.top_p, jnp.float32)
    M = full(0.0, jnp.float32)

    ours = jax.jit(lambda x: processed_logprobs(x, T, K, P, M))

    @jax.jit
    def by_sort(x):
        x = x / T[:, None]
        srt = -jnp.sort(-x, axis=-1)
        k = jnp.where(K > 0, jnp.minimum(K, V), V)
        kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
        p = jax.nn.softmax(jnp.where(jnp.arange(V)[None, :] < k[:, None], srt, -jnp.inf), axis=-1)
        n_keep = jnp.maximum(jnp.sum(jnp.cumsum(p, axis=-1) - p < P[:, None], axis=-1), 1)
        pth = jnp.take_along_axis(srt, (n_keep - 1)[:, None], axis=-1)
        return jax.nn.log_softmax(jnp.where(x >= jnp.maximum(kth, pth), x, -jnp.inf), axis=-1)

    warpers = [TemperatureLogitsWarper(a.temperature)]
    if a.top_k:
        warpers.append(TopKLogitsWarper(a.top_k))
    if a.top_p < 1.0:
        warpers.append(TopPLogitsWarper(a.top_p))
    procs = LogitsProcessorList(warpers)
    tl = torch.from_numpy(logits)
    ids = torch.zeros((B, 1), dtype=torch.long)

    def hf(_):
        with torch.no_grad():
            return torch.log_softmax(procs(ids, tl.clone()), dim=-1)

    x = jnp.asarray(logits)
    runs = {
        "storm_jax (bisection)": lambda: ours(x).block_until_ready(),
        "jax sort baseline": lambda: by_sort(x).block_until_ready(),
        "transformers warpers (torch)": lambda: hf(None),
    }
    kept = {name: np.isfinite(np.asarray(f())) for name, f in runs.items()}  # warm-up (compiles)
    same = bool(np.array_equal(kept["storm_jax (bisection)"], kept["jax sort baseline"]))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(a.repeats):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"jax {jax.__version__}, torch {torch.__version__}, cpus {os.cpu_count()}; batch {B}, vocab {V}, "
        f"T {a.temperature}, top-k {a.top_k}, top-p {a.top_p}; kept entries per row "
        f"{kept['storm_jax (bisection)'].sum(1).mean():.0f} (bisection == sort baseline: {same})"
    )
    ref = med["storm_jax (bisection)"]
    for name, s in med.items():
        print(f"{name:30s} {1000 * s:9.1f} ms   storm_jax speed-up {s / ref:6.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
