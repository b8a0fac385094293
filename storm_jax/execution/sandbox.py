"""Worker side of the execution pool (docs/design.md#executing-generated-code): one warm process that forks a sandboxed child per program.

This file runs as a script (``python sandbox.py CONFIG_JSON REQ_FD RESP_FD``) started by
:mod:`storm_jax.execution.pool` with a scrubbed environment, and imports only the standard library, its
sibling modules (``sandbox_kernel``: prctl/Landlock/seccomp/uid; ``sandbox_io``: wire protocol, output
capture, status, host-path rewriting; ``sandbox_program``: running the program in the child) and the
configured preload modules (pyomo, highspy), so the pool can start it with any interpreter.

Per execution the worker forks a child that: starts its own session and process group; gets stdin from
/dev/null and stdout/stderr/status on fresh pipes; chdirs into a private temp dir (also HOME and TMPDIR);
sets rlimits (CPU, address space, process count, file size, no core files); applies the isolation layers
(network: the worker's own network namespace, else a seccomp filter on socket(); filesystem: Landlock —
writes only under the temp dir, reads only under system and Python dirs —, Landlock signal scoping);
drops to an unprivileged uid that only this worker uses (when the pool runs as root); then ``exec``s the
program. The worker enforces the wall deadline, reads the pipes with head+tail caps, and afterwards kills
every process the execution left behind: as root by ``kill(-1, SIGKILL)`` from a helper running as the
execution uid (atomic against fork bombs), otherwise by walking its descendants (the worker is a child
subreaper, so orphans cannot escape it). Only then does it reply, so no process of a finished execution
remains when the result is delivered. Host paths in the output become relative (tracebacks name the
program ``<program>``), since the output is shown to the model and kept in its trajectories.

What needs no child is prepared by the worker before the fork — each execution's Landlock ruleset
(from directories opened once), the program's environment (the worker's own, set up once), the libc
functions and structures the child calls with: every page a child writes is a copy-on-write fault
(~3 µs here), and those faults, not the system calls, are most of what a sandboxed execution costs
(docs/design.md#where-an-executions-time-goes).
"""

from __future__ import annotations

import _signal
import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

if __package__:  # imported (by the pool, by tests) as part of storm_jax
    from storm_jax.execution import sandbox_io, sandbox_kernel, sandbox_program
else:  # run as the worker script: the sibling modules are importable from this file's directory
    import sandbox_io
    import sandbox_kernel
    import sandbox_program

# Re-exported: the pool and tests use them from here.
CappedBuffer, HostPaths = sandbox_io.CappedBuffer, sandbox_io.HostPaths
recv_msg, send_msg = sandbox_io.recv_msg, sandbox_io.send_msg
libc, prctl = sandbox_kernel.libc, sandbox_kernel.prctl
CLONE_NEWNET, PR_SET_NO_NEW_PRIVS = sandbox_kernel.CLONE_NEWNET, sandbox_kernel.PR_SET_NO_NEW_PRIVS
PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG = (
    sandbox_kernel.PR_SET_CHILD_SUBREAPER,
    sandbox_kernel.PR_SET_PDEATHSIG,
)
landlock_abi, landlock_restrict = sandbox_kernel.landlock_abi, sandbox_kernel.landlock_restrict
LandlockRules, landlock_restrict_self = sandbox_kernel.LandlockRules, sandbox_kernel.landlock_restrict_self
become_uid, seccomp_block_network = sandbox_kernel.become_uid, sandbox_kernel.seccomp_block_network
descendants, system_read_dirs = sandbox_kernel.descendants, sandbox_kernel.system_read_dirs
classify, run_program = sandbox_io.classify, sandbox_program.run_program

__all__ = ["CappedBuffer", "HostPaths", "LAYERS", "Worker", "classify", "recv_msg", "send_msg"]

# Cleanup layers a test may switch off (ExecutionConfig.disabled_layers) to check each one on its own;
# all are on by default and in production:
#   group_kill   SIGKILL the program's process group when it is killed for time or output,
#   stray_sweep  after every execution, kill each process it left (by uid, or by walking descendants),
#   subreaper    make the worker a child subreaper, so orphans stay its descendants for that walk.
LAYERS = ("group_kill", "stray_sweep", "subreaper")

# --- the worker ---------------------------------------------------------------------------------------------

_SETUP_FAILED = 125  # exit code of a child whose sandbox setup failed (before any program code ran)
_WARM_MODEL = """
import pyomo.environ as pyo
m = pyo.ConcreteModel()
m.x = pyo.Var(range(3), within=pyo.NonNegativeIntegers)
m.y = pyo.Var(bounds=(0, 4))
m.o = pyo.Objective(expr=sum(m.x[i] for i in range(3)) + m.y, sense=pyo.maximize)
m.c = pyo.Constraint(expr=2 * m.x[0] + 3 * m.x[1] + m.x[2] + m.y <= 7.5)
pyo.SolverFactory("appsi_highs").solve(m)
"""


def _start_single_thread_highs(highspy) -> None:
    """Start HiGHS's global task scheduler with one thread (so no worker threads) for children to inherit.

    A scheduler with worker threads cannot cross a fork (its threads do not exist in the child), so the
    warm one is destroyed and each child used to start its own — thread creation plus spinning workers,
    about 3 ms of CPU per program on a 2-CPU host, more than the rest of the per-child set-up. A single-thread
    scheduler has no thread to lose: children solve on it at once. HiGHS then runs single-threaded in
    every program that does not choose otherwise, as suits a pool that runs one program per core. (HiGHS
    refuses a "threads" option that differs from the running scheduler's, so a child whose program names
    that option gets no scheduler instead, as a fresh process has: see Worker._child.)
    """
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.addVar(0.0, 1.0)  # a first run() is what starts the scheduler
    h.run()


class Worker:
    """State of one worker process; `serve` answers requests until EOF."""

    def __init__(self, cfg: dict, req_fd: int, resp_fd: int):
        self.cfg = cfg
        self.req_fd = req_fd
        self.resp_fd = resp_fd
        self.pid = os.getpid()
        self.isolation: dict = {"env": "scrubbed"}
        self.notes: list[str] = []
        self.uid: int | None = None
        self.fs_root = False
        self.highs_scheduler = False  # children inherit a started single-thread HiGHS scheduler
        self.landlock = 0
        self.read_dirs: list[str] | None = None
        self.landlock_rules: LandlockRules | None = None  # read dirs opened once (see execute)
        self.disabled = frozenset(cfg.get("disabled_layers", ()))
        unknown = self.disabled - set(LAYERS)
        if unknown:
            raise ValueError(f"unknown sandbox layers {sorted(unknown)}")

    # setup -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        # Every temp dir of this worker lives here, so the pool can remove them even if we die.
        self.tmp_base = tempfile.mkdtemp(prefix=f"storm-exec-w{self.pid}-", dir=self.cfg["tmp_root"])
        os.chmod(self.tmp_base, 0o711)
        try:
            if "subreaper" in self.disabled:
                raise OSError("disabled by config")
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            self.isolation["reaper"] = "subreaper"
        except OSError as e:
            self.isolation["reaper"] = "none"
            self.notes.append(f"subreaper: {e}")
        self._setup_network()
        self._setup_fs()
        self._setup_uid()
        self._preload()
        self.isolation["kill"] = "uid" if self.uid is not None else "descendants"
        for layer in sorted(self.disabled):
            self.isolation[layer] = "disabled"
        # After the preload: imports may add import roots.
        self.host_paths = HostPaths.of_interpreter().with_dirs({self.tmp_base: "tmp"})
        # From now on the worker's own environment is the programs': a child inherits it as it is, and
        # only HOME, TMPDIR and PWD change per execution (set before the fork, see execute).
        env = self._program_env(self.tmp_base)
        os.environ.clear()
        os.environ.update(env)

    def _probe(self, fn) -> str | None:
        """Run fn() in a throwaway child; None if it succeeded, else the error text."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                fn()
                os._exit(0)
            except BaseException as e:
                os.write(w, repr(e).encode()[:500])
                os._exit(1)
        os.close(w)
        msg = os.read(r, 600).decode(errors="replace")
        os.close(r)
        _, status = os.waitpid(pid, 0)
        return None if status == 0 else (msg or f"status {status}")

    def _setup_network(self) -> None:
        mode = self.cfg["network"]
        self.isolation["network"] = "none"
        if mode in ("auto", "netns"):
            if libc.unshare(CLONE_NEWNET) == 0:
                self.isolation["network"] = "netns"
                return
            self.notes.append(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
            if mode == "netns":
                raise OSError("network='netns' requested but unshare(CLONE_NEWNET) failed")
        if mode in ("auto", "seccomp"):
            err = self._probe(seccomp_block_network)
            if err is None:
                self.isolation["network"] = "seccomp"
                return
            self.notes.append(f"seccomp: {err}")
            if mode == "seccomp":
                raise OSError(f"network='seccomp' requested but unavailable: {err}")

    def _setup_uid(self) -> None:
        self.isolation["uid"] = "unchanged"
        self.isolation["nproc"] = "rlimit" if os.geteuid() != 0 else "unenforced (root)"
        if not self.cfg["drop_uid"] or os.geteuid() != 0:
            return
        # A uid no other live worker on this host can have: derived from our pid (pids are unique).
        uid = self.cfg["uid_base"] + self.pid
        # The interpreter may live where that uid cannot read (a pyenv under /root, a venv in a 0750
        # home). When Landlock confines reads, keep the *filesystem* uid 0 — the process still runs, counts
        # processes and sends signals as `uid` — else require that `uid` can read the interpreter.
        fs_root = self.landlock > 0 and self.read_dirs is not None
        import sysconfig

        needed = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]

        def become() -> None:
            become_uid(uid, fs_root)
            for d in needed:
                os.listdir(d)

        err = self._probe(become)
        if err is None:
            self.uid = uid
            self.fs_root = fs_root
            self.isolation["uid"] = f"dropped:{uid}" + (" (fsuid 0 under landlock)" if fs_root else "")
            self.isolation["nproc"] = "rlimit"
            if self.isolation["signals"] == "none":
                self.isolation["signals"] = "uid"
        else:
            self.notes.append(f"setuid({uid}): {err}")

    def _setup_fs(self) -> None:
        self.isolation["fs"] = "none"
        self.isolation["fs_read"] = "none"
        self.isolation["signals"] = "none"
        if not self.cfg["restrict_fs"]:
            return
        abi = landlock_abi()
        if abi < 1:
            self.notes.append("landlock unavailable")
            return
        read_dirs = system_read_dirs() if self.cfg["restrict_reads"] else None
        tmp = tempfile.mkdtemp(prefix="storm-probe-", dir=self.cfg["tmp_root"])
        try:
            err = self._probe(lambda: landlock_restrict(abi, [tmp], read_dirs))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if err is not None:
            self.notes.append(f"landlock: {err}")
            return
        self.landlock = abi
        self.read_dirs = read_dirs
        self.landlock_rules = LandlockRules(abi, read_dirs)
        self.isolation["fs"] = "landlock"
        self.isolation["fs_read"] = "landlock" if read_dirs is not None else "none"
        self.isolation["landlock_abi"] = abi
        if abi >= 6:
            self.isolation["signals"] = "landlock"

    def _preload(self) -> None:
        errors = {}
        for name in self.cfg["preload"]:
            try:
                __import__(name)
            except Exception as e:  # a missing optional package must not kill the worker
                errors[name] = repr(e)
        if self.cfg["warm_solve"] and not errors:
            try:
                # Fill pyomo/appsi caches once so each child skips them; then stop HiGHS's thread pool:
                # a fork must not inherit a scheduler whose threads do not exist in the child.
                import io
                from contextlib import redirect_stderr, redirect_stdout

                with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                    exec(compile(_WARM_MODEL, "<warm>", "exec"), {"__name__": "__warm__"})
                import highspy

                highspy.Highs.resetGlobalScheduler(True)
                if self.cfg["single_thread_solver"]:
                    _start_single_thread_highs(highspy)
                    self.highs_scheduler = True
            except Exception as e:
                errors["warm_solve"] = repr(e)
        self.preload_errors = errors
        gc.collect()
        gc.freeze()  # keep the collector from touching (and un-sharing) inherited objects in children

    # serving -----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        threads = len(os.listdir("/proc/self/task"))
        send_msg(
            self.resp_fd,
            {
                "ready": True,
                "pid": self.pid,
                "uid": self.uid,
                "isolation": self.isolation,
                "notes": self.notes,
                "preload_errors": self.preload_errors,
                "threads": threads,
                "tmp_base": self.tmp_base,
            },
        )
        while True:
            req = recv_msg(self.req_fd)
            if req is None:
                self._rmtree(self.tmp_base)
                return
            send_msg(self.resp_fd, self.execute(req))

    def execute(self, req: dict) -> dict:
        """Run one program; return the raw result (status classification without the answer)."""
        lim = req["limits"]
        tmp = tempfile.mkdtemp(prefix="storm-exec-", dir=self.tmp_base)
        if self.uid is not None:
            if self.fs_root:  # files are created as fsuid 0; exec'd tools run as `uid`: both may write
                os.chmod(tmp, 0o777)
            else:
                os.chown(tmp, self.uid, self.uid)
        # What does not need the child is done here, before the fork: in the child every page it
        # touches is copied on write, here most are the worker's own already.
        for k in ("HOME", "TMPDIR", "PWD"):
            os.environ[k] = tmp
        ruleset: int | OSError | None = None
        if self.landlock_rules is not None:
            try:
                ruleset = self.landlock_rules.ruleset([tmp])
            except OSError as e:  # reported by the child as a sandbox setup failure
                ruleset = e
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.monotonic()
        try:
            pid = os.fork()
            if pid == 0:
                self._child(req["code"], lim, tmp, ruleset, out_w, err_w, st_w)  # never returns
        finally:
            if isinstance(ruleset, int):
                os.close(ruleset)
            for fd in (out_w, err_w, st_w):
                os.close(fd)
        try:
            return self._supervise(pid, t0, lim, tmp, out_r, err_r, st_r)
        finally:
            for fd in (out_r, err_r, st_r):
                os.close(fd)
            self._rmtree(tmp)

    @staticmethod
    def _program_env(tmp: str) -> dict[str, str]:
        """The program's environment: the worker's (already scrubbed) locale and path, thread counts."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env.update(HOME=tmp, TMPDIR=tmp, PWD=tmp, PYTHONUNBUFFERED="1")
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_ARENA_MAX"):
            if k in os.environ:
                env[k] = os.environ[k]
        return env

    def _child(self, code: str, lim: dict, tmp: str, ruleset, out_w: int, err_w: int, st_w: int) -> None:
        status_fd = st_w
        try:
            os.setsid()
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            if ruleset is not None:  # Landlock first: the ruleset's fd may be one that dup2 reuses below
                if isinstance(ruleset, OSError):
                    raise ruleset
                landlock_restrict_self(ruleset)
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(st_w, 3)
            status_fd = 3
            os.closerange(4, 1 << 20)  # the worker's pipes, the ruleset, the Landlock rules' dirs
            os.chdir(tmp)  # the environment is the worker's, made the program's in setup and execute
            tempfile.tempdir = tmp
            setr = resource.setrlimit
            cpu = int(lim["cpu_s"] + 0.999)
            setr(resource.RLIMIT_CPU, (cpu, cpu + 1))
            setr(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))
            setr(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
            setr(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
            setr(resource.RLIMIT_CORE, (0, 0))
            if self.isolation["network"] == "seccomp":
                seccomp_block_network()
            if self.uid is not None:
                become_uid(self.uid, self.fs_root)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
            if os.getppid() != self.pid:  # the worker died before the line above
                os._exit(_SETUP_FAILED)
            sys.argv = ["main.py"]
            _signal.signal(signal.SIGINT, signal.default_int_handler)  # signal.signal's enum wrapping costs
            if self.highs_scheduler and "threads" in code:
                # The program may set HiGHS's "threads" option, and HiGHS refuses a count other than
                # the running scheduler's: give it none, as in a fresh process (its first solve starts
                # one with the threads it asks for).
                sys.modules["highspy"].Highs.resetGlobalScheduler(True)
        except BaseException as e:
            try:
                os.write(status_fd, f"setup:{e!r}".encode()[:2000])
            finally:
                os._exit(_SETUP_FAILED)
        run_program(code)

    def _supervise(self, pid: int, t0: float, lim: dict, tmp: str, out_r: int, err_r: int, st_r: int) -> dict:
        out = CappedBuffer(lim["output_chars"] * 4)
        err = CappedBuffer(lim["output_chars"] * 4)
        deadline = t0 + lim["wall_s"]
        poller = select.poll()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        streams = {out_r: out, err_r: err}
        for fd in streams:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        reason = None  # why we killed it, if we did
        wait_status = rusage = None
        open_fds = set(streams)
        while True:
            now = time.monotonic()
            if now >= deadline:
                reason = "timeout"
                break
            tick = deadline - now if pidfd is not None else min(deadline - now, 0.005)
            exited = pidfd is None  # without a pidfd: poll the child's status every tick
            for fd, _ev in poller.poll(max(tick, 0) * 1000):
                if fd == pidfd:
                    exited = True
                    continue
                data = os.read(fd, 1 << 16)
                if data:
                    streams[fd].add(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if out.total + err.total > lim["max_output_bytes"]:
                reason = "output"
                break
            if exited:  # with a pidfd, only once it says the child has exited
                wpid, wstatus, ru = os.wait4(pid, os.WNOHANG)
                if wpid == pid:
                    wait_status, rusage = wstatus, ru
                    break
        end = time.monotonic()
        if wait_status is None:
            if "group_kill" not in self.disabled:
                try:  # the program and everything it forked that stayed in its process group
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            _, wait_status, rusage = os.wait4(pid, 0)
        if pidfd is not None:
            os.close(pidfd)
        strays = self._kill_strays(pid) if "stray_sweep" not in self.disabled else 0
        # All writers are gone (unless a test disabled the kill layers): drain what is left in the pipes
        # (bounded by the pipe buffers; non-blocking, so a surviving writer cannot stall us).
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, 1 << 16):
                    streams[fd].add(data)
            except BlockingIOError:
                pass
        os.set_blocking(st_r, False)
        try:
            status_note = os.read(st_r, 4096).decode(errors="replace")
        except BlockingIOError:
            status_note = ""
        stderr = err.text(lim["output_chars"])
        status, returncode, note = classify(wait_status, reason, status_note, stderr, rusage, lim)
        if note:
            stderr = f"{stderr}\n[storm_jax sandbox: {note}]" if stderr else f"[storm_jax sandbox: {note}]"
        # The model reads this output (and trains on it): no path of this host may remain in it.
        stdout = out.text(lim["output_chars"])
        if "/" in stdout or "/" in stderr:  # most outputs hold no path: skip building this run's table
            paths = self.host_paths.with_dirs({}, cwd=tmp)
            stdout, stderr = paths.scrub(stdout), paths.scrub(stderr)
        return {
            "status": status,
            "returncode": returncode,
            "stdout": stdout,
            "stderr": stderr,
            "stdout_bytes": out.total,
            "stderr_bytes": err.total,
            "duration_s": end - t0,
            "cpu_s": rusage.ru_utime + rusage.ru_stime if rusage is not None else None,
            "maxrss_kb": rusage.ru_maxrss if rusage is not None else None,
            "strays": strays,
        }

    def _has_children(self) -> bool:
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # None: children, none exited
        except ChildProcessError:
            return False
        return True

    def _reap(self) -> None:
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    def _kill_strays(self, pid: int) -> int:
        """SIGKILL every process the execution left; returns how many rounds it took (0: none left)."""
        rounds = 0
        give_up = time.monotonic() + 10.0
        # Without the subreaper an orphan is re-parented out of our sight, so "no children left" proves
        # nothing: the uid kill, which reaches it anyway, then runs once regardless.
        blind = self.uid is not None and self.isolation["reaper"] != "subreaper"
        while self._has_children() or (blind and rounds == 0):
            rounds += 1
            if self.uid is not None:
                helper = os.fork()
                if helper == 0:
                    try:
                        os.setgroups([])
                        os.setgid(self.uid)
                        os.setuid(self.uid)
                        os.kill(-1, signal.SIGKILL)  # every process of this uid but the caller
                    finally:
                        os._exit(0)
                os.waitpid(helper, 0)
            else:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                for p in descendants(self.pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
            self._reap()
            if self._has_children():
                if time.monotonic() > give_up:
                    break  # unkillable (D state) processes: report, do not hang the worker
                time.sleep(0.001)
                self._reap()
        return rounds

    def _rmtree(self, path: str) -> None:
        try:
            os.rmdir(path)  # most programs leave their temp dir empty
            return
        except FileNotFoundError:
            return
        except OSError:
            pass

        def fix_and_retry(func, p, _exc):
            try:
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
                func(p)
            except OSError:
                pass

        shutil.rmtree(path, onerror=fix_and_retry)
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    req_fd, resp_fd = int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool owns our lifetime, not the terminal
    worker = Worker(cfg, req_fd, resp_fd)
    worker.setup()
    worker.serve()
    return 0


if __name__ == "__main__":
    # Run as a script: our own directory must not shadow modules the programs import.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
