"""Execution pool for generated solver code (docs/design.md#executing-generated-code).

Warm worker processes (pyomo + highspy imported, a first solve done) each fork a sandboxed child per
program — see :mod:`storm_jax.execution.sandbox` for what the child and the worker do. This module is
the parent side: it starts the workers with a scrubbed environment, hands out programs from a queue to
one dispatcher thread per worker, replaces a worker that dies or stops answering, parses the answer from
the captured stdout, and offers a synchronous and a future-based API. All waits are blocking reads on
pipes, so the GIL is free while programs run.

Statuses: ``ok`` (exit 0 and an answer was printed), ``no_answer`` (exit 0, no answer in stdout),
``error`` (non-zero exit, uncaught exception, sandbox setup failure), ``timeout`` (wall or CPU time
limit), ``memory`` (MemoryError / allocation failure under the address-space limit), ``killed`` (died
of a signal, wrote more than ``max_output_bytes``, or its worker died under it).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from storm_jax.execution import sandbox

STATUSES = ("ok", "error", "timeout", "memory", "killed", "no_answer")
NETWORK_MODES = ("auto", "netns", "seccomp", "none")

# Environment variables a worker (and so every program) inherits; everything else — cloud credentials,
# tokens, proxies, the user's HOME — is dropped.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH")
_ENV_FIXED = {
    # One thread per BLAS/OpenMP pool: threads count against the process limit, and a forked child must
    # not inherit a half-alive thread pool.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # Few malloc arenas: each costs 64 MiB of address space against the RLIMIT_AS budget.
    "MALLOC_ARENA_MAX": "2",
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclass(frozen=True)
class ExecutionConfig:
    """Per-execution limits and sandbox options (defaults follow the issue: 10 s wall/CPU, 2 GiB)."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_bytes: int = 2 * 1024**3  # RLIMIT_AS of the child
    nproc: int | None = None  # RLIMIT_NPROC (processes + threads of the execution); None: 32 + cpu count
    fsize_bytes: int = 16 * 1024**2  # largest file a program may write
    output_chars: int = 8000  # stdout/stderr kept per stream (head + tail)
    max_output_bytes: int = 16 * 1024**2  # a program printing more than this is killed
    network: str = "auto"  # auto: netns, else seccomp, else none
    drop_uid: bool = True  # as root: run programs under a per-worker unprivileged uid
    restrict_fs: bool = True  # Landlock: writes only under the private temp dir
    restrict_reads: bool = True  # Landlock: reads only under system / Python dirs and the temp dir
    preload: tuple[str, ...] = ("pyomo.environ", "highspy", "pyomo.contrib.appsi.solvers.highs")
    warm_solve: bool = True  # solve a tiny model in each worker so children skip first-use costs
    # HiGHS single-threaded, on a scheduler the worker starts (with warm_solve) and children inherit,
    # unless the program sets HiGHS's "threads" option; False: HiGHS's default threads, a scheduler
    # started anew in every program (a thread creation and a spinning worker thread each time).
    single_thread_solver: bool = True
    tmp_root: str | None = None  # where private temp dirs go (default: the system temp dir)
    uid_base: int = 1_500_000_000  # execution uid = uid_base + worker pid
    startup_timeout_s: float = 120.0
    hang_grace_s: float = 10.0  # a worker silent this long past a deadline is replaced
    python: str | None = None  # interpreter of the workers (default: this one)
    # For tests only: cleanup layers to switch off (see sandbox.LAYERS), so each is checked on its own.
    disabled_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "startup_timeout_s", "hang_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ExecutionConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("memory_bytes", "fsize_bytes", "output_chars", "max_output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ExecutionConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.nproc is not None and self.nproc < 1:
            raise ValueError(f"ExecutionConfig.nproc must be >= 1 or None, got {self.nproc!r}")
        unknown = set(self.disabled_layers) - set(sandbox.LAYERS)
        if unknown:
            raise ValueError(
                f"ExecutionConfig.disabled_layers: unknown {sorted(unknown)}, known {sandbox.LAYERS}"
            )
        if self.network not in NETWORK_MODES:
            raise ValueError(f"ExecutionConfig.network must be one of {NETWORK_MODES}, got {self.network!r}")

    def limits(self, timeout_s: float | None) -> dict:
        """Limits of one execution; `timeout_s` replaces the wall limit (and raises the CPU one to it)."""
        wall = self.wall_s if timeout_s is None else float(timeout_s)
        if not wall > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        return {
            "wall_s": wall,
            "cpu_s": self.cpu_s if timeout_s is None else max(self.cpu_s, wall),
            "memory_bytes": self.memory_bytes,
            "nproc": self.nproc if self.nproc is not None else 32 + (os.cpu_count() or 1),
            "fsize_bytes": self.fsize_bytes,
            "output_chars": self.output_chars,
            "max_output_bytes": self.max_output_bytes,
        }


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program."""

    status: str  # "ok" | "error" | "timeout" | "memory" | "killed" | "no_answer"
    stdout: str
    stderr: str
    answer: float | str | None  # parsed from stdout (exit 0 only) via answers.answer_from_output
    duration_s: float  # fork to exit (or kill) of the program
    returncode: int | None  # exit code, or -signal; None when the worker died
    cpu_s: float | None = None
    info: dict = field(default_factory=dict, compare=False)  # bytes written, stray-kill rounds, ...


def _scrubbed_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(_ENV_FIXED)
    return env


def _pids_of_uid(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, cfg: ExecutionConfig):
        wire = asdict(cfg)
        wire["preload"] = list(cfg.preload)
        wire["disabled_layers"] = list(cfg.disabled_layers)
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [cfg.python or sys.executable, sandbox.__file__, json.dumps(wire), str(req_r), str(resp_w)],
                env=_scrubbed_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if os.environ.get("STORM_EXEC_DEBUG") else subprocess.DEVNULL,
                pass_fds=(req_r, resp_w),
                start_new_session=True,
                cwd="/",
            )
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.info: dict = {}

    def wait_ready(self, timeout_s: float) -> dict:
        msg = self._recv(time.monotonic() + timeout_s)
        if not msg or not msg.get("ready"):
            self.kill()
            raise RuntimeError(f"execution worker failed to start (exit code {self.proc.poll()})")
        self.info = msg
        return msg

    def _recv(self, deadline: float) -> dict | None:
        """Next message, or None if the worker died or `deadline` passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([self.resp_r], [], [], remaining)
        if not ready:
            return None
        try:
            return sandbox.recv_msg(self.resp_r)
        except (OSError, ValueError):
            return None

    def call(self, req: dict, deadline: float) -> dict | None:
        try:
            sandbox.send_msg(self.req_w, req)
        except OSError:
            return None
        return self._recv(deadline)

    def kill(self) -> None:
        """Kill the worker, its process group and every process of its execution uid."""
        for fd in (self.req_w, self.resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        if self.info.get("tmp_base"):
            shutil.rmtree(self.info["tmp_base"], ignore_errors=True)
        uid = self.info.get("uid")
        if uid is not None:
            for _ in range(100):
                pids = _pids_of_uid(uid)
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.01)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            os.close(self.req_w)  # EOF: the worker exits after its current execution
        except OSError:
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


@dataclass
class _Job:
    code: str
    timeout_s: float | None
    future: concurrent.futures.Future


class ExecutionPool:
    """Runs untrusted programs in sandboxed children of warm workers. Thread-safe; a context manager.

    ``isolation`` says what is in force (the weakest over the workers):
    ``{"network": "netns"|"seccomp"|"none", "fs": "landlock"|"none", "fs_read": ..., "uid": "dropped:<uid>"|
    "unchanged", "signals": "landlock"|"uid"|"none", "kill": "uid"|"descendants", "env": "scrubbed", ...}``.
    """

    def __init__(self, num_workers: int = 2, config: ExecutionConfig = ExecutionConfig()):  # noqa: B008
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.config = config
        self.num_workers = num_workers
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        workers = [_Worker(config) for _ in range(num_workers)]  # start all, then wait: parallel imports
        try:
            for w in workers:
                w.wait_ready(config.startup_timeout_s)
        except BaseException:
            for w in workers:
                w.kill()
            raise
        self._workers = workers
        self.isolation = dict(workers[0].info["isolation"])
        self.notes = list(workers[0].info["notes"])
        self.preload_errors = dict(workers[0].info["preload_errors"])
        self._threads = [
            threading.Thread(target=self._dispatch, args=(i,), name=f"storm-exec-{i}", daemon=True)
            for i in range(num_workers)
        ]
        for t in self._threads:
            t.start()

    # public API ---------------------------------------------------------------------------------------------
    @property
    def worker_uids(self) -> list[int]:
        """The execution uids in use (empty when programs run under the pool's own uid)."""
        with self._lock:
            return [w.info["uid"] for w in self._workers if w.info.get("uid") is not None]

    @property
    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def submit(self, code: str, *, timeout_s: float | None = None) -> concurrent.futures.Future:
        """Queue `code`; the future resolves to its ExecutionResult."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        self.config.limits(timeout_s)  # validate now, not in the dispatcher
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("ExecutionPool is closed")
            self._queue.put(_Job(code, timeout_s, fut))
        return fut

    def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Run `code` and wait for its result."""
        return self.submit(code, timeout_s=timeout_s).result()

    def map(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        """Run all `codes` concurrently (up to num_workers at a time); results in input order."""
        futures = [self.submit(c, timeout_s=timeout_s) for c in codes]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Cancel queued programs, let running ones finish, stop the workers and kill their processes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        while True:  # jobs behind the sentinels never ran
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        for w in self._workers:
            w.close()

    def __enter__(self) -> ExecutionPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    # internals -----------------------------------------------------------------------------------------------
    def _dispatch(self, slot: int) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self._execute(slot, job))
            except BaseException as e:  # never lose a future, even on a bug of ours
                job.future.set_exception(e)

    def _execute(self, slot: int, job: _Job) -> ExecutionResult:
        limits = self.config.limits(job.timeout_s)
        worker = self._workers[slot]
        t0 = time.monotonic()
        raw = worker.call(
            {"code": job.code, "limits": limits}, t0 + limits["wall_s"] + self.config.hang_grace_s
        )
        if raw is None:  # the worker died or hung: replace it; the program gets the blame it can get
            try:
                worker.proc.wait(1.0)  # EOF on its pipe: it is exiting
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
            self._replace(slot)
            return ExecutionResult(
                status="timeout" if hung else "killed",
                stdout="",
                stderr=f"[storm_jax sandbox: execution worker {'hung' if hung else 'died'}; replaced]",
                answer=None,
                duration_s=time.monotonic() - t0,
                returncode=None,
            )
        status = raw["status"]
        answer = None
        if status == "ok":
            from storm_jax.execution.answers import answer_from_output

            answer = answer_from_output(raw["stdout"])
            if answer is None:
                status = "no_answer"
        info = {k: raw[k] for k in ("stdout_bytes", "stderr_bytes", "maxrss_kb", "strays")}
        return ExecutionResult(
            status=status,
            stdout=raw["stdout"],
            stderr=raw["stderr"],
            answer=answer,
            duration_s=raw["duration_s"],
            returncode=raw["returncode"],
            cpu_s=raw["cpu_s"],
            info=info,
        )

    def _replace(self, slot: int) -> None:
        old = self._workers[slot]
        old.kill()
        new = _Worker(self.config)
        new.wait_ready(self.config.startup_timeout_s)
        with self._lock:
            self._workers[slot] = new
            self.restarts += 1
