"""The program's side of the execution sandbox: run the code as ``__main__`` and report an uncaught error.

Runs inside the sandboxed child, after every isolation layer is in place. Standard library only (see
:mod:`storm_jax.execution.sandbox`).

Tracebacks are what the model reads back (and what lands in training trajectories), so they show the
program as the stable pseudo-file ``<program>`` and never the sandbox's own frames. Library frames stay
(a pyomo error is easier to fix when one sees which pyomo call raised it); their host paths are made
library-relative afterwards by the worker (:class:`storm_jax.execution.sandbox_io.HostPaths`), which does
the same for paths inside messages (an ``ImportError`` names the module file) and for warnings.
"""

from __future__ import annotations

import linecache
import os
import sys
import traceback

PROGRAM_FILE = "<program>"  # the program's name in tracebacks, warnings and pyomo's "called from" notes


def _own_files() -> frozenset[str]:
    """Source files of the sandbox itself: their frames (the exec() that runs the program) are hidden."""
    here = os.path.dirname(os.path.abspath(__file__))
    names = ("sandbox.py", "sandbox_program.py", "sandbox_io.py", "sandbox_kernel.py")
    return frozenset(os.path.join(here, n) for n in names)


_OWN_FILES = _own_files()


def format_program_exception(exc: BaseException) -> str:
    """The traceback of `exc` as Python prints it, minus the sandbox's frames (chained exceptions too)."""
    te = traceback.TracebackException.from_exception(exc)
    todo, seen = [te], set()
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        frames = [f for f in t.stack if os.path.abspath(f.filename) not in _OWN_FILES]
        t.stack = traceback.StackSummary.from_list(frames)
        todo += [c for c in (t.__cause__, t.__context__) if c is not None]
        todo += getattr(t, "exceptions", None) or []  # ExceptionGroup members
    return "".join(te.format())


def run_program(code: str, status_fd: int = 3) -> None:
    """Execute `code` as __main__ in this (sandboxed) child and exit with its status; never returns.

    An uncaught exception is printed to stderr and noted on `status_fd` as ``exc:<type>:<is MemoryError>``
    (the worker tells a MemoryError under the address-space limit from other errors by it).
    """
    rc = 0
    note = ""
    try:
        # Tracebacks show the program's lines without a file on disk (mtime None: checkcache keeps it).
        linecache.cache[PROGRAM_FILE] = (len(code), None, code.splitlines(True), PROGRAM_FILE)
        exec(compile(code, PROGRAM_FILE, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        if e.code is None:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except BaseException as e:
        note = f"exc:{type(e).__name__}:{int(isinstance(e, MemoryError))}"
        rc = 1
        try:
            sys.stderr.write(format_program_exception(e))
        except BaseException:
            try:  # e.g. a MemoryError while formatting: the error line alone beats nothing
                sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
            except BaseException:
                pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            rc = rc or 120  # what CPython returns when flushing stdout at exit fails
    if note:
        try:
            os.write(status_fd, note.encode())
        except OSError:
            pass
    os._exit(rc)
