"""Throughput of `storm-jax synth`: verified problems per second on one core.

Each problem: sample parameters, render the statement, execute the gold pyomo program (HiGHS) in the
runner, solve the independent matrix form with scipy, compare. No SFT rows (trajectory bugs re-execute).

    .venv/bin/python bench/synth.py --n 150 [--runner local|pool]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from storm_jax.data.synth.generate import SynthConfig, make_instance, verify
from storm_jax.data.synth.runner import LocalRunner, PoolRunner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runner", choices=["local", "pool"], default="local")
    args = ap.parse_args()
    cfg = SynthConfig(n=args.n, seed=args.seed)
    runner = LocalRunner() if args.runner == "local" else PoolRunner(num_workers=1)
    with runner:
        runner.run("import pyomo.environ\nprint('OBJECTIVE: 0')")  # warm-up outside the timing
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        ok = 0
        for i in range(cfg.n):
            inst = make_instance(cfg, i)
            v, _ = verify(inst, runner.run(inst.program))
            ok += v is not None
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {
                "runner": args.runner,
                "candidates": cfg.n,
                "verified": ok,
                "wall_s": round(wall, 2),
                "verified_per_s": round(ok / wall, 2),
                "parent_cpu_s": round(cpu, 2),
                "cpus_visible": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
