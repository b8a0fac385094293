"""The Markdown report of a summary (summary.md and the console table of `storm-jax score`)."""

from __future__ import annotations

from typing import Any

from storm_jax.eval.scoring import FAILURES


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
