r"""`storm-jax score`: score a completions JSONL on the OR benchmarks.

Input: one JSON object per line, ``{"id": <benchmark row id>, "completion": str, "sample_index": int?}``.
A missing ``sample_index`` is the row's rank among the rows with the same id, in file order.

Answers (``--answer-from``):
  ``boxed``      the final ``\boxed{}`` (see `storm_jax.execution.answers`); nothing is executed;
  ``execution``  the completion's ```python blocks are executed in the pool, last block first; the answer is
                 that of the last block that ran (status ok) and printed an objective; at most `max_blocks`
                 blocks are tried, from the end;
  ``auto``       the boxed answer when there is one, else execution.

Outputs in ``--out``: ``samples.jsonl`` (one result per sample, append-only, fsync'd per batch; a rerun
skips samples already there, dedupes on (id, sample_index) and drops a torn last line), ``summary.json``
(written atomically; contains no timings, so an interrupted-and-resumed run gives the same file as an
uninterrupted one), ``summary.md`` and ``run.json`` (the settings; a rerun with other settings is refused).

Metrics per dataset, over its rows that have at least one sample: pass@1 (mean fraction of correct
samples), pass@k (unbiased estimator 1 − C(n−c, k)/C(n, k), for k ≤ the smallest n), maj@n (majority vote
over parsed answers, answers equal when they agree to 6 significant digits, ties to the earliest sample),
execution-error and timeout rates of the final program (over samples that executed code) and a failure
breakdown: no_code, code_error, timeout, infeasible_answer, wrong_objective, parse_failure, unknown_truth.
Rows whose truth is "unknown" count as wrong (the published set sizes include them) and are reported.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from storm_jax.data import benchmarks as bm
from storm_jax.execution.answers import Answer, answer_from_text, python_blocks
from storm_jax.rewards import DEFAULT_CONFIG, PROTOCOLS, ScoringConfig, check_protocol, is_correct

ANSWER_MODES = ("boxed", "execution", "auto")
FAILURES = (
    "no_code",
    "code_error",
    "timeout",
    "infeasible_answer",
    "wrong_objective",
    "parse_failure",
    "unknown_truth",
)
_ERROR_STATUSES = ("error", "memory", "killed")

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"
RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class Completion:
    """One model sample for a benchmark row."""

    id: str
    completion: str
    sample_index: int


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """The scored outcome of one completion (one line of samples.jsonl)."""

    id: str
    sample_index: int
    dataset: str
    answer: float | str | None
    answer_source: str | None  # "boxed" | "execution" | None
    correct: bool
    failure: str | None
    exec_status: str | None  # status of the completion's last code block, if executed
    answer_block: int | None  # index of the code block whose output gave the answer
    n_code_blocks: int
    duration_s: float  # execution time spent on this sample (0 for boxed answers)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> SampleResult:
        return SampleResult(**{f.name: d[f.name] for f in dataclasses.fields(SampleResult)})


class _ExecResult(Protocol):
    status: str
    answer: Answer


class Executor(Protocol):
    """What the scorer needs from an execution pool."""

    def map(self, codes: Sequence[str]) -> list[_ExecResult]: ...


# ---------------------------------------------------------------------------------------------------------
# Reading completions
# ---------------------------------------------------------------------------------------------------------


def read_completions(path: str | os.PathLike) -> list[Completion]:
    """Completions from a JSONL file; a malformed line errors with file:line."""
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


# ---------------------------------------------------------------------------------------------------------
# Scoring samples (pure given an executor)
# ---------------------------------------------------------------------------------------------------------


def classify(
    answer: Answer,
    correct: bool,
    truth_status: str | None,
    n_code_blocks: int,
    exec_status: str | None,
    attempted_execution: bool,
) -> str | None:
    """The failure category of one sample (None when correct)."""
    if correct:
        return None
    if truth_status == "unknown":
        return "unknown_truth"
    if answer is None:
        if attempted_execution:
            if n_code_blocks == 0:
                return "no_code"
            if exec_status == "timeout":
                return "timeout"
            if exec_status in _ERROR_STATUSES:
                return "code_error"
        return "parse_failure"
    if isinstance(answer, str):
        return "infeasible_answer"
    return "wrong_objective"


def score_samples(
    items: Sequence[tuple[bm.BenchmarkRow, Completion]],
    protocol: str = "strict",
    answer_from: str = "auto",
    executor: Executor | None = None,
    config: ScoringConfig = DEFAULT_CONFIG,
    max_blocks: int = 3,
) -> list[SampleResult]:
    """Score (row, completion) pairs; code runs through `executor.map` (needed unless answer_from="boxed")."""
    check_protocol(protocol)
    if answer_from not in ANSWER_MODES:
        raise ValueError(f"unknown answer source {answer_from!r}; known: {', '.join(ANSWER_MODES)}")
    n = len(items)
    exec_seconds = [0.0] * n
    answers: list[Answer] = [None] * n
    sources: list[str | None] = [None] * n
    blocks = [python_blocks(c.completion) for _, c in items]
    exec_status: list[str | None] = [None] * n
    answer_block: list[int | None] = [None] * n
    attempted = [False] * n
    pending: list[int] = []
    for i, (_, c) in enumerate(items):
        if answer_from in ("boxed", "auto"):
            a = answer_from_text(c.completion)
            if a is not None:
                answers[i], sources[i] = a, "boxed"
                continue
        if answer_from in ("execution", "auto"):
            attempted[i] = True
            if blocks[i]:
                pending.append(i)
    # Round r runs block len-1-r of every sample still without an answer: all samples run in parallel.
    for r in range(max_blocks):
        jobs = [i for i in pending if len(blocks[i]) - 1 - r >= 0]
        if not jobs:
            break
        if executor is None:
            raise ValueError("code must be executed but no executor was given")
        results = executor.map([blocks[i][len(blocks[i]) - 1 - r] for i in jobs])
        still = []
        for i, res in zip(jobs, results):
            exec_seconds[i] += float(getattr(res, "duration_s", 0.0) or 0.0)
            if r == 0:
                exec_status[i] = res.status
            if res.status == "ok" and res.answer is not None:
                answers[i], sources[i] = res.answer, "execution"
                answer_block[i] = len(blocks[i]) - 1 - r
            else:
                still.append(i)
        pending = still
    out = []
    for i, (row, c) in enumerate(items):
        ok = is_correct(answers[i], row.answer, row.answer_status, protocol, config)
        failure = classify(answers[i], ok, row.answer_status, len(blocks[i]), exec_status[i], attempted[i])
        out.append(
            SampleResult(
                id=c.id,
                sample_index=c.sample_index,
                dataset=row.dataset,
                answer=answers[i],
                answer_source=sources[i],
                correct=ok,
                failure=failure,
                exec_status=exec_status[i],
                answer_block=answer_block[i],
                n_code_blocks=len(blocks[i]),
                duration_s=round(exec_seconds[i], 6),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct (Chen et al. 2021)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _vote_key(a: Answer) -> tuple:
    if isinstance(a, str):
        return ("status", a)
    return ("num", float(f"{a:.6g}"))


def majority_answer(results: Sequence[SampleResult]) -> SampleResult | None:
    """The sample holding the most common parsed answer (ties: the earliest sample_index), else None."""
    ordered = sorted((r for r in results if r.answer is not None), key=lambda r: r.sample_index)
    if not ordered:
        return None
    counts = collections.Counter(_vote_key(r.answer) for r in ordered)
    best = max(counts.values())
    return next(r for r in ordered if counts[_vote_key(r.answer)] == best)


def _ks(n_min: int) -> list[int]:
    ks, k = [], 1
    while k <= n_min:
        ks.append(k)
        k *= 2
    if n_min not in ks and n_min > 0:
        ks.append(n_min)
    return ks


def summarize(
    results: Iterable[SampleResult], rows_by_dataset: dict[str, list[bm.BenchmarkRow]], protocol: str
) -> dict[str, Any]:
    """Per-dataset metrics and a macro average (deterministic: no timings)."""
    by_problem: dict[str, dict[str, list[SampleResult]]] = {
        d: collections.defaultdict(list) for d in rows_by_dataset
    }
    for r in sorted(results, key=lambda r: (r.dataset, r.id, r.sample_index)):
        by_problem[r.dataset][r.id].append(r)
    datasets: dict[str, Any] = {}
    for d, rows in rows_by_dataset.items():
        probs = by_problem[d]
        samples = [s for ss in probs.values() for s in ss]
        n_per = [len(ss) for ss in probs.values()]
        entry: dict[str, Any] = {
            "n_problems": len(rows),
            "n_scored_problems": len(probs),
            "n_samples": len(samples),
            "n_unknown_truth": sum(1 for row in rows if row.id in probs and row.answer_status == "unknown"),
        }
        if probs:
            n_min = min(n_per)
            cs = {pid: sum(s.correct for s in ss) for pid, ss in probs.items()}
            entry["samples_per_problem"] = {"min": n_min, "max": max(n_per)}
            entry["pass@1"] = sum(cs[p] / len(ss) for p, ss in probs.items()) / len(probs)
            entry["pass@k"] = {
                str(k): sum(pass_at_k(len(ss), cs[p], k) for p, ss in probs.items()) / len(probs)
                for k in _ks(n_min)
            }
            maj = [majority_answer(ss) for ss in probs.values()]
            entry["maj_accuracy"] = sum(1 for m in maj if m is not None and m.correct) / len(probs)
            executed = [s for s in samples if s.exec_status is not None]
            entry["n_executed"] = len(executed)
            entry["exec_error_rate"] = (
                sum(s.exec_status in _ERROR_STATUSES for s in executed) / len(executed) if executed else 0.0
            )
            entry["timeout_rate"] = (
                sum(s.exec_status == "timeout" for s in executed) / len(executed) if executed else 0.0
            )
            fails = collections.Counter(s.failure for s in samples if s.failure is not None)
            entry["failures"] = {f: fails.get(f, 0) for f in FAILURES}
            entry["answer_sources"] = {
                src: sum(1 for s in samples if s.answer_source == src) for src in ("boxed", "execution")
            }
        datasets[d] = entry
    scored = [e for e in datasets.values() if e["n_scored_problems"]]
    macro = {
        "pass@1": sum(e["pass@1"] for e in scored) / len(scored) if scored else None,
        "maj_accuracy": sum(e["maj_accuracy"] for e in scored) / len(scored) if scored else None,
    }
    return {"protocol": protocol, "datasets": datasets, "macro": macro}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """A Markdown report of a summary."""
    hdr = (
        "| dataset | problems | samples/problem | pass@1 | pass@k | maj | exec err | timeout | "
        + " | ".join(FAILURES)
        + " |"
    )
    lines = [f"Scoring protocol: `{summary['protocol']}`", "", hdr, "|" + "---|" * (8 + len(FAILURES))]
    for d, e in summary["datasets"].items():
        if not e["n_scored_problems"]:
            lines.append(f"| {d} | 0/{e['n_problems']} | – | – | – | – | – | – |" + " – |" * len(FAILURES))
            continue
        k_last = list(e["pass@k"])[-1]
        spp = e["samples_per_problem"]
        spp_s = str(spp["min"]) if spp["min"] == spp["max"] else f"{spp['min']}–{spp['max']}"
        lines.append(
            f"| {d} | {e['n_scored_problems']}/{e['n_problems']} | {spp_s} | {_pct(e['pass@1'])} | "
            f"{_pct(e['pass@k'][k_last])} (k={k_last}) | {_pct(e['maj_accuracy'])} | {_pct(e['exec_error_rate'])} | "
            f"{_pct(e['timeout_rate'])} | " + " | ".join(str(e["failures"][f]) for f in FAILURES) + " |"
        )
    m = summary["macro"]
    lines += [
        "",
        f"Macro average over scored datasets: pass@1 {_pct(m['pass@1'])}, maj {_pct(m['maj_accuracy'])}.",
    ]
    partial = [d for d, e in summary["datasets"].items() if 0 < e["n_scored_problems"] < e["n_problems"]]
    if partial:
        lines.append(f"Partial coverage (metrics over scored problems only): {', '.join(partial)}.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Resumable results file
# ---------------------------------------------------------------------------------------------------------


def load_results(path: Path) -> list[SampleResult]:
    """Results already written, deduped on (id, sample_index); a torn last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    out: dict[tuple[str, int], SampleResult] = {}
    for lineno, line in enumerate(data[:good_end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = SampleResult.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: not a sample result ({e})") from None
        out.setdefault((r.id, r.sample_index), r)
    return list(out.values())


def _append(path: Path, results: Sequence[SampleResult]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in results))
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_run_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / RUN_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            diff = {
                k: (old.get(k), settings.get(k))
                for k in set(old) | set(settings)
                if old.get(k) != settings.get(k)
            }
            raise ValueError(
                f"{path}: output directory holds a run with other settings {diff}; use another --out"
            )
    else:
        _write_atomic(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Library entry point
# ---------------------------------------------------------------------------------------------------------


def _default_executor_factory(workers: int) -> Any:
    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool

    return ExecutionPool(num_workers=workers, config=ExecutionConfig())


def score_completions(
    completions: Sequence[Completion] | str | os.PathLike,
    benchmark: str,
    protocol: str = "strict",
    answer_from: str = "auto",
    out_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    workers: int = 2,
    executor: Executor | None = None,
    config: ScoringConfig = DEFAULT_CONFIG,
    batch_size: int = 64,
    max_blocks: int = 3,
    progress: bool = True,
    executor_factory: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Score completions on a benchmark/suite; returns the summary dict (also written to `out_dir` if given).

    With `out_dir`, finished samples are appended to samples.jsonl and a rerun resumes. Completions whose
    id is not in the selected datasets are ignored (counted in the summary as `n_ignored_completions`).
    `executor` (an object with ``map(codes)``) is used as is; otherwise an ExecutionPool of `workers`
    processes is started on first need and closed at the end.
    """
    check_protocol(protocol)
    if answer_from not in ANSWER_MODES:
        raise ValueError(f"unknown answer source {answer_from!r}; known: {', '.join(ANSWER_MODES)}")
    rows_by_dataset = bm.load(benchmark, data_dir)
    index = {row.id: row for rows in rows_by_dataset.values() for row in rows}
    comps = read_completions(completions) if isinstance(completions, str | os.PathLike) else list(completions)
    selected = [c for c in comps if c.id in index]
    n_ignored = len(comps) - len(selected)
    if not selected:
        raise ValueError(f"none of the {len(comps)} completions has an id in {benchmark!r}")

    results: list[SampleResult] = []
    results_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        settings = {
            "benchmark": benchmark,
            "protocol": protocol,
            "answer_from": answer_from,
            "max_blocks": max_blocks,
            "scoring_config": dataclasses.asdict(config),
        }
        _check_run_settings(out, settings)
        results_path = out / SAMPLES_FILE
        results = load_results(results_path)
    done = {(r.id, r.sample_index) for r in results}
    todo = [c for c in selected if (c.id, c.sample_index) not in done]

    owned = None
    try:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(selected), initial=len(selected) - len(todo), desc="score", unit="sample")
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            needs_exec = answer_from != "boxed"
            if needs_exec and executor is None and owned is None:
                owned = (executor_factory or _default_executor_factory)(workers)
            new = score_samples(
                [(index[c.id], c) for c in batch],
                protocol,
                answer_from,
                executor or owned,
                config,
                max_blocks,
            )
            if results_path is not None:
                _append(results_path, new)
            results.extend(new)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
    finally:
        if owned is not None:
            owned.close()

    wanted = {(c.id, c.sample_index) for c in selected}
    summary = summarize([r for r in results if (r.id, r.sample_index) in wanted], rows_by_dataset, protocol)
    summary.update(benchmark=benchmark, answer_from=answer_from, n_ignored_completions=n_ignored)
    if out_dir is not None:
        out = Path(out_dir)
        _write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _write_atomic(out / TABLE_FILE, markdown_table(summary))
    return summary


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storm-jax score", description=__doc__.split("\n\n")[0])
    p.add_argument("--completions", required=True, help="JSONL: id, completion, optional sample_index")
    p.add_argument(
        "--benchmark", required=True, help="dataset (nl4opt.sirl), suite (storm, storm_fixed, steporlm, all)"
    )
    p.add_argument("--protocol", default="strict", choices=PROTOCOLS)
    p.add_argument("--answer-from", default="auto", choices=ANSWER_MODES)
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--data-dir", default=None, help=f"benchmark directory (default ${bm.ENV_VAR})")
    p.add_argument("--workers", type=int, default=2, help="execution pool processes")
    p.add_argument("--batch-size", type=int, default=64, help="samples per fsync'd batch")
    p.add_argument(
        "--max-blocks", type=int, default=3, help="code blocks tried per completion, from the last"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = score_completions(
            args.completions,
            args.benchmark,
            protocol=args.protocol,
            answer_from=args.answer_from,
            out_dir=args.out,
            data_dir=args.data_dir,
            workers=args.workers,
            batch_size=args.batch_size,
            max_blocks=args.max_blocks,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"storm-jax score: {e}", file=sys.stderr)
        return 2
    print(markdown_table(summary), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
