"""Best-of-N selection over scored samples: `storm-jax score ... --select first|majority|solver|genprm|critic`.

Per problem, one of its N samples is picked and judged:
  first     the lowest sample_index (what pass@1 estimates)
  majority  the sample holding the most common answer (maj@N; storm_jax.eval.metrics.majority_answer)
  solver    solver filter: the first sample whose final program ran and printed an objective, else the first
  genprm    the sample with the highest GenPRM process score (correct steps / steps); a critique that fails
            to parse ranks below every parsed one; ties go to the earliest sample. Needs --genprm DIR (an HF
            checkpoint directory of the GenPRM), whose critiques are generated with the shared sampler.
  critic    as genprm, with the programmatic critic (synthetic problems with a gold program in meta) standing
            in for the GenPRM.
The report puts best-of-N beside pass@1, maj@N and the solver filter; it goes to <out>/select.json and
<out>/select.md. Usable with only a completions file and a GenPRM checkpoint.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storm_jax.data import benchmarks as bm
from storm_jax.eval.completions import Completion
from storm_jax.eval.metrics import majority_answer
from storm_jax.eval.scoring import SampleResult

SELECTORS = ("first", "majority", "solver", "genprm", "critic")


def load_problems(
    benchmark: str, data_dir: str | os.PathLike | None = None
) -> dict[str, list[bm.BenchmarkRow]]:
    """Rows by dataset of a benchmark/suite name, or of a benchmark-schema JSONL file given by path."""
    if benchmark.endswith(".jsonl") and os.path.isfile(benchmark):
        by: dict[str, list[bm.BenchmarkRow]] = collections.defaultdict(list)
        for r in bm.read_rows(benchmark):
            by[r.dataset].append(r)
        return dict(by)
    return bm.load(benchmark, data_dir)


def pick(
    method: str, results: Sequence[SampleResult], scores: dict[int, float | None] | None = None
) -> SampleResult:
    """The sample `method` selects among one problem's results (see the module docstring)."""
    ordered = sorted(results, key=lambda r: r.sample_index)
    if method == "first":
        return ordered[0]
    if method == "majority":
        return majority_answer(ordered) or ordered[0]
    if method == "solver":
        return next(
            (r for r in ordered if r.exec_status == "ok" and r.answer_source == "execution"), ordered[0]
        )
    if method in ("genprm", "critic"):
        if scores is None:
            raise ValueError(f"select {method}: no process scores given")
        return max(ordered, key=lambda r: (scores.get(r.sample_index) is not None, scores.get(r.sample_index) or 0.0,
                                           -r.sample_index))  # fmt: skip
    raise ValueError(f"unknown selector {method!r} (known: {', '.join(SELECTORS)})")


def process_scores(
    method: str,
    rows: dict[str, bm.BenchmarkRow],
    completions: Sequence[Completion],
    results: dict[tuple[str, int], SampleResult],
    *,
    genprm: str | None = None,
    num_slots: int = 8,
    max_len: int = 4096,
    max_new_tokens: int = 1024,
) -> tuple[dict[tuple[str, int], float | None], dict[str, Any]]:
    """(process score per (id, sample_index) or None when the critique failed, critique statistics)."""
    from storm_jax.steporlm.genprm import process_score
    from storm_jax.steporlm.policy_format import segment_steps

    keyed = [c for c in completions if (c.id, c.sample_index) in results]
    steps = [segment_steps(c.completion) for c in keyed]
    crits = []
    if method == "critic":
        from storm_jax.steporlm.critic import critique

        for c in keyed:
            r, program = results[(c.id, c.sample_index)], rows[c.id].meta.get("program")
            if not program:
                raise ValueError(f"select critic: problem {c.id} has no gold program (meta.program)")
            ex = {"status": r.exec_status, "answer": r.answer if r.answer_source == "execution" else None}
            crits.append(critique(rows[c.id].question, program, c.completion, execution=ex)[1])
        tokens = 0
    else:
        if not genprm:
            raise ValueError("--select genprm needs --genprm DIR (the GenPRM's HF checkpoint directory)")
        from storm_jax.steporlm.generation import CritiqueGenerator, load_model
        from storm_jax.tokenizer import load_tokenizer

        cfg, params = load_model(genprm)
        gen = CritiqueGenerator(cfg, params, load_tokenizer(genprm), num_slots=num_slots, max_len=max_len,
                                max_new_tokens=max_new_tokens)  # fmt: skip
        out = gen.generate([(rows[c.id].question, s) for c, s in zip(keyed, steps)])
        crits = [g.critique for g in out]
        tokens = sum(g.new_tokens for g in out)
    scores = {(c.id, c.sample_index): (process_score(k) if k.ok else None) for c, k in zip(keyed, crits)}
    fails = collections.Counter(k.failure.split(": ", 1)[-1].split(" (")[0] for k in crits if not k.ok)
    stats = {"critiques": len(crits), "parse_failures": sum(fails.values()), "failure_kinds": dict(fails),
             "critique_tokens": tokens}  # fmt: skip
    return scores, stats


def best_of_n(
    results: Sequence[SampleResult],
    scores: dict[tuple[str, int], float | None] | None,
    methods: Sequence[str],
) -> dict[str, Any]:
    """Accuracy of each selector per dataset (and pass@1 = mean sample accuracy), over problems with samples."""
    by: dict[str, dict[str, list[SampleResult]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for r in results:
        by[r.dataset][r.id].append(r)
    out: dict[str, Any] = {}
    for d, probs in sorted(by.items()):
        n = [len(v) for v in probs.values()]
        entry: dict[str, Any] = {"problems": len(probs), "samples_per_problem": {"min": min(n), "max": max(n)},
                                 "pass@1": sum(sum(r.correct for r in v) / len(v) for v in probs.values()) / len(probs)}  # fmt: skip
        for m in methods:
            picked = []
            for pid, v in probs.items():
                s = None if scores is None else {r.sample_index: scores.get((pid, r.sample_index)) for r in v}
                picked.append(pick(m, v, s if m in ("genprm", "critic") else None).correct)
            entry[m] = sum(picked) / len(picked)
        out[d] = entry
    return out


def markdown(report: dict[str, Any]) -> str:
    """The best-of-N table."""
    methods = report["methods"]
    names = {"first": "first", "majority": "maj@N", "solver": "solver-filter", "genprm": "best-of-N (GenPRM)",
             "critic": "best-of-N (critic)"}  # fmt: skip
    lines = ["| dataset | problems | N | pass@1 | " + " | ".join(names[m] for m in methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]  # fmt: skip
    for d, e in report["datasets"].items():
        spp = e["samples_per_problem"]
        n = str(spp["min"]) if spp["min"] == spp["max"] else f"{spp['min']}-{spp['max']}"
        lines.append(f"| {d} | {e['problems']} | {n} | {100 * e['pass@1']:.1f} | "
                     + " | ".join(f"{100 * e[m]:.1f}" for m in methods) + " |")  # fmt: skip
    st = report.get("critique_stats")
    if st:
        lines.append(
            f"\nCritiques: {st['critiques']}, parse failures {st['parse_failures']} {st['failure_kinds']}."
        )
    return "\n".join(lines) + "\n"


def run_select(
    method: str,
    completions: Sequence[Completion],
    results: Sequence[SampleResult],
    rows_by_dataset: dict[str, list[bm.BenchmarkRow]],
    out_dir: str | os.PathLike,
    *,
    genprm: str | None = None,
    max_len: int = 4096,
    max_new_tokens: int = 1024,
) -> dict[str, Any]:
    """Best-of-N report for `method` (plus first, majority and solver); written to out_dir/select.{json,md}."""
    if method not in SELECTORS:
        raise ValueError(f"--select {method!r}: known selectors are {', '.join(SELECTORS)}")
    rows = {r.id: r for rs in rows_by_dataset.values() for r in rs}
    wanted = {(c.id, c.sample_index) for c in completions}  # the stored results of these completions only
    by_key = {(r.id, r.sample_index): r for r in results if (r.id, r.sample_index) in wanted}
    methods = ["first", "majority", "solver"] + ([method] if method in ("genprm", "critic") else [])
    scores, stats = None, None
    if method in ("genprm", "critic"):
        scores, stats = process_scores(method, rows, completions, by_key, genprm=genprm, max_len=max_len,
                                       max_new_tokens=max_new_tokens)  # fmt: skip
    report = {"select": method, "methods": methods, "datasets": best_of_n(list(by_key.values()), scores, methods),
              "critique_stats": stats}  # fmt: skip
    out = Path(out_dir)
    (out / "select.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out / "select.md").write_text(markdown(report))
    return report
