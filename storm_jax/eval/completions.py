"""Reading a completions JSONL: one model sample per line, ``{"id", "completion", "sample_index"?}``."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Completion:
    """One model sample for a benchmark row."""

    id: str
    completion: str
    sample_index: int


def read_completions(path: str | os.PathLike) -> list[Completion]:
    """Completions from a JSONL file; a malformed line errors with file:line.

    A missing ``sample_index`` is the row's rank among the rows with the same id, in file order.
    """
    path = Path(path)
    rows: list[Completion] = []
    counts: collections.Counter[str] = collections.Counter()
    seen: dict[tuple[str, int], int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if not isinstance(obj.get("id"), str):
                raise ValueError(f"{where}: key 'id' must be a string")
            if not isinstance(obj.get("completion"), str):
                raise ValueError(f"{where}: key 'completion' must be a string")
            idx = obj.get("sample_index", counts[obj["id"]])
            if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                raise ValueError(f"{where}: 'sample_index' must be a non-negative integer, got {idx!r}")
            key = (obj["id"], idx)
            if key in seen:
                raise ValueError(f"{where}: duplicate (id, sample_index) {key} (first at line {seen[key]})")
            seen[key] = lineno
            counts[obj["id"]] += 1
            rows.append(Completion(obj["id"], obj["completion"], idx))
    return rows
