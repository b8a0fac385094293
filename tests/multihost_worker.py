"""`python tests/multihost_worker.py RECORD storm-jax-args...`: run the CLI, logging files opened for writing.

The audit hook appends each path this process opens with a write mode to RECORD, and `spawn <argv[:2]>` for
each subprocess it starts (flushed per line, so a SIGKILLed process leaves its record behind). Used by the multi-process tests to check that only process 0
writes the run's files.
"""

import os
import sys


def _hook(record_path: str):
    record = open(record_path, "a", buffering=1)  # opened before the hook is installed: not recorded

    def hook(event: str, args: tuple) -> None:
        if event == "subprocess.Popen":  # (executable, args, cwd, env): e.g. execution-pool workers
            argv = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else [args[0]]
            record.write(
                "spawn "
                + " ".join(os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in argv[:2])
                + "\n"
            )
            return
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writes:
            record.write(os.path.abspath(os.fsdecode(args[0])) + "\n")

    return hook


if __name__ == "__main__":
    sys.addaudithook(_hook(sys.argv[1]))
    from storm_jax.cli import main

    sys.exit(main(sys.argv[2:]))
