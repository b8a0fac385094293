"""PNG plots of an eval summary (matplotlib, no display needed): accuracy, failures, tokens and tool calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storm_jax.eval.scoring import FAILURES


def write_plots(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """accuracy.png (pass@1, pass@k, maj@n per dataset), failures.png (share of samples per failure kind),
    cost.png (model tokens and tool calls per sample). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = [d for d, e in summary["datasets"].items() if e["n_scored_problems"]]
    entries = [summary["datasets"][d] for d in ds]
    x = np.arange(len(ds))
    labels = [d.replace(".", "\n", 1) for d in ds]
    files = []

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ds)), 4))
    pk = [list(e["pass@k"].values())[-1] for e in entries]
    k = list(entries[0]["pass@k"])[-1] if entries else "k"
    for off, (name, vals) in zip(
        (-0.27, 0, 0.27),
        [
            ("pass@1", [e["pass@1"] for e in entries]),
            (f"pass@{k}", pk),
            ("maj@n", [e["maj_accuracy"] for e in entries]),
        ],
    ):
        ax.bar(x + off, [100 * v for v in vals], width=0.26, label=name)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("% of problems")
    ax.set_ylim(0, 100)
    ax.set_title(f"accuracy ({summary['protocol']} protocol, preset {summary['eval']['preset']})")
    ax.legend()
    files.append(_save(fig, out / "accuracy.png", plt))

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ds)), 4))
    bottom = np.zeros(len(ds))
    for f in FAILURES:
        share = np.array([e["failures"][f] / max(e["n_samples"], 1) for e in entries]) * 100
        if share.any():
            ax.bar(x, share, bottom=bottom, label=f)
            bottom += share
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("% of samples")
    ax.set_ylim(0, 100)
    ax.set_title("failure breakdown")
    if bottom.any():
        ax.legend(fontsize=8)
    files.append(_save(fig, out / "failures.png", plt))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 2.4 * len(ds)), 4))
    a1.bar(x, [e["model_tokens_per_sample"] for e in entries])
    a1.set_title("model-written tokens per sample")
    a2.bar(x, [e["tool_calls_per_sample"] for e in entries], color="tab:orange")
    a2.set_title("tool calls per sample")
    for a in (a1, a2):
        a.set_xticks(x, labels, fontsize=8)
    files.append(_save(fig, out / "cost.png", plt))
    return files


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["write_plots"]
