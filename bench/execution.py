"""Benchmark: execution pool vs a fresh ``subprocess.run([python, file])`` per program.

Generates N small random pyomo LP/MILP programs (knapsack, production planning, transportation, random
dense LPs; appsi_highs; each prints ``OBJECTIVE: <value>`` and how long its own model-building + solve
took), runs them through both at the same concurrency, and prints programs/s of each and the ratio in one
run, plus the per-execution overhead beyond the solve itself (p50/p99: call latency minus the program's
own timed body), measured one program at a time.

    python bench/execution.py [--n 100] [--concurrency 2] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from storm_jax.execution.pool import ExecutionConfig, ExecutionPool

HEADER = "import pyomo.environ as pyo\nimport time as _time\n_t0 = _time.perf_counter()\n"
FOOTER = """res = pyo.SolverFactory("appsi_highs").solve(m)
_body = _time.perf_counter() - _t0
print("BODY_S", _body)
print("OBJECTIVE:", pyo.value(m.obj))
"""


def _knapsack(r: random.Random) -> str:
    n = r.randint(8, 30)
    w = [r.randint(1, 25) for _ in range(n)]
    v = [r.randint(1, 40) for _ in range(n)]
    return f"""w = {w}
v = {v}
m = pyo.ConcreteModel()
m.x = pyo.Var(range({n}), within=pyo.Binary)
m.obj = pyo.Objective(expr=sum(v[i] * m.x[i] for i in range({n})), sense=pyo.maximize)
m.cap = pyo.Constraint(expr=sum(w[i] * m.x[i] for i in range({n})) <= {sum(w) // 2})
"""


def _production(r: random.Random, integer: bool) -> str:
    p, k = r.randint(3, 10), r.randint(2, 6)
    profit = [r.randint(5, 50) for _ in range(p)]
    use = [[r.randint(1, 9) for _ in range(p)] for _ in range(k)]
    avail = [r.randint(40, 250) for _ in range(k)]
    dom = "pyo.NonNegativeIntegers" if integer else "pyo.NonNegativeReals"
    return f"""profit = {profit}
use = {use}
avail = {avail}
m = pyo.ConcreteModel()
m.x = pyo.Var(range({p}), within={dom})
m.obj = pyo.Objective(expr=sum(profit[j] * m.x[j] for j in range({p})), sense=pyo.maximize)
m.res = pyo.Constraint(range({k}), rule=lambda m, i: sum(use[i][j] * m.x[j] for j in range({p})) <= avail[i])
"""


def _transport(r: random.Random) -> str:
    s, d = r.randint(2, 6), r.randint(3, 8)
    supply = [r.randint(30, 80) for _ in range(s)]
    demand = [sum(supply) // d - r.randint(0, 6) for _ in range(d)]
    cost = [[r.randint(1, 20) for _ in range(d)] for _ in range(s)]
    return f"""supply = {supply}
demand = {demand}
cost = {cost}
m = pyo.ConcreteModel()
m.x = pyo.Var(range({s}), range({d}), within=pyo.NonNegativeReals)
m.obj = pyo.Objective(expr=sum(cost[i][j] * m.x[i, j] for i in range({s}) for j in range({d})))
m.sup = pyo.Constraint(range({s}), rule=lambda m, i: sum(m.x[i, j] for j in range({d})) <= supply[i])
m.dem = pyo.Constraint(range({d}), rule=lambda m, j: sum(m.x[i, j] for i in range({s})) >= demand[j])
"""


def _dense_lp(r: random.Random) -> str:
    n, k = r.randint(5, 20), r.randint(3, 12)
    c = [round(r.uniform(1, 10), 2) for _ in range(n)]
    a = [[round(r.uniform(0.1, 5), 2) for _ in range(n)] for _ in range(k)]
    b = [round(r.uniform(20, 100), 1) for _ in range(k)]
    return f"""c = {c}
a = {a}
b = {b}
m = pyo.ConcreteModel()
m.x = pyo.Var(range({n}), bounds=(0, 30))
m.obj = pyo.Objective(expr=sum(c[j] * m.x[j] for j in range({n})), sense=pyo.maximize)
m.row = pyo.ConstraintList()
for i in range({k}):
    m.row.add(sum(a[i][j] * m.x[j] for j in range({n})) <= b[i])
"""


def make_programs(n: int, seed: int) -> list[str]:
    """`n` random LP/MILP pyomo programs (half of them MILPs)."""
    r = random.Random(seed)
    makers = [
        _knapsack,
        lambda r: _production(r, True),
        _transport,
        lambda r: _production(r, False),
        _dense_lp,
    ]
    return [HEADER + makers[i % len(makers)](r) + FOOTER for i in range(n)]


def _parse(stdout: str) -> tuple[float | None, float | None]:
    body = obj = None
    for line in stdout.splitlines():
        if line.startswith("BODY_S "):
            body = float(line.split()[1])
        elif line.startswith("OBJECTIVE:"):
            obj = float(line.split()[1])
    return body, obj


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_subprocess(programs: list[str], concurrency: int, workdir: str) -> dict:
    files = []
    for i, code in enumerate(programs):
        path = os.path.join(workdir, f"p{i:03d}.py")
        with open(path, "w") as f:
            f.write(code)
        files.append(path)

    def one(path: str):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, path], capture_output=True, text=True)
        return time.perf_counter() - t, p.returncode, p.stdout

    one(files[0])  # warm the page cache once, like the pool's startup does
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        res = list(ex.map(one, files))
    wall = time.perf_counter() - t0
    parsed = [_parse(out) for _, _, out in res]
    overhead = [lat - body for (lat, _, _), (body, _) in zip(res, parsed) if body is not None]
    return {
        "wall_s": wall,
        "programs_per_s": len(files) / wall,
        "ok": sum(rc == 0 and obj is not None for (_, rc, _), (_, obj) in zip(res, parsed)),
        "answers": [obj for _, obj in parsed],
        "overhead_p50_ms": pct(overhead, 50) * 1e3,
        "overhead_p99_ms": pct(overhead, 99) * 1e3,
    }


def run_pool(programs: list[str], concurrency: int) -> dict:
    t = time.perf_counter()
    with ExecutionPool(concurrency, ExecutionConfig()) as pool:
        startup = time.perf_counter() - t
        pool.map(programs[:concurrency])  # first use of each worker
        t0 = time.perf_counter()
        results = pool.map(programs)
        wall = time.perf_counter() - t0
        # Overhead beyond the program's own body, one program at a time (no queueing in the latency).
        lat, body_in, inner = [], [], []
        for code in programs:
            t = time.perf_counter()
            r = pool.run(code)
            lat.append(time.perf_counter() - t)
            body_in.append(_parse(r.stdout)[0])
            inner.append(r.duration_s)
        isolation = pool.isolation
    parsed = [_parse(r.stdout) for r in results]
    overhead = [la - b for la, b in zip(lat, body_in) if b is not None]
    fork_overhead = [d - b for d, b in zip(inner, body_in) if b is not None]
    return {
        "startup_s": startup,
        "wall_s": wall,
        "programs_per_s": len(programs) / wall,
        "ok": sum(r.status == "ok" for r in results),
        "answers": [obj for _, obj in parsed],
        "statuses": sorted({r.status for r in results}),
        "overhead_p50_ms": pct(overhead, 50) * 1e3,
        "overhead_p99_ms": pct(overhead, 99) * 1e3,
        "in_worker_overhead_p50_ms": pct(fork_overhead, 50) * 1e3,
        "in_worker_overhead_p99_ms": pct(fork_overhead, 99) * 1e3,
        "body_p50_ms": statistics.median([b for b in body_in if b is not None]) * 1e3,
        "isolation": isolation,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    programs = make_programs(args.n, args.seed)
    print(f"{args.n} random pyomo LP/MILP programs, concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    pool = run_pool(programs, args.concurrency)
    print(
        f"pool        : {pool['programs_per_s']:7.1f} programs/s  (wall {pool['wall_s']:.2f} s, ok {pool['ok']}/"
        f"{args.n}, startup {pool['startup_s']:.1f} s, isolation {pool['isolation']})"
    )
    with tempfile.TemporaryDirectory() as d:
        sub = run_subprocess(programs, args.concurrency, d)
    print(
        f"subprocess  : {sub['programs_per_s']:7.1f} programs/s  (wall {sub['wall_s']:.2f} s, ok {sub['ok']}/{args.n})"
    )
    ratio = pool["programs_per_s"] / sub["programs_per_s"]
    agree = sum(
        a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))
        for a, b in zip(pool["answers"], sub["answers"])
    )
    print(f"ratio       : {ratio:.1f}x  (answers agree on {agree}/{args.n})")
    print(
        f"overhead beyond the program's own solve, one at a time: pool p50 {pool['overhead_p50_ms']:.1f} ms, "
        f"p99 {pool['overhead_p99_ms']:.1f} ms (fork-to-exit part p50 {pool['in_worker_overhead_p50_ms']:.1f} ms, "
        f"p99 {pool['in_worker_overhead_p99_ms']:.1f} ms; body p50 {pool['body_p50_ms']:.1f} ms); "
        f"subprocess p50 {sub['overhead_p50_ms']:.0f} ms, p99 {sub['overhead_p99_ms']:.0f} ms"
    )
    if args.json:
        summary = {"n": args.n, "concurrency": args.concurrency, "ratio": ratio, "answers_agree": agree}
        summary["pool"] = {k: v for k, v in pool.items() if k != "answers"}
        summary["subprocess"] = {k: v for k, v in sub.items() if k != "answers"}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
