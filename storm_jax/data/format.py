"""The tool-integrated trajectory format (docs/design.md#trajectory-format), as data.

A trajectory's assistant turn is a sequence of segments. The model writes `text` and `code` segments;
the host writes `output` segments (execution results) and, in CALM, `hint` segments (intervener hints).
Only model-written segments carry loss. Every producer (synthetic gold data, the rollout loop, CALM) and
every consumer (SFT pipeline, GRPO, scoring) goes through this module so the byte layout exists once.

Layout, chosen so that generation can stop exactly at the closing code fence:

    <text>```python\n<code>\n```            <- model stops here (stop string CODE_CLOSE)
    \n```output\n<stdout>\n```\n            <- appended by the host, masked
    <text ...>\boxed{<answer>}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Literal

SegmentKind = Literal["text", "code", "output", "hint"]

CODE_OPEN = "```python\n"
CODE_CLOSE = "\n```"
OUTPUT_OPEN = "\n```output\n"
OUTPUT_CLOSE = "\n```\n"
TRUNCATION_MARK = "\n...[truncated]...\n"

#: Segment kinds the model wrote (loss weight 1); the rest are context only (loss weight 0).
MODEL_WRITTEN: frozenset[str] = frozenset({"text", "code"})


@dataclasses.dataclass(frozen=True)
class Segment:
    """One piece of an assistant turn. `text` is the exact string, fences included."""

    kind: SegmentKind
    text: str

    @property
    def trainable(self) -> bool:
        return self.kind in MODEL_WRITTEN

    def to_json(self) -> dict:
        return {"kind": self.kind, "text": self.text}

    @staticmethod
    def from_json(row: dict) -> Segment:
        kind = row.get("kind")
        if kind not in ("text", "code", "output", "hint"):
            raise ValueError(f"unknown segment kind {kind!r} (expected text, code, output or hint)")
        if not isinstance(row.get("text"), str):
            raise ValueError("segment 'text' must be a string")
        return Segment(kind, row["text"])


def code_segment(code: str) -> Segment:
    """A code segment with its fences, exactly as the model writes it."""
    return Segment("code", f"{CODE_OPEN}{code.strip(chr(10))}{CODE_CLOSE}")


def truncate_output(text: str, max_chars: int) -> str:
    """Keep the head and tail of long output (errors usually sit at the end, headers at the start)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    return text[:head] + TRUNCATION_MARK + text[len(text) - tail :]


def output_segment(stdout: str, max_chars: int = 2000) -> Segment:
    """The host-written block holding an execution's (truncated) output."""
    body = truncate_output(stdout.rstrip("\n"), max_chars)
    return Segment("output", f"{OUTPUT_OPEN}{body}{OUTPUT_CLOSE}")


def render(segments: Iterable[Segment]) -> str:
    """The assistant text of a list of segments."""
    return "".join(s.text for s in segments)


_BLOCK_RE = re.compile(r"```python\n(?P<code>.*?)\n```|\n```output\n(?P<out>.*?)\n```\n", re.DOTALL)


def split_segments(text: str) -> list[Segment]:
    """Recover segments from an assistant text written in this layout (inverse of `render`).

    Used for chat-format SFT rows, whose assistant content holds the same fenced blocks inline.
    """
    segments: list[Segment] = []
    pos = 0
    for m in _BLOCK_RE.finditer(text):
        if m.start() > pos:
            segments.append(Segment("text", text[pos : m.start()]))
        segments.append(Segment("code" if m.group("code") is not None else "output", m.group(0)))
        pos = m.end()
    if pos < len(text):
        segments.append(Segment("text", text[pos:]))
    return segments


def code_blocks(segments: Sequence[Segment]) -> list[str]:
    """The source of every code segment, fences removed."""
    out = []
    for s in segments:
        if s.kind == "code":
            body = s.text
            if body.startswith(CODE_OPEN):
                body = body[len(CODE_OPEN) :]
            if body.endswith(CODE_CLOSE):
                body = body[: -len(CODE_CLOSE)]
            out.append(body)
    return out
