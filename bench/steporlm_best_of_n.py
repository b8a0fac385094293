"""Best-of-N plumbing check: a simulated weak policy on synthetic problems, scored by `storm-jax score`.

The weak policy writes each problem's gold program with one planted flaw with probability --p-flaw
(storm_jax.steporlm.weak); N samples per problem go to a completions file, which `storm-jax score` executes
(real pool) and then selects from with --select critic (the programmatic critic standing in for the GenPRM)
or --select genprm --genprm DIR. Prints pass@1, maj@N, solver filter and best-of-N.

    python bench/steporlm_best_of_n.py --out /tmp/bon [--genprm DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from storm_jax.steporlm.weak import gold_parts, storm_solution, weak_samples

RES = Path(__file__).resolve().parents[1] / "storm_jax" / "resources" / "tiny" / "arith"


def write_completions(
    problems: str, trajs: str, out: str, n: int, p_flaw: float, seed: int, limit: int
) -> int:
    """The weak policy's completions (no output block, no box: the scorer runs each program). Returns rows."""
    gold = {}
    for line in open(trajs):
        t = json.loads(line)
        gold[t["id"]] = gold_parts(t["segments"])
    rng = random.Random(seed)
    rows = 0
    with open(out, "w") as f:
        for line in list(open(problems))[:limit]:
            p = json.loads(line)
            intro, _ = gold.get(p["id"], ("Let me model the problem.", None))
            for i, (prog, flaw) in enumerate(weak_samples(p["meta"]["program"], n, p_flaw, rng)):
                f.write(json.dumps({"id": p["id"], "sample_index": i, "completion": storm_solution(intro, prog),
                                    "flaw": flaw}) + "\n")  # fmt: skip
                rows += 1
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--problems", default=str(RES / "train.problems.jsonl"))
    ap.add_argument("--trajectories", default=str(RES / "train.sft_traj.jsonl"))
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--p-flaw", type=float, default=0.6)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--genprm", default=None)
    a = ap.parse_args(argv)
    from storm_jax.eval.score import main as score_main

    Path(a.out).mkdir(parents=True, exist_ok=True)
    comp = str(Path(a.out) / "completions.jsonl")
    write_completions(a.problems, a.trajectories, comp, a.n, a.p_flaw, a.seed, a.limit)
    base = ["--completions", comp, "--benchmark", a.problems, "--answer-from", "execution", "--no-progress"]
    rc = score_main([*base, "--out", str(Path(a.out) / "critic"), "--select", "critic"])
    if rc == 0 and a.genprm:
        rc = score_main([*base, "--out", str(Path(a.out) / "genprm"), "--select", "genprm", "--genprm", a.genprm,
                         "--critique-tokens", "128", "--critique-max-len", "768"])  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
