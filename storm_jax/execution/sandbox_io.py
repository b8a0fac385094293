"""Transport and output of the execution sandbox: the worker's wire protocol, capped output capture, and
the rewriting of this host's paths in what the model is shown.

Standard library only: loaded by the worker script :mod:`storm_jax.execution.sandbox` and by the pool.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import sys

# --- wire protocol: 4-byte big-endian length + UTF-8 JSON -------------------------------------------------


def send_msg(fd: int, obj: dict) -> None:
    """Write one length-prefixed JSON message to `fd`."""
    data = json.dumps(obj).encode()
    buf = memoryview(struct.pack(">I", len(data)) + data)
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_msg(fd: int) -> dict | None:
    """Read one message from `fd` (blocking); None at EOF."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


# --- output capture ----------------------------------------------------------------------------------------


class CappedBuffer:
    """Keeps the first and the last `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap: int):
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.cap:  # trim lazily: amortized O(1) per byte
                del self.tail[: len(self.tail) - self.cap]

    def text(self, max_chars: int) -> str:
        """Decoded output; when longer than `max_chars`, its head and tail around a truncation note."""
        tail = bytes(self.tail[-self.cap :])
        full = (self.head + tail).decode(errors="replace")
        dropped = self.total - len(self.head) - len(tail)
        if dropped == 0 and len(full) <= max_chars:
            return full
        head_s = self.head.decode(errors="replace")[: max_chars // 2]
        tail_s = tail.decode(errors="replace")[-(max_chars - max_chars // 2) :]
        omitted = self.total - len(head_s.encode()) - len(tail_s.encode())
        return f"{head_s}\n... [{omitted} bytes truncated] ...\n{tail_s}"


# --- status of a finished program ---------------------------------------------------------------------

_MEMORY_WORDS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")


def classify(wait_status: int, reason: str | None, status_note: str, stderr: str, rusage, lim: dict):
    """(status, returncode, note) of a finished child; status is one of ok/error/timeout/memory/killed
    (the pool turns "ok" without an answer into "no_answer")."""
    if os.WIFSIGNALED(wait_status):
        returncode = -os.WTERMSIG(wait_status)
    else:
        returncode = os.waitstatus_to_exitcode(wait_status)
    if reason == "timeout":
        return "timeout", returncode, f"wall-time limit of {lim['wall_s']:g} s exceeded; killed"
    if reason == "output":
        return "killed", returncode, f"output limit of {lim['max_output_bytes']} bytes exceeded; killed"
    if status_note.startswith("setup:"):
        return "error", returncode, f"sandbox setup failed: {status_note[6:]}"
    if returncode < 0:
        sig = -returncode
        cpu = rusage.ru_utime + rusage.ru_stime if rusage is not None else 0.0
        cpu_limit = int(lim["cpu_s"] + 0.999)
        # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one.
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05):
            return "timeout", returncode, f"CPU-time limit of {cpu_limit} s exceeded"
        if any(w in stderr for w in _MEMORY_WORDS):
            return (
                "memory",
                returncode,
                f"killed by signal {signal.Signals(sig).name} after running out of memory",
            )
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "killed", returncode, f"killed by signal {name}"
    if status_note.startswith("exc:") and status_note.endswith(":1"):
        return "memory", returncode, f"memory limit of {lim['memory_bytes']} bytes exceeded"
    return ("ok" if returncode == 0 else "error"), returncode, ""


# --- host paths in output -------------------------------------------------------------------------------


class HostPaths:
    """Rewrites this host's paths in text shown to the model (it ends up in training trajectories).

    A path beneath an import root (a ``sys.path`` entry, or the checkout holding this package) becomes
    relative to it — ``pyomo/core/base/block.py`` —, so tracebacks, warnings and messages such as an
    ImportError's keep the library-relative part that helps fix the program; an interpreter prefix
    becomes ``<python>/...``, the execution's own temp dir (the program's cwd) a relative path or ``.``,
    other named dirs ``<name>/...``.
    """

    def __init__(self, table: dict[str, tuple[str, str]]):
        """`table`: {absolute dir: (replacement of "dir/", replacement of a bare "dir")}."""
        full = {}
        for base, rep in table.items():
            for b in (base.rstrip("/"), os.path.realpath(base)):  # also the dir spelled without symlinks
                if os.path.isabs(b) and b != "/":
                    full.setdefault(b, rep)
        self.table = full
        # Longest first: site-packages inside a venv matches before the venv's prefix does.
        alts = "|".join(re.escape(b) for b in sorted(full, key=len, reverse=True))
        self._re = re.compile(f"({alts})(/)?") if alts else None

    @classmethod
    def of_interpreter(cls) -> HostPaths:
        """This interpreter's prefixes and import roots."""
        table = {p: ("<python>/", "<python>") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        here = os.path.dirname(os.path.abspath(__file__))
        roots = [p for p in sys.path if p and os.path.isabs(p)]
        roots.append(os.path.dirname(os.path.dirname(here)))  # the checkout (or site-packages) of storm_jax
        for d in roots:
            table[d] = ("", "<lib>")
        return cls(table)

    def with_dirs(self, named: dict[str, str], cwd: str | None = None) -> HostPaths:
        """A copy that also rewrites `named` ({dir: name} -> ``<name>/...``) and `cwd` (relative, ``.``)."""
        table = {**self.table, **{d: (f"<{n}>/", f"<{n}>") for d, n in named.items()}}
        if cwd is not None:
            table[cwd] = ("", ".")
        return HostPaths(table)

    def scrub(self, text: str) -> str:
        """`text` with every host path in the table rewritten."""
        if self._re is None or not text:
            return text
        return self._re.sub(lambda m: self.table[m.group(1)][0 if m.group(2) else 1], text)
