"""Benchmark: execution pool vs a fresh ``subprocess.run([python, file])`` per program.

Generates N small random pyomo LP/MILP programs (knapsack, production planning, transportation, random
dense LPs; appsi_highs; each prints ``OBJECTIVE: <value>`` and how long its own model-building + solve
took), runs them through both at the same concurrency, and prints programs/s of each and the ratio in one
run, plus the per-execution overhead beyond the solve itself (p50/p99: call latency minus the program's
own timed body), measured one program at a time.

    python bench/execution.py [--n 100] [--concurrency 2] [--seed 0] [--json out.json]

``--phases`` instead times where one execution's time goes (docs/design.md#where-an-executions-time-goes):
this process becomes a worker (its own network namespace, as a worker's) and runs the programs one at
a time, with timestamps from the worker, the child and the program itself in shared memory, and the
page faults and CPU time of child and worker.
"""

from __future__ import annotations

import argparse
import io
import json
import mmap
import os
import random
import statistics
import struct
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


# --phases: timestamps (perf_counter_ns) and child counters in a shared page, slot numbers below.
_PHASES = [  # (label, from slot, to slot); slots 10/18/19 come from the program's own output
    ("worker: temp dir, ruleset, pipes, fork()", 0, 2),
    ("worker: execute start -> child runs", 0, 3),
    ("child: sandbox set-up (setsid .. uid drop)", 3, 8),
    ("  of which Landlock", 5, 6),
    ("child: compile the program", 8, 9),
    ("child: exec -> program's first timed line", 9, 10),
    ("program: model building", 10, 18),
    ("program: solve + results", 18, 19),
    ("child: program's last line -> exec returns", 19, 11),
    ("child exit -> worker reaps it", 11, 12),
    ("worker: stray sweep", 12, 13),
    ("worker: drain, classify, scrub", 13, 14),
    ("worker: remove the temp dir", 14, 15),
    ("worker: result to JSON", 16, 17),
    ("TOTAL execute (incl. JSON)", 0, 17),
]


def run_phases(programs: list[str]) -> dict:
    """Per-phase p50 (ms) of Worker.execute on `programs`, in this process (which becomes the worker)."""
    import resource
    from dataclasses import asdict

    from storm_jax.execution import pool as pool_mod
    from storm_jax.execution import sandbox as sb
    from storm_jax.execution import sandbox_program

    shm = mmap.mmap(-1, 8 * 64)

    def mark(i: int) -> None:
        struct.pack_into("q", shm, 8 * i, time.perf_counter_ns())

    def counters(i: int) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        struct.pack_into("qq", shm, 8 * i, r.ru_minflt, int((r.ru_utime + r.ru_stime) * 1e6))

    def wrap(fn, before: int | None, after: int | None):
        def inner(*a, **k):
            if before is not None:
                mark(before)
            out = fn(*a, **k)
            if after is not None:
                mark(after)
            return out

        return inner

    def run_program(code: str, status_fd: int = 3) -> None:  # as sandbox_program's, with marks
        mark(8)
        counters(30)
        sandbox_program.linecache.cache[sandbox_program.PROGRAM_FILE] = (
            len(code),
            None,
            code.splitlines(True),
            sandbox_program.PROGRAM_FILE,
        )
        compiled = compile(code, sandbox_program.PROGRAM_FILE, "exec")
        mark(9)
        exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
        mark(11)
        sys.stdout.flush()
        sys.stderr.flush()
        counters(32)
        os._exit(0)

    restrict = "landlock_restrict_self" if hasattr(sb, "landlock_restrict_self") else "landlock_restrict"
    setattr(sb, restrict, wrap(getattr(sb, restrict), 5, 6))
    sb.run_program = run_program

    class Worker(sb.Worker):
        def _child(self, *a):
            mark(3)
            counters(28)
            super()._child(*a)

        def _supervise(self, *a):
            mark(2)
            return super()._supervise(*a)

        _kill_strays = wrap(sb.Worker._kill_strays, 12, 13)
        _rmtree = wrap(sb.Worker._rmtree, 14, 15)

    env = pool_mod._scrubbed_env()
    os.environ.clear()
    os.environ.update(env)
    # Standard streams as a pool worker's (started without PYTHONUNBUFFERED, not on a tty): the
    # children inherit them, so a buffered stdout means one write per 8 KiB, not one per print().
    sys.stdout.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), line_buffering=False)
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)), line_buffering=True, errors="backslashreplace"
    )
    cfg = pool_mod.ExecutionConfig()
    wire = asdict(cfg)
    wire["preload"], wire["disabled_layers"] = list(cfg.preload), []
    worker = Worker(wire, -1, -1)
    worker.setup()
    lim = cfg.limits(None)
    # The program reports its own timestamps: start, before the solve, end.
    stamped = [
        p.replace(
            "_t0 = _time.perf_counter()\n",
            "_t0 = _time.perf_counter()\nprint('T10', _time.perf_counter_ns())\n",
        )
        .replace("res = pyo.SolverFactory", "print('T18', _time.perf_counter_ns())\nres = pyo.SolverFactory")
        .replace(
            "_body = _time.perf_counter() - _t0\n",
            "_body = _time.perf_counter() - _t0\nprint('T19', _time.perf_counter_ns())\n",
        )
        for p in programs
    ]
    for code in stamped[:3]:  # warm-up, not counted
        worker.execute({"code": code, "limits": lim})
    rows, faults, cpu = [], [], []
    for code in stamped:
        shm.seek(0)
        shm.write(bytes(8 * 64))
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        mark(0)
        raw = worker.execute({"code": code, "limits": lim})
        mark(16)
        json.dumps(raw)
        mark(17)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        assert raw["status"] == "ok", raw
        t = [struct.unpack_from("q", shm, 8 * i)[0] for i in range(34)]
        for line in raw["stdout"].splitlines():
            if line[:3] in ("T10", "T18", "T19"):
                t[int(line[1:3])] = int(line.split()[1])
        rows.append(t)
        faults.append((t[28], t[30] - t[28], t[32] - t[30], r1.ru_minflt - r0.ru_minflt))
        cpu.append((t[31], t[33] - t[31], r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))
    out = {"isolation": worker.isolation, "phases_ms": {}}
    for label, a, b in _PHASES:
        out["phases_ms"][label] = statistics.median([(r[b] - r[a]) / 1e6 for r in rows])
    body = [(r[19] - r[10]) / 1e6 for r in rows]
    out["phases_ms"]["TOTAL minus the program's timed body"] = statistics.median(
        [(r[17] - r[0]) / 1e6 - b for r, b in zip(rows, body)]
    )
    med = lambda xs: statistics.median(xs)  # noqa: E731
    out["child_faults"] = {
        "fork -> set-up start": med([f[0] for f in faults]),
        "set-up": med([f[1] for f in faults]),
        "compile + program + exit path": med([f[2] for f in faults]),
    }
    out["worker_faults_per_execute"] = med([f[3] for f in faults])
    out["child_cpu_ms"] = {
        "fork -> program start": med([c[0] for c in cpu]) / 1e3,
        "program (compile, body, flush)": med([c[1] for c in cpu]) / 1e3,
    }
    out["worker_cpu_ms_per_execute"] = med([c[2] for c in cpu]) * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--phases", action="store_true", help="time the phases of one execution instead")
    args = ap.parse_args(argv)
    programs = make_programs(args.n, args.seed)
    if args.phases:
        res = run_phases(programs)
        print(f"{args.n} programs one at a time in an in-process worker (p50 per program)")
        for label, ms in res["phases_ms"].items():
            print(f"  {label:46s} {ms:8.3f} ms")
        print(
            f"  child page faults {res['child_faults']}, worker faults/execute {res['worker_faults_per_execute']}"
        )
        print(
            f"  child CPU ms {res['child_cpu_ms']}, worker CPU ms/execute {res['worker_cpu_ms_per_execute']:.3f}"
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return 0
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
