"""Registry of the OR-modeling benchmarks and the suites each paper reports.

The data lives outside the repository (never copy it in): one ``<benchmark>.<variant>.jsonl`` per dataset in
a directory given by argument, else by the environment variable ``STORM_DATA_DIR``. Row schema and
provenance: ``README.md`` of that directory.

Names: a *dataset* is ``<benchmark>.<variant>`` (``nl4opt.sirl``); a *suite* names several datasets:

* ``steporlm`` — the seven LLM4OR cleaned sets StepORLM reports;
* ``storm`` — the five ORLM-family originals CALM/STORM most likely used (version unconfirmed);
* ``storm_fixed`` — the same five benchmarks in their SIRL-fixed versions (OptMATH has no fixed copy, so
  ``optmath_bench.orig`` is in both);
* ``all`` — every dataset.

`resolve` also takes a comma-separated list of names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

ENV_VAR = "STORM_DATA_DIR"
ANSWER_STATUSES = ("infeasible", "unbounded", "unknown")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One benchmark file: `n` rows as documented in the data README (a check, not a limit)."""

    benchmark: str
    variant: str
    n: int
    reported_by: str

    @property
    def name(self) -> str:
        return f"{self.benchmark}.{self.variant}"

    @property
    def filename(self) -> str:
        return f"{self.name}.jsonl"


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """One problem. `answer` is None exactly when `answer_status` is infeasible/unbounded/unknown."""

    id: str
    benchmark: str
    variant: str
    question: str
    answer: float | None
    answer_status: str | None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    source: str = ""

    @property
    def dataset(self) -> str:
        return f"{self.benchmark}.{self.variant}"


_SPECS = [
    DatasetSpec("nl4opt", "orlm", 245, "ORLM"),
    DatasetSpec("nl4opt", "optmath", 245, "OptMATH; probably CALM/STORM"),
    DatasetSpec("nl4opt", "sirl", 245, "SIRL"),
    DatasetSpec("nl4opt", "llm4or_clean", 214, "StepORLM, LLM4OR"),
    DatasetSpec("nl4opt", "llmopt", 230, "LLMOPT"),
    DatasetSpec("nl4opt", "resocratic_e", 289, "ReSocratic"),
    DatasetSpec("mamo_easylp", "orig", 652, "ORLM, OptMATH, SIRL, LLMOPT; probably CALM/STORM"),
    DatasetSpec("mamo_easylp", "sirl_fixed", 642, "SIRL"),
    DatasetSpec("mamo_easylp", "llm4or_clean", 545, "StepORLM, LLM4OR"),
    DatasetSpec("mamo_easylp", "llmopt", 652, "LLMOPT"),
    DatasetSpec("mamo_complexlp", "orig", 211, "ORLM, OptMATH, SIRL, LLMOPT; probably CALM/STORM"),
    DatasetSpec("mamo_complexlp", "sirl_fixed", 203, "SIRL"),
    DatasetSpec("mamo_complexlp", "llm4or_clean", 111, "StepORLM, LLM4OR"),
    DatasetSpec("mamo_complexlp", "optimind", 210, "OptiMind"),
    DatasetSpec("industryor", "orlm", 100, "ORLM, OptMATH, SIRL (old), LLMOPT; probably CALM/STORM"),
    DatasetSpec("industryor", "sirl_fixedv2", 100, "SIRL"),
    DatasetSpec("industryor", "llm4or_clean", 42, "StepORLM, LLM4OR"),
    DatasetSpec("industryor", "optimind", 99, "OptiMind"),
    DatasetSpec("industryor", "orthought", 83, "ORThought"),
    DatasetSpec("optmath_bench", "orig", 166, "OptMATH, SIRL, LLMOPT; probably CALM/STORM"),
    DatasetSpec("optmath_bench", "sirl193", 193, "SIRL"),
    DatasetSpec("optmath_bench", "optimind", 128, "OptiMind"),
    DatasetSpec("nlp4lp", "llm4or_clean", 178, "StepORLM, LLM4OR"),
    DatasetSpec("nlp4lp", "llmopt", 242, "LLMOPT"),
    DatasetSpec("nlp4lp", "orthought", 264, "ORThought"),
    DatasetSpec("complexor", "llm4or_clean", 18, "StepORLM, LLM4OR"),
    DatasetSpec("complexor", "llmopt", 18, "LLMOPT"),
    DatasetSpec("complexor", "orthought", 18, "ORThought"),
    DatasetSpec("resocratic", "llm4or_clean", 403, "StepORLM, LLM4OR"),
    DatasetSpec("optibench", "resocratic", 605, "ReSocratic; SIRL/OptMATH/LLMOPT (rounded copy)"),
    DatasetSpec("logior", "orthought", 92, "ORThought"),
    DatasetSpec("icml2024_task3", "llmopt", 410, "LLMOPT"),
]

#: dataset name -> spec
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
#: the 11 benchmarks, in registry order
BENCHMARK_NAMES: tuple[str, ...] = tuple(dict.fromkeys(s.benchmark for s in _SPECS))

SUITES: dict[str, tuple[str, ...]] = {
    "steporlm": (
        "nl4opt.llm4or_clean",
        "mamo_easylp.llm4or_clean",
        "mamo_complexlp.llm4or_clean",
        "nlp4lp.llm4or_clean",
        "complexor.llm4or_clean",
        "industryor.llm4or_clean",
        "resocratic.llm4or_clean",
    ),
    "storm": (
        "nl4opt.optmath",
        "mamo_easylp.orig",
        "mamo_complexlp.orig",
        "industryor.orlm",
        "optmath_bench.orig",
    ),
    "storm_fixed": (
        "nl4opt.sirl",
        "mamo_easylp.sirl_fixed",
        "mamo_complexlp.sirl_fixed",
        "industryor.sirl_fixedv2",
        "optmath_bench.orig",
    ),
    "all": tuple(DATASETS),
}


def resolve(names: str) -> list[str]:
    """Dataset names for a suite, a dataset, or a comma-separated mix of them (order kept, no repeats)."""
    out: list[str] = []
    for raw in names.split(","):
        name = raw.strip()
        if not name:
            continue
        if name in SUITES:
            out.extend(SUITES[name])
        elif name in DATASETS:
            out.append(name)
        elif name in BENCHMARK_NAMES:
            variants = [d for d, s in DATASETS.items() if s.benchmark == name]
            raise ValueError(f"benchmark {name!r} has several variants; name one of: {', '.join(variants)}")
        else:
            raise ValueError(
                f"unknown benchmark or suite {name!r}; suites: {', '.join(SUITES)}; datasets: {', '.join(DATASETS)}"
            )
    if not out:
        raise ValueError("no benchmark named")
    return list(dict.fromkeys(out))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark directory: `data_dir`, else $STORM_DATA_DIR; a clear error if unset or missing."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR)
        if not data_dir:
            raise FileNotFoundError(
                f"no benchmark directory: pass --data-dir (or data_dir=) or set {ENV_VAR} to the folder holding "
                "the <benchmark>.<variant>.jsonl files"
            )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark directory {str(path)!r} does not exist or is not a directory")
    return path


def _row_error(where: str, msg: str) -> ValueError:
    return ValueError(f"{where}: {msg}")


def parse_row(obj: Any, where: str) -> BenchmarkRow:
    """Validate one decoded JSON row; errors name `where` (file:line)."""
    if not isinstance(obj, dict):
        raise _row_error(where, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "benchmark", "variant", "question"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise _row_error(where, f"key {key!r} must be a non-empty string")
    if "answer" not in obj:
        raise _row_error(where, "missing key 'answer'")
    answer, status = obj["answer"], obj.get("answer_status")
    if answer is None:
        if status not in ANSWER_STATUSES:
            raise _row_error(
                where, f"null 'answer' needs 'answer_status' in {ANSWER_STATUSES}, got {status!r}"
            )
    else:
        if isinstance(answer, bool) or not isinstance(answer, int | float) or not math.isfinite(answer):
            raise _row_error(where, f"'answer' must be a finite number or null, got {answer!r}")
        if status is not None:
            raise _row_error(where, f"'answer_status' {status!r} given with a numeric answer")
        answer = float(answer)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise _row_error(where, "'meta' must be an object")
    return BenchmarkRow(
        id=obj["id"],
        benchmark=obj["benchmark"],
        variant=obj["variant"],
        question=obj["question"],
        answer=answer,
        answer_status=status,
        meta=meta,
        source=str(obj.get("source", "")),
    )


def read_rows(path: str | os.PathLike) -> list[BenchmarkRow]:
    """All rows of one benchmark JSONL file (blank lines skipped; a malformed line errors with file:line)."""
    path = Path(path)
    rows: list[BenchmarkRow] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _row_error(where, f"invalid JSON ({e.msg} at column {e.colno})") from None
            row = parse_row(obj, where)
            if row.id in seen:
                raise _row_error(where, f"duplicate id {row.id!r} (first at line {seen[row.id]})")
            seen[row.id] = lineno
            rows.append(row)
    return rows


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[BenchmarkRow]:
    """Rows of one dataset (``<benchmark>.<variant>``), checked against its file name."""
    if name not in DATASETS:
        resolve(name)  # raises the helpful error for suites/benchmarks/unknown names
        raise ValueError(f"{name!r} is a suite, not a single dataset; use load()")
    spec = DATASETS[name]
    path = resolve_data_dir(data_dir) / spec.filename
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} for dataset {name!r} is missing")
    rows = read_rows(path)
    for i, r in enumerate(rows):
        if (r.benchmark, r.variant) != (spec.benchmark, spec.variant):
            raise ValueError(f"{path}: row {i + 1} ({r.id}) is {r.dataset!r}, expected {name!r}")
    return rows


def load(names: str, data_dir: str | os.PathLike | None = None) -> dict[str, list[BenchmarkRow]]:
    """Rows of every dataset a suite/dataset name (or comma list) resolves to, keyed by dataset name."""
    datasets = resolve(names)
    root = resolve_data_dir(data_dir)
    return {d: load_dataset(d, root) for d in datasets}
