"""Each cleanup layer and resource limit of the execution sandbox, checked on its own.

The pool's layers overlap: the process-group kill at a timeout, the stray sweep after every execution
and the worker's subreaper all end leftover processes, so a test with every layer on passes when any one
of them is broken. Here the other cleanup layers are switched off (``ExecutionConfig.disabled_layers``)
and the test checks what that layer alone guarantees; a control run with all of them off shows the
programs' processes would otherwise survive. Processes count as dead when gone from /proc or zombies
(a zombie is only waiting to be reaped; it runs no code and holds no pipe).
"""

from __future__ import annotations

import ast
import os
import re
import resource
import signal
import time

import pytest

from storm_jax.execution.pool import ExecutionConfig, ExecutionPool

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix", reason="Linux only")

DEADLINE = 1.5  # wall limit of a program that is to be killed
DEATH_WINDOW = 1.0  # SIGKILL is asynchronous: a killed process may need a moment of CPU to exit
SLEEP = 30  # how long the programs' leftover processes would live if nothing killed them

# The program forks a chain of three descendants (child, grandchild, great-grandchild) that stay in its
# process group, sleep and hold its stdout/stderr pipes; each reports its pid over a pipe, so the program
# prints all three before it is killed (timeout: it sleeps; output: it floods stdout).
_CHAIN = f"""
import os, sys, time
r, w = os.pipe()
main = os.getpid()
for _ in range(3):
    if os.fork() != 0:
        break
    os.write(w, b"%d\\n" % os.getpid())
if os.getpid() != main:
    time.sleep({SLEEP})
    os._exit(0)
got = b""
while got.count(b"\\n") < 3:
    got += os.read(r, 100)
print("PIDS", got.decode().split(), file=sys.stderr, flush=True)
"""
CHAIN_TIMEOUT = _CHAIN + f"time.sleep({SLEEP})\n"
CHAIN_OUTPUT = _CHAIN + "while True:\n    sys.stdout.write('x' * 65536)\n"
# A double-forked daemon in its own session (out of the program's process group), orphaned when its
# parent exits; the program itself finishes normally.
DAEMON = f"""
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, b"%d\\n" % os.getpid())
        time.sleep({SLEEP})
    os._exit(0)
os.wait()
got = b""
while not got.endswith(b"\\n"):
    got += os.read(r, 100)
print("PIDS", got.decode().split(), file=sys.stderr, flush=True)
print("OBJECTIVE: 3")
"""


def _cfg(**kw) -> ExecutionConfig:
    """A light pool (no pyomo preload): these programs use only the standard library."""
    base = dict(wall_s=DEADLINE, cpu_s=DEADLINE, preload=(), warm_solve=False, max_output_bytes=1024**2)
    return ExecutionConfig(**{**base, **kw})


def _reported_pids(stderr: str) -> list[int]:
    m = re.search(r"PIDS (\[.*?\])", stderr)
    assert m, f"program did not report its pids: {stderr[-500:]!r}"
    return [int(p) for p in ast.literal_eval(m.group(1))]


def _alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (from /proc, no psutil)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another uid
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except FileNotFoundError:
        return False
    return st[st.rindex(b")") + 2 : st.rindex(b")") + 3] not in (b"Z", b"X")


def _alive_after(pids: list[int], window: float = DEATH_WINDOW) -> list[int]:
    """The pids still alive after up to `window` seconds of waiting for them to die."""
    give_up = time.monotonic() + window
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() > give_up:
            return alive
        time.sleep(0.01)


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        st = f.read()
    return int(st[st.rindex(b")") + 2 :].split()[1])


def _kill(pids: list[int]) -> None:
    """Clean up after a failing check: the processes these tests' programs started, by pid."""
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


# --- the process-group kill ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"), [(CHAIN_TIMEOUT, "timeout"), (CHAIN_OUTPUT, "killed")], ids=["timeout", "output"]
)
def test_group_kill_alone_ends_the_process_group(code, status):
    """With the stray sweep off, killing a timed-out (or flooding) program's process group ends every
    descendant that stayed in it."""
    with ExecutionPool(1, _cfg(disabled_layers=("stray_sweep",))) as pool:
        assert pool.isolation["stray_sweep"] == "disabled"
        r = pool.run(code)
        pids = _reported_pids(r.stderr)
        try:
            assert r.status == status, r.stderr[-500:]
            assert len(pids) == 3
            assert r.info["strays"] == 0  # the sweep did not run
            assert _alive_after(pids) == [], "descendants outlived the process-group kill"
        finally:
            _kill(pids)


def test_control_without_kill_layers_descendants_survive():
    """The control for the tests here: with both kill layers off, the same descendants do survive the
    result, so the checks above can tell a working layer from a missing one."""
    with ExecutionPool(1, _cfg(disabled_layers=("stray_sweep", "group_kill"))) as pool:
        r = pool.run(CHAIN_TIMEOUT)
        pids = _reported_pids(r.stderr)
        try:
            assert r.status == "timeout"
            assert sorted(_alive_after(pids, window=0.2)) == sorted(pids)
        finally:
            _kill(pids)


# --- the stray sweep -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["uid", "descendants"])
@pytest.mark.parametrize(
    ("code", "status"), [(CHAIN_TIMEOUT, "timeout"), (DAEMON, "ok")], ids=["group", "daemon"]
)
def test_stray_sweep_alone_kills_leftovers(mode, code, status):
    """With the process-group kill off, the sweep alone ends what an execution left: descendants in the
    program's group after a timeout, and an orphaned daemon in its own session after a normal exit. As
    root it kills by the execution uid; otherwise (or without the uid drop) by walking descendants."""
    with ExecutionPool(1, _cfg(disabled_layers=("group_kill",), drop_uid=mode == "uid")) as pool:
        if pool.isolation["kill"] != mode:
            pytest.skip(f"kill mode {mode!r} needs root; here: {pool.isolation['kill']!r}")
        assert pool.isolation["group_kill"] == "disabled"
        r = pool.run(code)
        pids = _reported_pids(r.stderr)
        try:
            assert r.status == status, r.stderr[-500:]
            assert r.info["strays"] >= 1
            assert _alive_after(pids) == [], f"{mode} sweep left processes alive"
        finally:
            _kill(pids)


def test_uid_sweep_reaches_orphans_without_the_subreaper():
    """The uid sweep does not rely on the orphans staying the worker's descendants."""
    with ExecutionPool(1, _cfg(disabled_layers=("group_kill", "subreaper"))) as pool:
        if pool.isolation["kill"] != "uid":
            pytest.skip(f"the uid sweep needs root; here: {pool.isolation['kill']!r}")
        assert pool.isolation["reaper"] == "none"
        r = pool.run(DAEMON)
        pids = _reported_pids(r.stderr)
        try:
            assert r.status == "ok" and r.info["strays"] >= 1
            assert _alive_after(pids) == [], "the uid sweep missed an orphan re-parented away from the worker"
        finally:
            _kill(pids)


# --- the subreaper -----------------------------------------------------------------------------------------


def test_subreaper_alone_keeps_orphans_under_the_worker():
    """With both kill layers off, an orphaned daemon is re-parented to the worker (not to init), which is
    what lets the descendant walk of the sweep find it."""
    with ExecutionPool(1, _cfg(disabled_layers=("stray_sweep", "group_kill"))) as pool:
        assert pool.isolation["reaper"] == "subreaper"
        r = pool.run(DAEMON)
        pids = _reported_pids(r.stderr)
        try:
            assert r.status == "ok"
            assert _alive(pids[0]) and _ppid(pids[0]) == pool.worker_pids[0]
        finally:
            _kill(pids)


# --- resource limits ------------------------------------------------------------------------------------

CPU_S = 1
WALL_S = 20.0  # far above the CPU limit: a spinning program must be stopped by RLIMIT_CPU, not the wall
MEMORY = 512 * 1024**2
FSIZE = 1024**2
NPROC = 8


@pytest.fixture(scope="module")
def limits_pool():
    # Core dumps are off in this test process by default (soft limit 0) and children inherit that: raise
    # the soft limit to the hard one while the worker starts, so only the sandbox's own RLIMIT_CORE=0 can
    # keep the program's at 0.
    core = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (core[1], core[1]))
    try:
        cfg = _cfg(wall_s=WALL_S, cpu_s=CPU_S, memory_bytes=MEMORY, fsize_bytes=FSIZE, nproc=NPROC)
        pool = ExecutionPool(1, cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, core)
    pool.inherited_core = core[1]
    yield pool
    pool.close()


def test_cpu_time_limit(limits_pool):
    r = limits_pool.run("while True:\n    pass")
    assert r.status == "timeout" and f"CPU-time limit of {CPU_S} s" in r.stderr, r.stderr
    assert r.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert CPU_S - 0.1 <= r.cpu_s < CPU_S + 1.5
    assert r.duration_s < WALL_S / 2  # it was not the wall deadline


def test_address_space_limit(limits_pool):
    ok = limits_pool.run("x = bytearray(64 * 1024**2)\nprint('OBJECTIVE:', len(x))")
    assert ok.status == "ok", ok.stderr  # the limit leaves room for ordinary work
    # 1 GiB of zero pages costs nothing without the limit (never touched): only RLIMIT_AS refuses it.
    r = limits_pool.run("x = bytearray(1024**3)\nprint('ALLOCATED')")
    assert r.status == "memory" and "ALLOCATED" not in r.stdout, (r.status, r.stdout, r.stderr)
    assert "MemoryError" in r.stderr


_WRITE = """
import errno, os
try:
    with open('f', 'wb') as f:
        f.write(b'0' * {n})
    print('WROTE', os.path.getsize('f'))
except OSError as e:
    print('REFUSED', errno.errorcode[e.errno], os.path.getsize('f'))
"""


def test_file_size_limit(limits_pool):
    ok = limits_pool.run(_WRITE.format(n=FSIZE // 2))
    assert ok.stdout == f"WROTE {FSIZE // 2}\n", ok.stderr
    r = limits_pool.run(_WRITE.format(n=2 * FSIZE))
    assert r.stdout == f"REFUSED EFBIG {FSIZE}\n", (r.stdout, r.stderr)  # stopped exactly at the limit


def test_process_count_limit(limits_pool):
    if limits_pool.isolation["nproc"] != "rlimit":
        pytest.skip(f"RLIMIT_NPROC not enforced here: {limits_pool.isolation['nproc']}")
    code = f"""
import errno, os, time
n = 0
try:
    for _ in range({4 * NPROC}):
        if os.fork() == 0:
            time.sleep({SLEEP})
            os._exit(0)
        n += 1
    print('FORKED', n)
except OSError as e:
    print('FORKED', n, errno.errorcode[e.errno])
"""
    r = limits_pool.run(code)
    words = r.stdout.split()
    assert words[:1] == ["FORKED"] and words[2:] == ["EAGAIN"], (r.stdout, r.stderr)
    if limits_pool.worker_uids:  # a uid of its own: the program is the only process counted
        assert int(words[1]) == NPROC - 1
    else:  # counted with every process of this user
        assert int(words[1]) < NPROC


def test_core_dump_limit(limits_pool):
    if limits_pool.inherited_core == 0:
        pytest.skip("the hard core limit is 0 here: a missing RLIMIT_CORE=0 could not be seen")
    r = limits_pool.run("import resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))")
    assert r.stdout == "(0, 0)\n", (r.stdout, r.stderr)
