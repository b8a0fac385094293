"""The resumable CALM job: a problem set -> golden SFT rows + per-problem results + statistics.

Output directory:
  golden.jsonl   token-level SFT rows of the golden trajectories (storm_jax.data.sft reads them as is);
  results.jsonl  one record per finished problem (the done-set: a rerun skips these problems);
  stats.json     hint token share, interventions per trajectory, flaw distribution, accuracy per round,
                 golden yield - recomputed from results.jsonl, so a killed-and-resumed run writes the same;
  last_run.json  the intervener client's usage in the last invocation (requests, cache hits, tokens, cost).
Rows are appended one at a time with fsync (storm_jax.jobs.JsonlLog): a kill loses at most the problem
being written, and its golden row is never written twice (a row whose result line was lost is kept and
not re-appended on the rerun).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from storm_jax.calm.loop import CalmLoop, ProblemResult
from storm_jax.calm.verdict import FLAW_NAMES, FLAW_TYPES
from storm_jax.eval.store import write_atomic
from storm_jax.jobs import JsonlLog

GOLDEN_FILE, RESULTS_FILE, STATS_FILE = "golden.jsonl", "results.jsonl", "stats.json"


def calm_stats(records: Sequence[dict], max_interventions: int) -> dict:
    """Statistics of a CALM run from its results.jsonl records."""
    n = len(records)
    golden = [r for r in records if r["golden"]]
    hints = [[i for i in r["interventions"] if "flaw" in i] for r in records]
    flaws = Counter(i["flaw"] for h in hints for i in h)
    per_round = []
    for rnd in range(max_interventions + 1):
        seen = [r["correct_by_round"][rnd] for r in records if len(r["correct_by_round"]) > rnd]
        per_round.append({"round": rnd, "trajectories": len(seen),
                          "accuracy": sum(seen) / len(seen) if seen else None})  # fmt: skip
    resp = sum(r["response_tokens"] for r in golden)
    return {
        "problems": n,
        "golden": len(golden),
        "golden_yield": len(golden) / n if n else 0.0,
        "hint_token_share": sum(r["hint_tokens"] for r in golden) / resp if resp else 0.0,
        "interventions_per_trajectory": sum(len(h) for h in hints) / n if n else 0.0,
        "interventions_per_golden_trajectory": (
            sum(len(h) for r, h in zip(records, hints) if r["golden"]) / len(golden) if golden else 0.0
        ),
        "interventions_histogram": {str(k): v for k, v in sorted(Counter(len(h) for h in hints).items())},
        "flaw_distribution": {name: flaws.get(name, 0) for name in FLAW_NAMES},
        "flaw_categories": {
            cat: sum(v for k, v in flaws.items() if FLAW_TYPES[k][0] == cat)
            for cat in sorted({c for c, _ in FLAW_TYPES.values()})
        },
        "accuracy_per_round": per_round,
        "outcomes": dict(sorted(Counter(r["outcome"] for r in records).items())),
        "intervener_failures": sum(r["outcome"] == "intervener_failure" for r in records),
        "intervener_retries": sum(r["intervener_retries"] for r in records),
    }


def run_calm_job(loop: CalmLoop, problems: Sequence[dict], out_dir: str | Path, *, batch_size: int = 8,
                 progress: bool = True) -> dict:  # fmt: skip
    """Run (or resume) CALM over `problems` into `out_dir`; returns the statistics written to stats.json."""
    from tqdm import tqdm

    out = Path(out_dir)
    golden = JsonlLog(out / GOLDEN_FILE)
    results = JsonlLog(out / RESULTS_FILE)
    todo = [p for p in problems if str(p["id"]) not in results]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="calm", unit="problem",
               file=sys.stderr, disable=not progress)  # fmt: skip

    def done(res: ProblemResult) -> None:
        if res.row is not None and res.id not in golden:
            golden.append(res.row)
        results.append(res.record())
        bar.update(1)
        bar.set_postfix(golden=sum(r["golden"] for r in results.rows()))

    try:
        # Batches are fixed slices of the problem list (not of what is left), and a batch reports problems
        # in (finishing round, position) order: what a killed run wrote is a prefix of what an uninterrupted
        # one writes, so the rerun appends exactly the rest.
        for i in range(0, len(problems), batch_size):
            batch = [p for p in problems[i : i + batch_size] if str(p["id"]) not in results]
            if batch:
                loop.run(batch, on_done=done)
    finally:
        bar.close()
    order = {str(p["id"]): k for k, p in enumerate(problems)}
    records = sorted((r for r in results.rows() if r["id"] in order), key=lambda r: order[r["id"]])
    stats = calm_stats(records, loop.max_interventions)
    write_atomic(out / STATS_FILE, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    usage = getattr(loop.intervener, "stats", None)
    if usage is not None:  # requests / cache hits / tokens / cost of this invocation (differs on a rerun)
        write_atomic(out / "last_run.json", json.dumps({"intervener": usage.to_json()}, indent=2) + "\n")
    return stats
