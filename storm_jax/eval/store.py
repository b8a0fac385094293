"""The resumable output directory of `storm-jax score`.

``samples.jsonl``  one `SampleResult` per line, append-only, fsync'd per batch. Each line carries the
                   `input_hash` of what it scored; a rerun reuses a line only for a completion with the
                   same (id, sample_index, input hash), so an edited row is rescored and an unchanged one
                   is not. A torn last line (a kill inside write()) is cut off.
``run.json``       the settings as they took effect (a rerun with other settings is refused), plus a
                   record of the last run: the options as requested, the completions file (path, sha256)
                   and how many results were reused and how many scored.
``summary.json``   written atomically; contains no timings or paths, so an interrupted-and-resumed run, or
                   a rerun after an edit, gives the same file as a fresh run on the same inputs.
``summary.md``     the Markdown table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storm_jax.eval.scoring import SampleResult

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"
RUN_FILE = "run.json"

#: Keys of run.json that describe the last run rather than settings; they may change between reruns.
RECORD_KEYS = ("requested", "completions", "last_run")

ResultKey = tuple[str, int, str | None]


def result_key(r: SampleResult) -> ResultKey:
    """What a stored result answers for: (id, sample_index, input hash)."""
    return (r.id, r.sample_index, r.input_sha256)


def load_results(path: Path) -> list[SampleResult]:
    """Results already written, deduped on `result_key` (first wins); a torn last line is cut off the file."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    out: dict[ResultKey, SampleResult] = {}
    for lineno, line in enumerate(data[:good_end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = SampleResult.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: not a sample result ({e})") from None
        out.setdefault(result_key(r), r)
    return list(out.values())


def append_results(path: Path, results: Sequence[SampleResult]) -> None:
    """Append results as JSON lines and fsync, so a kill loses at most the batch being written."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in results))
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse (ValueError naming run.json and the differing keys) when `out_dir` holds other settings."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); use another --out") from None
    old = {k: v for k, v in old.items() if k not in RECORD_KEYS}
    if old != settings:
        diff = {
            k: (old.get(k), settings.get(k))
            for k in sorted(set(old) | set(settings))
            if old.get(k) != settings.get(k)
        }
        raise ValueError(
            f"{path}: output directory holds a run with other settings {diff}; use another --out"
        )


def write_run_record(out_dir: Path, settings: dict[str, Any], record: dict[str, Any]) -> None:
    """Write run.json: `settings` and the `record` of this run (keys of `RECORD_KEYS` only)."""
    unknown = set(record) - set(RECORD_KEYS)
    if unknown:
        raise ValueError(f"run record keys {sorted(unknown)} are not among {RECORD_KEYS}")
    write_atomic(
        Path(out_dir) / RUN_FILE, json.dumps({**settings, **record}, indent=2, sort_keys=True) + "\n"
    )
