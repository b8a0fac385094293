"""Pieces shared by the long data jobs (`storm-jax calm`, `storm-jax warmup-data`): rows that survive a
kill, and a stable per-problem seed.

`JsonlLog` is an append-only JSONL file written one row at a time with flush + fsync, so a kill loses at
most the row being written; a torn last line (a kill inside write) is cut off when the file is opened.
A job keeps its finished problems in such a file and skips them on a rerun (the done-set), which is what
makes `kill -> rerun` continue instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


class JsonlLog:
    """An append-only JSONL file of dict rows (see module docstring)."""

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict] = []
        self.path.touch()  # the output exists from the start, even while (or if) it stays empty
        if self.path.exists():
            data = self.path.read_bytes()
            good = data.rfind(b"\n") + 1
            if good < len(data):  # a torn last line: the row it held was never finished
                with self.path.open("r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
            for lineno, line in enumerate(data[:good].decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        self._rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{self.path}:{lineno}: invalid JSON ({e.msg})") from None
        self._keys = {str(r.get(key)) for r in self._rows}

    def rows(self) -> list[dict]:
        return list(self._rows)

    def __contains__(self, key: Any) -> bool:
        return str(key) in self._keys

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, row: dict) -> None:
        """Write one row and fsync it."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._rows.append(row)
        self._keys.add(str(row.get(self.key)))


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from the parts (e.g. run seed, problem id, round): independent of order and batching."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def read_problems(path: str | os.PathLike, limit: int = 0) -> list[dict]:
    """Benchmark-schema problem rows ({"id", "question", "answer", "answer_status"?, "meta"?})."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) or "id" not in row:
                raise ValueError(f"{path}:{lineno}: a problem row needs 'id' and a string 'question'")
            out.append(row)
            if limit and len(out) >= limit:
                break
    ids = [str(r["id"]) for r in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: problem id {dup!r} appears more than once")
    return out
