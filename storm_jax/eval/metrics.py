"""Metrics over scored samples: pass@1, unbiased pass@k, majority vote, execution rates, failure counts.

Per dataset, over its rows that have at least one sample: pass@1 (mean fraction of correct samples),
pass@k (unbiased estimator 1 − C(n−c, k)/C(n, k), for k ≤ the smallest n), maj@n (majority vote over
parsed answers, answers equal when they agree to 6 significant digits, ties to the earliest sample),
execution-error and timeout rates of the final program (over samples that executed code) and the failure
breakdown of `storm_jax.eval.scoring.FAILURES`. Rows whose truth is "unknown" count as wrong (the published
set sizes include them) and are reported.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from storm_jax.data import benchmarks as bm
from storm_jax.eval.scoring import ERROR_STATUSES, FAILURES, SampleResult
from storm_jax.execution.answers import Answer


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
                sum(s.exec_status in ERROR_STATUSES for s in executed) / len(executed) if executed else 0.0
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
