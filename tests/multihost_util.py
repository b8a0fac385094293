"""Launch N JAX processes on localhost as a pod would (one coordinator, JAX_PROCESS_ID per process).

Each process runs `tests/multihost_worker.py`, which records every file it opens for writing (a Python audit
hook), so a test can check which process wrote what.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    argv: list[str],
    *,
    num_processes: int,
    devices_per_process: int,
    record_dir: str,
    timeout: float = 420.0,
    env_extra: dict[str, str] | None = None,
) -> list[tuple[int, str]]:
    """Run `storm-jax <argv>` in num_processes processes; [(returncode, output)] in process order.

    One process runs without any JAX_* variable (the single-process reference). A process that outlives
    `timeout` is killed (its return code is then negative) so a hung collective fails the test, not the suite.
    """
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")  # fmt: skip
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "STORM_JAX_FAULT_AT_STEP"):
        base.pop(k, None)
    base.update(env_extra or {})
    os.makedirs(record_dir, exist_ok=True)
    addr = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(num_processes):
        env = dict(base)
        if num_processes > 1:
            env.update(
                JAX_COORDINATOR_ADDRESS=addr, JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i)
            )
        record = os.path.join(record_dir, f"written.p{i}.txt")
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, record, *argv],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    deadline = time.time() + timeout
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(deadline - time.time(), 1.0))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            text, _ = p.communicate()
            text += "\n[killed: timeout]"
        out.append((p.returncode, text))
    return out


def _records(record_dir: str, index: int) -> list[str]:
    path = os.path.join(record_dir, f"written.p{index}.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def written(record_dir: str, index: int) -> list[str]:
    """Paths process `index` opened for writing (absolute, in order, without repeats)."""
    seen: dict[str, None] = {}
    for line in _records(record_dir, index):
        if not line.startswith("spawn "):
            seen.setdefault(line, None)
    return list(seen)


def spawned(record_dir: str, index: int) -> list[str]:
    """The first two argv entries of every subprocess process `index` started, in order."""
    return [line[len("spawn ") :] for line in _records(record_dir, index) if line.startswith("spawn ")]
