"""A tool-integrated trajectory as numbered steps with token spans, for the intervener and the hint cut.

Steps: every reasoning paragraph of model-written text (split after a blank line), every code block
together with the output block that follows it, every inserted hint. Each step keeps its token span
[start, end) in `response_ids`, so "keep the steps before step k" is `response_ids[:steps[k-1].start]`
exactly, with no re-tokenization. Only `text` and `code` steps are selectable as flawed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from storm_jax.sampling.rollout import SegmentSpan


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # text | code | hint
    text: str  # code steps: the code block followed by its output block
    start: int
    end: int


def _paragraphs(seg: SegmentSpan, ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[Step]:
    """Split a text span after each token that completes a blank line ("\\n\\n")."""
    out, start = [], seg.start
    for k in range(seg.start, seg.end):
        if "\n" not in decode([ids[k]]):  # only a token holding a newline can complete a blank line
            continue
        piece = decode(list(ids[start : k + 1]))
        if piece.endswith("\n\n") and piece.strip() and k + 1 < seg.end:
            out.append(Step("text", piece, start, k + 1))
            start = k + 1
    if start < seg.end:
        out.append(Step("text", decode(list(ids[start : seg.end])), start, seg.end))
    return out


def trajectory_steps(
    segments: Sequence[SegmentSpan], response_ids: Sequence[int], decode: Callable[[list[int]], str]
) -> list[Step]:
    """The steps of a trajectory (see module docstring), in order, covering every response token."""
    steps: list[Step] = []
    for seg in segments:
        if seg.kind == "text":
            steps += _paragraphs(seg, response_ids, decode)
        elif seg.kind == "code":
            steps.append(Step("code", seg.text, seg.start, seg.end))
        elif seg.kind == "output" and steps and steps[-1].kind == "code":
            last = steps[-1]
            steps[-1] = Step("code", last.text + seg.text, last.start, seg.end)
        elif seg.kind == "output":  # an output with no code before it (cannot come from a rollout)
            steps.append(Step("code", seg.text, seg.start, seg.end))
        else:
            steps.append(Step("hint", seg.text, seg.start, seg.end))
    return steps


def selectable_steps(steps: Sequence[Step]) -> list[int]:
    """1-based numbers of the steps a flaw may point at (those the reasoner wrote)."""
    return [i for i, s in enumerate(steps, 1) if s.kind != "hint"]
