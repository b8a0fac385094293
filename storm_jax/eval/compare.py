"""`storm-jax eval compare RUN_A RUN_B`: two eval runs side by side, with per-benchmark differences (B − A)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from storm_jax.eval.evalreport import SUMMARY_JSON, pass_k

#: (column, how to read it from a dataset entry, is it a rate shown in %)
_COLUMNS = (
    ("pass@1", lambda e: e.get("pass@1"), True),
    ("pass@k", lambda e: pass_k(e)[1], True),
    ("maj@n", lambda e: e.get("maj_accuracy"), True),
    ("tokens/sample", lambda e: e.get("model_tokens_per_sample"), False),
    ("tool calls/sample", lambda e: e.get("tool_calls_per_sample"), False),
)


def load_summary(run: str | Path) -> dict[str, Any]:
    """summary.json of an eval run; FileNotFoundError naming what to run when it is missing."""
    path = Path(run) / SUMMARY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary (finish the run, or `storm-jax eval merge {run}`)")
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(v: float | None, pct: bool) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.1f}"


def _diff(a: float | None, b: float | None, pct: bool) -> str:
    if a is None or b is None:
        return "–"
    d = (b - a) * (100 if pct else 1)
    return f"{d:+.1f}"


def compare(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """The side-by-side Markdown table of two summaries, with notes on settings that differ."""
    notes = []
    for key in ("model", "preset", "n", "limit", "seed", "decoding"):
        va, vb = a["eval"].get(key), b["eval"].get(key)
        if va != vb:
            notes.append(f"- {key}: {name_a} {va} vs {name_b} {vb}")
    if a["protocol"] != b["protocol"]:
        notes.append(
            f"- protocol: {name_a} {a['protocol']} vs {name_b} {b['protocol']} (scores not comparable)"
        )
    head = "| dataset | " + " | ".join(f"{c} {name_a} | {c} {name_b} | Δ" for c, _, _ in _COLUMNS) + " |"
    lines = [
        f"A = {name_a}, B = {name_b}; Δ = B − A (percentage points for rates)",
        "",
        head,
        "|---|" + "---|---|---|" * len(_COLUMNS),
    ]
    datasets = list(dict.fromkeys(list(a["datasets"]) + list(b["datasets"])))
    for d in datasets:
        ea, eb = a["datasets"].get(d, {}), b["datasets"].get(d, {})
        cells = []
        for _, get, pct in _COLUMNS:
            va = get(ea) if ea.get("n_scored_problems") else None
            vb = get(eb) if eb.get("n_scored_problems") else None
            cells += [_fmt(va, pct), _fmt(vb, pct), _diff(va, vb, pct)]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    ma, mb = a["macro"], b["macro"]
    lines += [
        "",
        f"Macro pass@1: {name_a} {_fmt(ma['pass@1'], True)}, {name_b} {_fmt(mb['pass@1'], True)}, "
        f"Δ {_diff(ma['pass@1'], mb['pass@1'], True)}; macro maj@n: {name_a} {_fmt(ma['maj_accuracy'], True)}, "
        f"{name_b} {_fmt(mb['maj_accuracy'], True)}, Δ {_diff(ma['maj_accuracy'], mb['maj_accuracy'], True)}.",
    ]
    if notes:
        lines += ["", "Settings that differ:", *notes]
    return "\n".join(lines) + "\n"


__all__ = ["compare", "load_summary"]
