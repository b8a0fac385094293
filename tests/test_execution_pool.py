"""Execution pool: statuses, hostile programs run 4-concurrently, isolation, worker replacement."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time

import pytest

from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
from storm_jax.execution.sandbox import CappedBuffer

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix", reason="Linux only")

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-7f3a",
    "GOOGLE_APPLICATION_CREDENTIALS": "/root/canary-gcp.json",
    "HF_TOKEN": "hf_canary9d2b",
    "HTTPS_PROXY": "http://canary-proxy:3128",
    "http_proxy": "http://canary-proxy:3128",
    "WANDB_API_KEY": "canary-wandb-11",
}
DEADLINE = 1.5  # per hostile program
MARGIN = 1.5  # allowed lateness on a loaded 2-core machine (kill + stray sweep + scheduling)


def _lp_program(c: list[float], a: list[list[float]], b: list[float]) -> str:
    """max c.x s.t. a x <= b, x >= 0, in pyomo with the OBJECTIVE convention."""
    return f"""
import pyomo.environ as pyo
c, a, b = {c!r}, {a!r}, {b!r}
m = pyo.ConcreteModel()
m.x = pyo.Var(range(len(c)), within=pyo.NonNegativeReals)
m.o = pyo.Objective(expr=sum(c[j] * m.x[j] for j in range(len(c))), sense=pyo.maximize)
m.k = pyo.Constraint(range(len(b)), rule=lambda m, i: sum(a[i][j] * m.x[j] for j in range(len(c))) <= b[i])
pyo.SolverFactory("appsi_highs").solve(m)
print("OBJECTIVE:", pyo.value(m.o))
"""


def _stray_pids(pool: ExecutionPool) -> list[tuple[int, str]]:
    """Processes that belong to an execution: running as an execution uid, or descending from a worker."""
    uids = set(pool.worker_uids)
    workers = set(pool.worker_pids)
    parent: dict[int, int] = {}
    owner: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                st = f.read()
            owner[int(name)] = os.stat(f"/proc/{name}").st_uid
        except OSError:
            continue
        parent[int(name)] = int(st[st.rindex(b")") + 2 :].split()[1])
    out = []
    for pid, uid in owner.items():
        p, anc = pid, set()
        while p in parent and p not in anc and p > 1:
            anc.add(p)
            p = parent[p]
        if uid in uids or (anc & workers and pid not in workers):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                cmd = "?"
            out.append((pid, cmd))
    return out


@pytest.fixture(scope="module")
def sandbox_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    # Programs run as another uid: it must be able to traverse down to its own temp dir.
    for p in (root, *root.parents):
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | stat.S_IXOTH)
    return root


@pytest.fixture(scope="module")
def pool(sandbox_root):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        cfg = ExecutionConfig(wall_s=5, cpu_s=5, max_output_bytes=4 * 1024**2, tmp_root=str(sandbox_root))
        p = ExecutionPool(4, cfg)
    yield p
    p.close()
    assert not _stray_pids(p)
    assert os.listdir(sandbox_root) == []


# --- statuses of ordinary programs ------------------------------------------------------------------------


def test_solves_lp_and_matches_scipy(pool):
    from scipy.optimize import linprog

    c, a, b = [3.0, 2.0, 4.0], [[1, 1, 2], [2, 0, 3], [0, 1, 1]], [4.0, 5.0, 3.0]
    r = pool.run(_lp_program(c, a, b))
    ref = -linprog([-x for x in c], A_ub=a, b_ub=b, bounds=[(0, None)] * 3).fun
    assert r.status == "ok", r.stderr
    assert r.returncode == 0
    assert r.answer == pytest.approx(ref, rel=1e-9)
    assert 0 < r.duration_s < 5


def test_solver_runs_on_the_inherited_single_thread_scheduler(pool):
    """HiGHS solves (an LP and a MILP) on the scheduler the worker started: the program starts no thread."""
    milp = _lp_program([3.0, 2.0], [[2, 1], [1, 3]], [7.5, 9.5]).replace(
        "NonNegativeReals", "NonNegativeIntegers"
    )
    count = "import os\nprint('THREADS', len(os.listdir('/proc/self/task')))\n"
    for code, value in ((_lp_program([1.0, 1.0], [[1, 2]], [4.0]), 4.0), (milp, 11.0)):
        r = pool.run(code + count)
        assert r.status == "ok" and r.answer == pytest.approx(value), r.stderr
        assert "THREADS 1\n" in r.stdout, r.stdout
    # A program that asks HiGHS for 2 threads gets them (HiGHS refuses a count other than its running
    # scheduler's: the child must not hand it the inherited single-thread one), directly and via pyomo.
    direct = (
        "import highspy, os\nh = highspy.Highs()\nh.setOptionValue('output_flag', False)\n"
        "h.setOptionValue('threads', 2)\nh.addVar(0, 3)\nh.changeColCost(0, -1.0)\n"
        "assert h.run() == highspy.HighsStatus.kOk\nprint('OBJECTIVE:', h.getInfo().objective_function_value)\n"
    )
    via_pyomo = _lp_program([1.0, 1.0], [[1, 2]], [4.0]).replace(
        'pyo.SolverFactory("appsi_highs").solve(m)',
        'opt = pyo.SolverFactory("appsi_highs")\nopt.highs_options = {"threads": 2}\nopt.solve(m)',
    )
    assert "highs_options" in via_pyomo
    for code, value in ((direct, -3.0), (via_pyomo, 4.0)):
        r = pool.run(code + count)
        assert r.status == "ok" and r.answer == pytest.approx(value), (r.stdout, r.stderr)
        assert "THREADS 1\n" not in r.stdout, r.stdout


def test_statuses_and_output_capture(pool):
    rs = pool.map(
        [
            "print('hello'); print('OBJECTIVE: 12.5')",
            "print('no number here')",
            "import sys; print('oops', file=sys.stderr); sys.exit(3)",
            "raise ValueError('boom')",
            "def f(:\n  pass",
            "import sys; sys.exit(0)",
        ]
    )
    assert [r.status for r in rs] == ["ok", "no_answer", "error", "error", "error", "no_answer"]
    assert rs[0].answer == 12.5 and rs[0].stdout == "hello\nOBJECTIVE: 12.5\n"
    assert rs[2].returncode == 3 and "oops" in rs[2].stderr
    assert "ValueError: boom" in rs[3].stderr and 'File "<program>", line 1' in rs[3].stderr
    assert "SyntaxError" in rs[4].stderr
    assert all(r.answer is None for r in rs[1:])


def test_output_is_capped_head_and_tail(pool):
    r = pool.run("for i in range(200000):\n    print(i)\nprint('OBJECTIVE: 7')")
    assert r.status == "ok" and r.answer == 7.0
    cap = pool.config.output_chars
    assert len(r.stdout) <= cap + 100
    assert r.stdout.startswith("0\n1\n2\n") and r.stdout.endswith("199999\nOBJECTIVE: 7\n")
    assert "bytes truncated" in r.stdout
    expected_total = sum(len(f"{i}\n") for i in range(200000)) + len("OBJECTIVE: 7\n")
    assert r.info["stdout_bytes"] == expected_total


def test_capped_buffer_matches_slicing():
    data = bytes(range(256)) * 40  # 10240 bytes, fed in uneven chunks
    buf = CappedBuffer(100)
    for i in range(0, len(data), 37):
        buf.add(data[i : i + 37])
    assert buf.total == len(data)
    assert bytes(buf.head) == data[:100] and bytes(buf.tail[-100:]) == data[-100:]
    small = CappedBuffer(100)
    small.add(b"abc\n")
    assert small.text(50) == "abc\n"


def test_submit_future_and_map_order(pool):
    fut = pool.submit("import time; time.sleep(0.3); print('OBJECTIVE: 1')")
    assert not fut.done()
    codes = [f"import time; time.sleep({(5 - i) * 0.05}); print('OBJECTIVE: {i}')" for i in range(6)]
    assert [r.answer for r in pool.map(codes)] == [float(i) for i in range(6)]
    assert fut.result(timeout=10).answer == 1.0


def test_runs_concurrently(pool):
    t0 = time.monotonic()
    rs = pool.map(["import time; time.sleep(1.0); print('OBJECTIVE: 1')"] * 4)
    wall = time.monotonic() - t0
    assert [r.status for r in rs] == ["ok"] * 4
    assert wall < 3.0, f"4 x 1 s sleeps on 4 workers took {wall:.2f} s"


# --- hostile programs, 4 at a time ----------------------------------------------------------------------------

HOSTILE: list[tuple[str, str, set[str]]] = [
    ("busy loop", "while True:\n    pass", {"timeout"}),
    ("sleep", "import time\ntime.sleep(100)", {"timeout"}),
    (
        "ignore SIGTERM and spin",
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass",
        {"timeout"},
    ),
    ("C-level pause", "import ctypes\nctypes.CDLL(None).pause()", {"timeout"}),
    (
        "fork bomb (retrying)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        {"timeout"},
    ),
    ("fork bomb (crashing)", "import os\nwhile True:\n    os.fork()", {"error", "timeout"}),
    (
        "thread bomb",
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(100,)).start()",
        {"error"},
    ),
    ("memory bomb (list)", "x = []\nwhile True:\n    x.append(bytes(10**8))", {"memory"}),
    ("memory bomb (one alloc)", "x = bytearray(8 * 1024**3)", {"memory"}),
    ("memory bomb (numpy)", "import numpy as np\nx = np.ones(4 * 1024**3)", {"memory"}),
    ("endless stdout", "while True:\n    print('x' * 1000)", {"killed"}),
    ("endless stderr", "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)", {"killed"}),
    ("segfault", "import ctypes\nctypes.string_at(0)", {"killed"}),
    ("abort", "import os\nos.abort()", {"killed"}),
    ("SIGKILL self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", {"killed"}),
    ("SIGTERM self", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", {"killed"}),
    # kill(-1) spares the caller; it must reach nothing outside this execution (the others keep their statuses).
    ("kill(-1)", "import os, signal\nos.kill(-1, signal.SIGKILL)", {"no_answer"}),
    ("kill the worker", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", {"error"}),
    ("os._exit(0) silent", "import os\nos._exit(0)", {"no_answer"}),
    ("os._exit(3)", "import os\nprint('OBJECTIVE: 5', flush=True)\nos._exit(3)", {"error"}),
    (
        "background child outlives",
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\nprint('OBJECTIVE: 2')",
        {"ok"},
    ),
    (
        "double-fork daemon",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
        "    os._exit(0)\nos.wait()\nprint('OBJECTIVE: 3')",
        {"ok"},
    ),
    (
        "background subprocess",
        "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)\nprint('OBJECTIVE: 4')",
        {"ok"},
    ),
    (
        "daemon holds stdout open",
        "import os, time\nif os.fork() == 0:\n    while True:\n        print('.', flush=True); time.sleep(0.01)\nprint('OBJECTIVE: 6', flush=True)",
        {"ok"},
    ),
    ("huge file", "with open('big', 'wb') as f:\n    f.write(b'0' * (64 * 1024**2))", {"error"}),
    ("close own stdout and spin", "import os\nos.close(1)\nos.close(2)\nwhile True: pass", {"timeout"}),
    ("close own stdout then print", "import os\nos.close(1)\nprint('OBJECTIVE: 1')", {"error"}),
    ("read stdin", "input()", {"error"}),
    ("raise rlimits", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", {"error"}),
    ("deep recursion", "def f(n):\n    return f(n + 1)\nf(0)", {"error"}),
    (
        "many files in cwd",
        "for i in range(300):\n    open(f'f{i}', 'w').write('x')\nprint('OBJECTIVE: 8')",
        {"ok"},
    ),
]


def test_hostile_programs_4_concurrently(pool, sandbox_root):
    assert len(HOSTILE) >= 25
    t0 = time.monotonic()
    futures = [pool.submit(code, timeout_s=DEADLINE) for _, code, _ in HOSTILE]
    results = [f.result(timeout=120) for f in futures]
    wall = time.monotonic() - t0
    bad = []
    for (name, _, allowed), r in zip(HOSTILE, results):
        if r.status not in allowed or r.duration_s > DEADLINE + MARGIN:
            bad.append((name, r.status, round(r.duration_s, 2), r.returncode, r.stderr[-300:]))
    assert not bad, "\n".join(map(repr, bad))
    by_name = {name: r for (name, _, _), r in zip(HOSTILE, results)}
    assert by_name["background child outlives"].answer == 2.0
    assert by_name["background subprocess"].answer == 4.0
    assert by_name["daemon holds stdout open"].answer == 6.0
    assert by_name["many files in cwd"].answer == 8.0
    assert "output limit" in by_name["endless stdout"].stderr
    assert "memory limit" in by_name["memory bomb (one alloc)"].stderr
    # 31 programs, 4 at a time, the slow ones bounded by the deadline: no program waited on another's fate.
    assert wall < 9 * (DEADLINE + MARGIN), wall
    # Every process of every finished execution is gone, and so are the temp dirs.
    assert _stray_pids(pool) == []
    assert all(os.listdir(sandbox_root / d) == [] for d in os.listdir(sandbox_root))
    assert pool.restarts == 0  # nothing a program did took a worker down
    # ... and the pool keeps giving correct answers.
    from scipy.optimize import linprog

    problems = [([1.0 + i, 2.0, 1.5], [[1, 2, 1], [3, 1, 2 + i]], [10.0 + i, 15.0]) for i in range(8)]
    rs = pool.map([_lp_program(*p) for p in problems])
    for (c, a, b), r in zip(problems, rs):
        ref = -linprog([-x for x in c], A_ub=a, b_ub=b, bounds=[(0, None)] * len(c)).fun
        assert r.status == "ok" and r.answer == pytest.approx(ref, rel=1e-9)


# --- isolation ----------------------------------------------------------------------------------------------


def test_isolation_report(pool):
    iso = pool.isolation
    assert iso["network"] in ("netns", "seccomp", "none")
    assert iso["env"] == "scrubbed"
    if os.geteuid() == 0:
        # This is the environment the pool is built for (TPU VMs run as root): everything is in force.
        assert iso["network"] == "netns"
        assert iso["uid"].startswith("dropped:")
        assert iso["kill"] == "uid"


def test_no_network_to_localhost_server(pool):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(3)
    port = srv.getsockname()[1]
    accepted = []

    def serve():
        try:
            accepted.append(srv.accept())
        except OSError:
            pass

    t = threading.Thread(target=serve)
    t.start()
    code = (
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'hi')\nprint('CONNECTED')"
    )
    # Sanity: the server is reachable from here.
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    t.join()
    assert len(accepted) == 1
    accepted.clear()
    t = threading.Thread(target=serve)
    t.start()
    r = pool.run(code)
    t.join()
    srv.close()
    assert r.status == "error" and "CONNECTED" not in r.stdout
    assert any(e in r.stderr for e in ("unreachable", "Permission denied", "refused")), r.stderr
    assert accepted == []
    # UDP and DNS fail as well.
    r = pool.run("import socket\nsocket.getaddrinfo('pypi.org', 443)\nprint('RESOLVED')")
    assert r.status == "error" and "RESOLVED" not in r.stdout


def test_credentials_are_scrubbed(pool):
    assert os.environ.get("HF_TOKEN") is None  # the fixture set them only while the pool started
    r = pool.run("import os, json\nprint(json.dumps(dict(os.environ)))")
    assert r.status == "no_answer"
    for k, v in SECRETS.items():
        assert k not in r.stdout and v not in r.stdout
    env = __import__("json").loads(r.stdout)
    assert env["HOME"] == env["TMPDIR"] == env["PWD"] == "."  # the private temp dir, shown relative
    r = pool.run("import os\nprint(os.path.basename(os.environ['HOME']), os.environ['HOME'] == os.getcwd())")
    assert r.stdout.startswith("storm-exec-") and r.stdout.endswith(" True\n"), r.stdout
    # Nor can it read them from the parent's process environment.
    r = pool.run(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    assert r.status == "error" and "canary" not in r.stdout


def test_cannot_write_outside_temp_dir(pool, tmp_path):
    target = tmp_path / "owned_by_test.txt"
    target.write_text("original")
    os.chmod(target, 0o666)
    code = f"""
results = []
for path, mode in [({str(target)!r}, 'a'), ({str(target)!r}, 'w'), ({str(tmp_path / "new.txt")!r}, 'w'),
                   ('/tmp/storm_escape_probe', 'w'), ('local.txt', 'w')]:
    try:
        with open(path, mode) as f:
            f.write('pwned')
        results.append('wrote')
    except OSError as e:
        results.append(type(e).__name__)
print(results)
"""
    r = pool.run(code)
    assert r.status == "no_answer", r.stderr
    res = eval(r.stdout)  # noqa: S307 - a list literal printed by our own program
    assert res[:4] == ["PermissionError"] * 4 and res[4] == "wrote", res
    assert target.read_text() == "original"
    assert not (tmp_path / "new.txt").exists() and not os.path.exists("/tmp/storm_escape_probe")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as root")
def test_landlock_alone_blocks_writes(tmp_path):
    """With the uid drop off (the child stays root), Landlock by itself stops writes outside the temp dir."""
    target = tmp_path / "t.txt"
    target.write_text("original")
    cfg = ExecutionConfig(drop_uid=False, network="none", preload=(), warm_solve=False)
    with ExecutionPool(1, cfg) as p:
        if p.isolation["fs"] != "landlock":
            pytest.skip(f"Landlock unavailable: {p.notes}")
        r = p.run(f"open({str(target)!r}, 'w').write('x')")
        assert r.status == "error" and "PermissionError" in r.stderr
        r = p.run("import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('OBJECTIVE: 1')")
        assert r.status == "ok" and r.info["strays"] >= 1  # killed by the descendant sweep
        assert _stray_pids(p) == []
    assert target.read_text() == "original"


def test_seccomp_network_fallback():
    cfg = ExecutionConfig(network="seccomp", restrict_fs=False, preload=(), warm_solve=False)
    try:
        p = ExecutionPool(1, cfg)
    except RuntimeError as e:
        pytest.skip(f"seccomp unavailable: {e}")
    with p:
        assert p.isolation["network"] == "seccomp"
        r = p.run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)")
        assert r.status == "error" and "PermissionError" in r.stderr
        r = p.run("import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)")
        assert r.status == "error" and "PermissionError" in r.stderr
        r = p.run(
            "import socket\na, b = socket.socketpair()\na.send(b'ok')\nprint('OBJECTIVE:', len(b.recv(2)))"
        )
        assert r.status == "ok" and r.answer == 2.0


# --- worker failure -------------------------------------------------------------------------------------------


def test_dead_and_hung_workers_are_replaced(tmp_path):
    cfg = ExecutionConfig(hang_grace_s=1.0, preload=(), warm_solve=False, tmp_root=str(tmp_path))
    with ExecutionPool(1, cfg) as p:
        w0 = p.worker_pids[0]
        fut = p.submit("import time; time.sleep(30)", timeout_s=20)
        time.sleep(0.5)
        os.kill(w0, signal.SIGKILL)
        r = fut.result(timeout=30)
        assert r.status == "killed" and "died" in r.stderr
        assert p.restarts == 1 and p.worker_pids[0] != w0
        assert p.run("print('OBJECTIVE: 1')").answer == 1.0
        w1 = p.worker_pids[0]
        os.kill(w1, signal.SIGSTOP)  # a worker that stops answering
        t0 = time.monotonic()
        r = p.run("print('OBJECTIVE: 2')", timeout_s=1.0)
        assert r.status == "timeout" and "hung" in r.stderr
        assert time.monotonic() - t0 < 1.0 + 1.0 + 2.0
        assert p.restarts == 2
        assert p.run("print('OBJECTIVE: 3')").answer == 3.0
        assert _stray_pids(p) == []
    assert os.listdir(tmp_path) == []  # the temp dirs of the killed workers' executions are gone too


def test_closed_pool_rejects_work():
    p = ExecutionPool(1, ExecutionConfig(preload=(), warm_solve=False))
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.submit("print(1)")
    with pytest.raises(ValueError, match="wall_s"):
        ExecutionConfig(wall_s=0)
    with pytest.raises(ValueError, match="network"):
        ExecutionConfig(network="vpn")
