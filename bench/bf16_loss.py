"""bf16 compute against fp32: the SFT loss curve of the same run in both, on the bundled data.

  python bench/bf16_loss.py [--config storm_tiny] [--steps 50] [--workdir /tmp/bf16_loss]

Runs `storm-jax`'s SFT (train_sft) twice from the same seed and data order: model.dtype float32, then
bfloat16 (master weights, RMSNorm, attention softmax, logits and the loss stay fp32; the matmuls and
activations are bf16). Prints both curves (every step), the largest |loss_bf16 - loss_fp32| and its relative
size, and the wall time of each run. bf16 rounds each product's inputs to 8 significant bits (unit roundoff
2^-9 = 0.2 %), so the curves should agree to a few tenths of a percent early and drift apart slowly as the
updates differ; the figure to read is the relative distance over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from train_step import cpu_model  # bench/ is sys.path[0] when run as a script


def run(config: str, steps: int, dtype: str, workdir: str) -> tuple[list[float], float]:
    from storm_jax.config import load_config
    from storm_jax.train.sft import train_sft

    cfg = load_config(
        config,
        [f"workdir={workdir}", f"train.steps={steps}", "train.log_every=1", "train.progress=false",
         f"model.dtype={dtype}", "checkpoint.save_every=1000000", "train.eval_every=0"],
    )  # fmt: skip
    cfg.unlock()
    cfg.recipe = "sft"
    t = time.perf_counter()
    train_sft(cfg, echo=lambda *a: None)
    wall = time.perf_counter() - t
    rec = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r["loss"] for r in rec if r.get("split", "train") == "train" and "loss" in r], wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="storm_tiny")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workdir", default="/tmp/bf16_loss")
    a = ap.parse_args(argv)
    import shutil

    curves, walls = {}, {}
    for dtype in ("float32", "bfloat16"):
        wd = os.path.join(a.workdir, dtype)
        shutil.rmtree(
            wd, ignore_errors=True
        )  # a fresh run each time (a workdir with a checkpoint would resume)
        curves[dtype], walls[dtype] = run(a.config, a.steps, dtype, wd)
    f, b = curves["float32"], curves["bfloat16"]
    diffs = [abs(x - y) for x, y in zip(f, b)]
    i = max(range(len(diffs)), key=diffs.__getitem__)
    out = {"config": a.config, "steps": a.steps, "cpu": cpu_model(), "wall_s": walls,
           "max_abs_diff": diffs[i], "at_step": i + 1, "relative_at_that_step": diffs[i] / abs(f[i]),
           "final": {"float32": f[-1], "bfloat16": b[-1], "relative_diff": abs(f[-1] - b[-1]) / abs(f[-1])},
           "curves": curves}  # fmt: skip
    print(json.dumps(out))
    print(f"\nstep  {'fp32':>9s} {'bf16':>9s}  rel diff")
    for s, (x, y) in enumerate(zip(f, b), 1):
        if s in (1, 2, 5) or s % 10 == 0 or s == len(f):
            print(f"{s:4d}  {x:9.4f} {y:9.4f}  {abs(x - y) / abs(x):8.4f}")
    print(f"max |diff| {diffs[i]:.4f} at step {i + 1} ({out['relative_at_that_step']:.2%} of the fp32 loss); "
          f"wall fp32 {walls['float32']:.1f} s, bf16 {walls['bfloat16']:.1f} s; cpu {out['cpu']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
