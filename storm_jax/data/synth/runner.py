"""Execute gold programs and read their answers.

`LocalRunner` keeps one child python process (ours, started here) that has already imported pyomo and
executes each program in a fresh namespace, so verification costs milliseconds per program instead of a
fresh interpreter each. Tracebacks are reduced to the program's own frames with the file name
``main.py`` so that recorded error outputs are identical on every machine (byte-for-byte regeneration).
`PoolRunner` goes through the project's sandboxed `storm_jax.execution.pool.ExecutionPool` instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Sequence

from storm_jax.execution.answers import answer_from_output

_WORKER = r"""
import contextlib, io, json, linecache, signal, sys, traceback
import pyomo.environ  # warm import: every gold program needs it
import highspy, os
# One solver thread: a multi-threaded MIP search can return a different one of several optimal solutions
# from run to run (it depends on thread timing, i.e. on machine load), and the gold trajectories print the
# solution, so the bundled data would not regenerate byte for byte. HiGHS keeps the first scheduler's
# thread count for the whole process.
sys.stdout.flush()
_fd = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # HiGHS's banner is written to fd 1: keep the protocol clean
try:
    _h = highspy.Highs()
    _h.setOptionValue("output_flag", False)
    _h.setOptionValue("threads", 1)
    _h.addVar(0.0, 1.0)
    _h.run()
    del _h
finally:
    os.dup2(_fd, 1)

class _Timeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _Timeout()

signal.signal(signal.SIGALRM, _alarm)
out_stream = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    code = job["code"]
    buf_out, buf_err = io.StringIO(), io.StringIO()
    status = "ok"
    linecache.cache["main.py"] = (len(code), None, code.splitlines(True), "main.py")
    try:
        signal.alarm(int(job.get("timeout", 20)))
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            exec(compile(code, "main.py", "exec"), {"__name__": "__main__"})
    except _Timeout:
        status = "timeout"
    except BaseException as e:
        status = "error"
        tb = e.__traceback__
        frames = [f for f in traceback.extract_tb(tb) if f.filename == "main.py"]
        text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
        text += "".join(traceback.format_exception_only(type(e), e))
        buf_err.write(text)
    finally:
        signal.alarm(0)
    out_stream.write(json.dumps({"status": status, "stdout": buf_out.getvalue(), "stderr": buf_err.getvalue()}) + "\n")
    out_stream.flush()
"""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one execution produced. `answer` follows storm_jax.execution.answers (float | str | None)."""

    status: str  # ok | error | timeout
    stdout: str
    stderr: str
    answer: float | str | None

    @property
    def output(self) -> str:
        """stdout then stderr, as a terminal shows them (what a trajectory's output block holds)."""
        return self.stdout + self.stderr


class LocalRunner:
    """A single warm child process executing programs one after another (context manager)."""

    def __init__(self, timeout_s: float = 20.0):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, code: str) -> RunResult:
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"code": code, "timeout": max(1, int(self.timeout_s))}) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s + 30)
        line = proc.stdout.readline() if ready else ""
        if not line:  # hung past the alarm or crashed: replace the worker
            self.close()
            return RunResult("timeout", "", "", None)
        res = json.loads(line)
        answer = answer_from_output(res["stdout"]) if res["status"] == "ok" else None
        return RunResult(res["status"], res["stdout"], res["stderr"], answer)

    def map(self, codes: Sequence[str]) -> list[RunResult]:
        return [self.run(c) for c in codes]


class PoolRunner:
    """Adapter over the project's ExecutionPool (sandboxed workers) with the same `run`/`map` surface."""

    def __init__(self, num_workers: int = 1, timeout_s: float = 20.0):
        from storm_jax.execution.pool import ExecutionPool  # imported lazily: optional at import time

        self.timeout_s = timeout_s
        self._pool = ExecutionPool(num_workers)

    def __enter__(self) -> PoolRunner:
        self._pool.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._pool.__exit__(*exc)

    def close(self) -> None:
        self._pool.__exit__(None, None, None)

    def run(self, code: str) -> RunResult:
        r = self._pool.run(code, timeout_s=self.timeout_s)
        return RunResult(r.status, r.stdout, _only_program_frames(r.stderr), r.answer)

    def map(self, codes: Sequence[str]) -> list[RunResult]:
        return [
            RunResult(r.status, r.stdout, _only_program_frames(r.stderr), r.answer)
            for r in self._pool.map(list(codes))
        ]


_FOREIGN_FRAME = re.compile(
    r'^  File "(?!main\.py")[^"]*", line \d+, in [^\n]*\n(?:    [^\n]*\n)?', re.MULTILINE
)


def _only_program_frames(stderr: str) -> str:
    """Drop traceback frames outside the program (sandbox internals, absolute paths of this machine)."""
    return _FOREIGN_FRAME.sub("", stderr)


def answers_match(a: float | str | None, b: float | str | None, rel: float = 1e-6) -> bool:
    """Same status, or numbers within `rel` relative (absolute near zero)."""
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b and a is not None
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))
