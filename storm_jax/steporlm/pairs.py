"""Preference pairs of the self-evolving loop (StepORLM's rule).

For every problem, over every unordered pair of its samples (i < j by sample index):
  * outcomes differ (solver: one correct, one failed)  -> the correct one is chosen, weight 1   (kind "outcome")
  * outcomes equal and both have a process score       -> the higher score is chosen, weight |s_i - s_j|
                                                           (kind "both_correct" / "both_wrong")
  * equal scores (|delta| <= min_delta)                 -> skipped ("tie")
  * equal outcomes, a score missing (unparsable critique) -> skipped ("unscored")
Modes (ablations): "weighted" (the rule above), "plain" (every weight 1), "outcome_only" (no process pairs).
Per-problem cap: outcome pairs first, then process pairs by weight (descending), then by sample indices;
the first `max_pairs_per_problem` are kept (the rest counted as "capped"). Deterministic.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence

MODES = ("weighted", "plain", "outcome_only")
#: Upper edges of the weight histogram bins (a weight w lands in the first bin with w <= edge).
WEIGHT_BINS = (0.1, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class Sample:
    """What the pair rule needs of a sample: its problem, index, solver outcome and process score."""

    problem_id: str
    sample_index: int
    correct: bool
    score: float | None  # None: no usable critique


@dataclasses.dataclass(frozen=True)
class Pair:
    """chosen beats rejected (sample indices within one problem) with this weight."""

    problem_id: str
    chosen: int
    rejected: int
    weight: float
    kind: str  # outcome | both_correct | both_wrong

    def to_json(self) -> dict:
        """The pair as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _sample(x) -> Sample:
    if isinstance(x, Sample):
        return x
    return Sample(str(x["problem_id"]), int(x["sample_index"]), bool(x["correct"]), x.get("score"))


def build_pairs(
    samples: Sequence[Sample | dict],
    *,
    mode: str = "weighted",
    max_pairs_per_problem: int = 0,
    min_delta: float = 0.0,
) -> tuple[list[Pair], dict]:
    """Pairs by the rule of the module docstring and their statistics (by kind, skipped by reason, a weight
    histogram). `max_pairs_per_problem` 0 = no cap."""
    if mode not in MODES:
        raise ValueError(f"build_pairs: mode must be one of {MODES}, got {mode!r}")
    groups: dict[str, list[Sample]] = collections.defaultdict(list)
    for x in samples:
        s = _sample(x)
        groups[s.problem_id].append(s)
    stats = {"by_kind": dict.fromkeys(("outcome", "both_correct", "both_wrong"), 0),
             "skipped": dict.fromkeys(("tie", "unscored", "outcome_only", "capped"), 0),
             "problems": len(groups), "problems_with_pairs": 0}  # fmt: skip
    out: list[Pair] = []
    for pid in sorted(groups):
        group = sorted(groups[pid], key=lambda s: s.sample_index)
        cand: list[Pair] = []
        for a, b in itertools.combinations(group, 2):
            if a.correct != b.correct:
                win, lose = (a, b) if a.correct else (b, a)
                cand.append(Pair(pid, win.sample_index, lose.sample_index, 1.0, "outcome"))
                continue
            if mode == "outcome_only":
                stats["skipped"]["outcome_only"] += 1
                continue
            if a.score is None or b.score is None:
                stats["skipped"]["unscored"] += 1
                continue
            delta = a.score - b.score
            if abs(delta) <= min_delta:
                stats["skipped"]["tie"] += 1
                continue
            win, lose = (a, b) if delta > 0 else (b, a)
            w = 1.0 if mode == "plain" else round(abs(delta), 12)
            cand.append(Pair(pid, win.sample_index, lose.sample_index, w,
                             "both_correct" if a.correct else "both_wrong"))  # fmt: skip
        cand.sort(
            key=lambda p: (
                p.kind != "outcome",
                -p.weight,
                min(p.chosen, p.rejected),
                max(p.chosen, p.rejected),
            )
        )
        if max_pairs_per_problem and len(cand) > max_pairs_per_problem:
            stats["skipped"]["capped"] += len(cand) - max_pairs_per_problem
            cand = cand[:max_pairs_per_problem]
        stats["problems_with_pairs"] += bool(cand)
        for p in cand:
            stats["by_kind"][p.kind] += 1
        out.extend(cand)
    hist = collections.Counter(next(e for e in WEIGHT_BINS if p.weight <= e + 1e-12) for p in out)
    stats["weight_hist"] = {f"<={e:g}": hist.get(e, 0) for e in WEIGHT_BINS}
    stats["pairs"] = len(out)
    return out, stats
