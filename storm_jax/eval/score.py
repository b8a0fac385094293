r"""`storm-jax score`: score a completions JSONL on the OR benchmarks.

Input: one JSON object per line, ``{"id": <benchmark row id>, "completion": str, "sample_index": int?}``
(`storm_jax.eval.completions`). Answers come from the final ``\boxed{}``, from executing the completion's
code, or both (``--answer-from``, `storm_jax.eval.scoring`); each is judged under ``--protocol``
(`storm_jax.rewards`). Metrics: `storm_jax.eval.metrics`; report: `storm_jax.eval.report`.

The output directory (``--out``, `storm_jax.eval.store`) is resumable: a rerun reuses the stored result of
every completion whose content and truth are unchanged and rescores exactly the others, so a rerun after
editing the completions file gives the summary a fresh run would. Settings that change what is scored are
recorded in run.json as they took effect (``--max-blocks 0`` executes nothing: ``auto`` is recorded as
``boxed``); a rerun with other settings is refused.

The module keeps the names it held before it was split, so ``from storm_jax.eval.score import ...`` works.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from storm_jax.data import benchmarks as bm
from storm_jax.eval.completions import Completion, read_completions
from storm_jax.eval.metrics import majority_answer, pass_at_k, summarize
from storm_jax.eval.report import markdown_table
from storm_jax.eval.scoring import (
    ANSWER_MODES,
    ERROR_STATUSES,
    FAILURES,
    SCORER_REVISION,
    Executor,
    SampleResult,
    classify,
    effective_options,
    input_hash,
    score_samples,
)
from storm_jax.eval.store import (
    RUN_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    append_results,
    check_run_settings,
    load_results,
    result_key,
    write_atomic,
    write_run_record,
)
from storm_jax.rewards import DEFAULT_CONFIG, PROTOCOLS, ScoringConfig, check_protocol

_ERROR_STATUSES = ERROR_STATUSES  # the name before the split

__all__ = [
    "ANSWER_MODES",
    "ERROR_STATUSES",
    "FAILURES",
    "RUN_FILE",
    "SAMPLES_FILE",
    "SCORER_REVISION",
    "SUMMARY_FILE",
    "TABLE_FILE",
    "Completion",
    "Executor",
    "SampleResult",
    "build_parser",
    "classify",
    "effective_options",
    "input_hash",
    "load_results",
    "main",
    "majority_answer",
    "markdown_table",
    "pass_at_k",
    "read_completions",
    "score_completions",
    "score_samples",
    "summarize",
]


def _default_executor_factory(workers: int) -> Any:
    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool

    return ExecutionPool(num_workers=workers, config=ExecutionConfig())


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

    With `out_dir`, scored samples are appended to samples.jsonl and a rerun reuses those whose input
    hash (completion, truth, scorer revision) is unchanged, rescoring the rest. Completions whose id is
    not in the selected datasets are ignored (counted in the summary as `n_ignored_completions`).
    `executor` (an object with ``map(codes)``) is used as is; otherwise an ExecutionPool of `workers`
    processes is started on first need and closed at the end.
    """
    check_protocol(protocol)
    eff_answer_from, eff_max_blocks = effective_options(answer_from, max_blocks)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    from storm_jax.eval.select import load_problems  # a benchmark name, or a problems JSONL path

    rows_by_dataset = load_problems(benchmark, data_dir)
    index = {row.id: row for rows in rows_by_dataset.values() for row in rows}
    if isinstance(completions, str | os.PathLike):
        comp_path = Path(completions)
        comps = read_completions(comp_path)
        comp_record: dict[str, Any] = {"path": str(comp_path.resolve()), "sha256": _file_sha256(comp_path)}
    else:
        comps = list(completions)
        comp_record = {"path": None, "sha256": None}
    selected = [c for c in comps if c.id in index]
    n_ignored = len(comps) - len(selected)
    if not selected:
        raise ValueError(f"none of the {len(comps)} completions has an id in {benchmark!r}")
    keys = [(c.id, c.sample_index, input_hash(index[c.id], c)) for c in selected]

    stored: dict[tuple[str, int, str | None], SampleResult] = {}
    results_path = None
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        settings = {
            "benchmark": benchmark,
            "protocol": protocol,
            "answer_from": eff_answer_from,
            "max_blocks": eff_max_blocks,
            "scoring_config": dataclasses.asdict(config),
        }
        check_run_settings(out, settings)
        results_path = out / SAMPLES_FILE
        stored = {result_key(r): r for r in load_results(results_path)}
    todo = [c for c, k in zip(selected, keys) if k not in stored]
    if out is not None:
        record = {
            "requested": {"answer_from": answer_from, "max_blocks": max_blocks},
            "completions": {**comp_record, "n_rows": len(comps), "n_selected": len(selected)},
            "last_run": {"reused": len(selected) - len(todo), "scored": len(todo)},
        }
        write_run_record(out, settings, record)

    owned = None
    try:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(selected), initial=len(selected) - len(todo), desc="score", unit="sample")
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            if eff_answer_from != "boxed" and executor is None and owned is None:
                owned = (executor_factory or _default_executor_factory)(workers)
            new = score_samples(
                [(index[c.id], c) for c in batch],
                protocol,
                eff_answer_from,
                executor or owned,
                config,
                eff_max_blocks or 0,
            )
            if results_path is not None:
                append_results(results_path, new)
            for r in new:
                stored[result_key(r)] = r
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
    finally:
        if owned is not None:
            owned.close()

    summary = summarize([stored[k] for k in keys], rows_by_dataset, protocol)
    summary.update(benchmark=benchmark, answer_from=eff_answer_from, n_ignored_completions=n_ignored)
    if out is not None:
        write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        write_atomic(out / TABLE_FILE, markdown_table(summary))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `storm-jax score`."""
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
        "--max-blocks",
        type=int,
        default=3,
        help="code blocks tried per completion, from the last (0: execute nothing, answers from boxes only)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--select",
        default=None,
        choices=("first", "majority", "solver", "genprm", "critic"),
        help="best-of-N selection report beside pass@1 (storm_jax.eval.select)",
    )
    p.add_argument("--genprm", default=None, help="GenPRM HF checkpoint directory (for --select genprm)")
    p.add_argument(
        "--critique-tokens", type=int, default=1024, help="GenPRM critique budget (--select genprm)"
    )
    p.add_argument("--critique-max-len", type=int, default=4096, help="GenPRM context (--select genprm)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `storm-jax score`; exit status 2 on a usage or input error (one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        eff_answer_from, _ = effective_options(args.answer_from, args.max_blocks)
        if eff_answer_from != args.answer_from:
            print(
                f"storm-jax score: note: --max-blocks {args.max_blocks} executes no code, so answers come "
                f"from \\boxed{{}} only (run.json records answer_from={eff_answer_from})",
                file=sys.stderr,
            )
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
    last = json.loads((Path(args.out) / RUN_FILE).read_text(encoding="utf-8"))["last_run"]
    if last["reused"]:  # say so: a rerun that reused stored verdicts must not look like a fresh run
        print(
            f"storm-jax score: {last['reused']} unchanged samples reused from {Path(args.out) / SAMPLES_FILE}, "
            f"{last['scored']} scored",
            file=sys.stderr,
        )
    print(markdown_table(summary), end="")
    if args.select:
        from storm_jax.cli_util import UsageError
        from storm_jax.eval import select

        try:
            results = load_results(Path(args.out) / SAMPLES_FILE)
            rows = select.load_problems(args.benchmark, args.data_dir)
            report = select.run_select(args.select, read_completions(args.completions), results, rows, args.out,
                                       genprm=args.genprm, max_len=args.critique_max_len,
                                       max_new_tokens=args.critique_tokens)  # fmt: skip
        except (ValueError, FileNotFoundError, UsageError) as e:
            print(f"storm-jax score: {e}", file=sys.stderr)
            return 2
        print("\n" + select.markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
