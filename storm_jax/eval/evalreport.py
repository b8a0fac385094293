"""Scoring and merging an eval run: every shard through the shared scorer, one summary, table and plots.

Each shard's completions are scored by `storm_jax.eval.score.score_completions` into the shard's own
resumable store (a rerun rescores nothing it already scored), under the run's protocol, answers from the
final \\boxed{} or else from executing the completion's code (`auto`). The merge then needs every
(problem, sample) of the run: a missing one names its shard and the command that completes it.

summary.json (deterministic: no timings or paths, so a killed-and-resumed run gives the same file as an
uninterrupted one): the scorer's per-dataset metrics (pass@1, pass@k, majority vote, failure breakdown)
plus, per dataset, model-written and response tokens per sample, tool calls per sample and stop reasons;
and the run's settings under "eval".
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from storm_jax.data import benchmarks as bm
from storm_jax.eval.completions import Completion
from storm_jax.eval.harness import (
    COMPLETIONS_FILE,
    CompletionLog,
    load_settings,
    select_problems,
    shard_dir,
    shard_of,
)
from storm_jax.eval.metrics import summarize
from storm_jax.eval.scoring import FAILURES, input_hash
from storm_jax.eval.store import SAMPLES_FILE, load_results, result_key, write_atomic

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def score_shard(
    run: Path, index: int, count: int, settings: dict, data_dir=None, executor=None, workers: int = 2
):
    """Score one shard's completions into its store (resumable); returns the shard's completion rows."""
    from storm_jax.eval.score import score_completions

    d = shard_dir(run, index, count)
    rows = CompletionLog(d / COMPLETIONS_FILE).load()
    if rows:
        score_completions(
            d / COMPLETIONS_FILE,
            ",".join(settings["datasets"]),
            protocol=settings["protocol"],
            answer_from="auto",
            out_dir=d / "score",
            data_dir=data_dir,
            workers=workers,
            executor=executor,
            progress=False,
        )
    return rows


def merge(run: str | Path, data_dir=None, executor=None, workers: int = 2) -> dict[str, Any]:
    """Score every shard, check the run is complete, write summary.json, summary.md and plots/."""
    run = Path(run)
    settings = load_settings(run)
    count, n = settings["process_count"], settings["n"]
    problems = select_problems(settings["datasets"], settings["limit"], data_dir)
    rows_by_dataset: dict[str, list[bm.BenchmarkRow]] = {d: [] for d in settings["datasets"]}
    for p in problems:
        rows_by_dataset[p.dataset].append(p)
    results, samples = [], []
    for i in range(count):
        want = shard_of(problems, i, count)
        rows = score_shard(run, i, count, settings, data_dir, executor, workers)
        missing = [(p.id, j) for p in want for j in range(n) if (p.id, j) not in rows]
        if missing:
            raise ValueError(
                f"shard {i}-of-{count} is incomplete: {len(missing)} of {len(want) * n} samples missing "
                f"(first {missing[0]}); run `storm-jax eval` again with --process-index {i} --process-count {count}"
            )
        stored = {result_key(r): r for r in load_results(shard_dir(run, i, count) / "score" / SAMPLES_FILE)}
        for p in want:
            for j in range(n):
                row = rows[(p.id, j)]
                key = (p.id, j, input_hash(p, Completion(p.id, row["completion"], j)))
                results.append(stored[key])
                samples.append(row)
    summary = summarize(results, rows_by_dataset, settings["protocol"])
    by_dataset = collections.defaultdict(list)
    for s in samples:
        by_dataset[s["dataset"]].append(s)
    for d, entry in summary["datasets"].items():
        ss = by_dataset.get(d, [])
        k = len(ss) or 1
        entry["model_tokens_per_sample"] = sum(s["model_tokens"] for s in ss) / k
        entry["response_tokens_per_sample"] = sum(s["response_tokens"] for s in ss) / k
        entry["tool_calls_per_sample"] = sum(s["tool_calls"] for s in ss) / k
        entry["stop_reasons"] = dict(sorted(collections.Counter(s["stop_reason"] for s in ss).items()))
    summary["eval"] = {k: settings[k] for k in ("model", "suite", "preset", "decoding", "n", "limit", "seed")}
    summary["eval"]["protocol_source"] = settings.get("protocol_source")
    write_atomic(run / SUMMARY_JSON, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_atomic(run / SUMMARY_MD, table(summary))
    from storm_jax.eval.plots import write_plots

    write_plots(summary, run / "plots")
    return summary


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def pass_k(entry: dict) -> tuple[str, float | None]:
    """(k, pass@k) at the largest k the samples allow."""
    if not entry.get("pass@k"):
        return "–", None
    k = list(entry["pass@k"])[-1]
    return k, entry["pass@k"][k]


def table(summary: dict[str, Any]) -> str:
    """The per-benchmark Markdown table of an eval summary."""
    ev = summary["eval"]
    dec = ev["decoding"]
    lines = [
        f"Model `{ev['model']}`, preset `{ev['preset']}` (T {dec['temperature']}, top-p {dec['top_p']}, "
        f"top-k {dec['top_k']}, max {dec['max_new_tokens']} tokens), n = {ev['n']}, "
        f"protocol `{summary['protocol']}` ({ev.get('protocol_source') or 'as given'})",
        "",
        "| dataset | problems | pass@1 | pass@k | maj@n | failures | tokens/sample | tool calls/sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, e in summary["datasets"].items():
        if not e["n_scored_problems"]:
            lines.append(f"| {d} | 0 | – | – | – | – | – | – |")
            continue
        k, pk = pass_k(e)
        fails = ", ".join(f"{f} {e['failures'][f]}" for f in FAILURES if e["failures"].get(f)) or "none"
        lines.append(
            f"| {d} | {e['n_scored_problems']} | {_pct(e['pass@1'])} | {_pct(pk)} (k={k}) | "
            f"{_pct(e['maj_accuracy'])} | {fails} | {e['model_tokens_per_sample']:.1f} | "
            f"{e['tool_calls_per_sample']:.2f} |"
        )
    m = summary["macro"]
    lines += ["", f"Macro average: pass@1 {_pct(m['pass@1'])}, maj@n {_pct(m['maj_accuracy'])}."]
    return "\n".join(lines) + "\n"


__all__ = ["SUMMARY_JSON", "SUMMARY_MD", "merge", "pass_k", "score_shard", "table"]
