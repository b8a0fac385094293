"""The StepORLM policy format and its deterministic step segmentation.

Two layouts are steps here:

* the titled layout (default nine titles, configurable): each step is a ``<step>...</step>`` block whose first
  line is ``Step k: <title>``; the last step holds the ```python program; ``\\boxed{}`` follows the steps.
  Text outside the tags is not a step; an unclosed last block runs to the end of the text.
* STORM's tool-integrated layout (no ``<step>`` tag in the text): reasoning paragraphs (split on blank lines)
  are steps, and each ```python block together with the ```output block that follows it is one step.

`segment_steps` picks the layout from the text (or takes a trajectory's segments) and is a pure function of
its input: the same text always gives the same steps, which is what keeps critiques, pairs and resumed runs
reproducible. `final_program` is the code of the last closed ```python block (the one the pool runs and
whose printed objective is the sample's answer).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from storm_jax.execution.answers import python_blocks

#: Default step titles (a third-party reconstruction of StepORLM's policy format; ours ends in pyomo + HiGHS).
STEP_TITLES: tuple[str, ...] = (
    "Problem Description",
    "Sets and Parameters",
    "Decision Variables",
    "Objective Function",
    "Constraints",
    "Mathematical Model",
    "Nonlinear Relationships",
    "Final Model",
    "Python Code",
)

SYSTEM_PROMPT = (
    "You are an expert in operations research. Solve the problem step by step in the required format, ending "
    "with a Python program that uses pyomo with the HiGHS solver (SolverFactory('appsi_highs')) and prints the "
    "optimal objective as `OBJECTIVE: <value>` (or `OBJECTIVE: infeasible`). After the last step, give the "
    "optimal objective value in \\boxed{}."
)

_STEP_TAG_RE = re.compile(r"<step>(.*?)(?:</step>|\Z)", re.DOTALL)
_TITLE_RE = re.compile(r"^\s*Step\s+(\d+)\s*[:.]\s*(.+?)\s*$")
# A code block and the output block right after it (the output is optional: code that never ran).
_CODE_OUT_RE = re.compile(r"```python[^\n]*\n.*?```(?:\s*```output\n.*?```\n?)?", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: 1-based number, title (titled layout; "" otherwise), text, kind and char span [start, end)."""

    number: int
    title: str
    text: str
    kind: str  # "step" (titled) | "text" (reasoning paragraph) | "code" (code + its output)
    start: int
    end: int

    def to_json(self) -> dict:
        """The step as a JSON-ready dict."""
        return dataclasses.asdict(self)


def format_instructions(titles: Sequence[str] = STEP_TITLES) -> str:
    """The layout the policy is asked to follow."""
    lines = [
        f"Write exactly {len(titles)} steps, in this order, each wrapped in <step> and </step>, each starting "
        "with the line `Step k: <title>`:"
    ]
    lines += [f"  Step {k}: {t}" for k, t in enumerate(titles, 1)]
    lines.append(
        f"Step {len(titles)} holds the complete program in one ```python block. If a step does not apply, say "
        "so in one line. Finish with \\boxed{<optimal objective>}."
    )
    return "\n".join(lines)


def policy_messages(
    question: str, titles: Sequence[str] = STEP_TITLES, system: str = SYSTEM_PROMPT, layout: str = "titled"
) -> list[dict]:
    """The chat prompt of the policy: `layout="titled"` asks for the titled steps, "storm" for the plain
    tool-integrated style (the system prompt then carries the instructions)."""
    if layout not in ("titled", "storm"):
        raise ValueError(f"policy_messages: layout must be 'titled' or 'storm', got {layout!r}")
    user = question.strip() if layout == "storm" else f"{question.strip()}\n\n{format_instructions(titles)}"
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def _titled_steps(text: str) -> list[Step]:
    out = []
    for k, m in enumerate(_STEP_TAG_RE.finditer(text), 1):
        inner = m.group(1).strip("\n")
        first = inner.split("\n", 1)[0]
        t = _TITLE_RE.match(first)
        out.append(Step(k, t.group(2) if t else "", inner, "step", m.start(), m.end()))
    return out


def _paragraphs(text: str, offset: int, out: list[tuple[str, str, int, int]]) -> None:
    """Non-blank paragraphs of `text` (blank-line separated), with spans shifted by `offset`."""
    for m in re.finditer(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", text, re.DOTALL):
        out.append(("text", m.group(0), offset + m.start(), offset + m.end()))


def _storm_steps(text: str) -> list[Step]:
    pieces: list[tuple[str, str, int, int]] = []
    pos = 0
    for m in _CODE_OUT_RE.finditer(text):
        _paragraphs(text[pos : m.start()], pos, pieces)
        pieces.append(("code", m.group(0).strip("\n"), m.start(), m.end()))
        pos = m.end()
    _paragraphs(text[pos:], pos, pieces)
    return [Step(k, "", t, kind, s, e) for k, (kind, t, s, e) in enumerate(pieces, 1)]


def segment_steps(text: str | None = None, *, segments: Sequence[dict] | None = None) -> list[Step]:
    """The steps of a solution (see the module docstring); `segments` (trajectory segments
    ``[{"kind", "text"}]``) are joined first. Deterministic."""
    if segments is not None:
        text = "".join(s["text"] for s in segments)
    if text is None:
        raise ValueError("segment_steps needs a text or segments")
    return _titled_steps(text) if "<step>" in text else _storm_steps(text)


def format_problems(text: str, titles: Sequence[str] = STEP_TITLES) -> list[str]:
    """What in a titled-layout solution does not follow the layout (empty: it does)."""
    steps = _titled_steps(text)
    problems = []
    if len(steps) != len(titles):
        problems.append(f"expected {len(titles)} <step> blocks, found {len(steps)}")
    for k, (s, want) in enumerate(zip(steps, titles), 1):
        if s.title.strip().lower() != want.lower():
            problems.append(f"step {k} should start with 'Step {k}: {want}'")
    if steps and not python_blocks(steps[-1].text):
        problems.append(f"the last step ({titles[-1]}) has no ```python block")
    if "\\boxed{" not in (text[steps[-1].end :] if steps else text):
        problems.append("no \\boxed{} answer after the last step")
    return problems


def final_program(text: str) -> str | None:
    """The code of the last closed ```python block, or None."""
    blocks = python_blocks(text)
    return blocks[-1] if blocks else None


__all__ = [
    "STEP_TITLES",
    "SYSTEM_PROMPT",
    "Step",
    "final_program",
    "format_instructions",
    "format_problems",
    "policy_messages",
    "segment_steps",
]
