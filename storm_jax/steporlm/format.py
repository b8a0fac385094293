"""The StepORLM policy format: a titled, step-by-step OR solution ending in solver code.

Default layout (a third-party reconstruction of StepORLM's policy format; the titles are configurable):
nine steps, each wrapped in `<step>...</step>`, whose first line is `Step k: <title>`:

    <step>
    Step 1: Problem Description
    ...
    </step>
    ...
    <step>
    Step 9: Python Code
    ```python
    <pyomo + HiGHS program printing `OBJECTIVE: <value>`>
    ```
    </step>
    \\boxed{<optimal objective>}

`policy_messages` is the prompt, `segment_steps` the deterministic step segmentation (text outside the
step tags is not a step; an unclosed last step runs to the end of the text), `format_problems` lists
what does not follow the layout, `final_program` is the code of the last ```python block.
This module is deliberately small: the GenPRM / self-evolving loop extends it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from storm_jax.execution.answers import python_blocks

# The titles, prompt and program extraction are the policy format's (one definition, policy_format.py); this
# module adds the stricter checks a teacher's warm-up solution must pass (numbered, closed steps).
from storm_jax.steporlm.policy_format import (  # noqa: F401 - re-exported for the warm-up generator
    STEP_TITLES,
    SYSTEM_PROMPT,
    final_program,
    format_instructions,
    policy_messages,
)

STEP_OPEN, STEP_CLOSE = "<step>", "</step>"
_STEP_RE = re.compile(r"<step>(.*?)(?:</step>|\Z)", re.DOTALL)
_TITLE_RE = re.compile(r"^\s*Step\s+(\d+)\s*[:.\-]\s*(.+?)\s*$")


@dataclasses.dataclass(frozen=True)
class StepBlock:
    """One `<step>` of a solution: its number and title as written, body, and char span in the text."""

    number: int | None
    title: str
    body: str
    start: int
    end: int
    closed: bool


def segment_steps(text: str) -> list[StepBlock]:
    """The `<step>` blocks of a solution, in order (deterministic; see module docstring)."""
    out = []
    for m in _STEP_RE.finditer(text):
        inner = m.group(1)
        first, _, rest = inner.strip("\n").partition("\n")
        t = _TITLE_RE.match(first)
        number, title, body = (int(t.group(1)), t.group(2), rest) if t else (None, "", inner.strip("\n"))
        out.append(StepBlock(number, title, body, m.start(), m.end(), m.group(0).endswith(STEP_CLOSE)))
    return out


def format_problems(text: str, titles: Sequence[str] = STEP_TITLES) -> list[str]:
    """What in `text` does not follow the layout (empty: it does)."""
    steps = segment_steps(text)
    problems = []
    if len(steps) != len(titles):
        problems.append(f"expected {len(titles)} <step> blocks, found {len(steps)}")
    for k, (s, want) in enumerate(zip(steps, titles), 1):
        if not s.closed:
            problems.append(f"step {k} is not closed with </step>")
        if s.number != k or s.title.strip().lower() != want.lower():
            problems.append(f"step {k} should start with 'Step {k}: {want}'")
    if steps and not python_blocks(steps[-1].body):
        problems.append(f"the last step ({titles[-1]}) has no ```python block")
    tail = text[steps[-1].end :] if steps else text
    if "\\boxed{" not in tail:
        problems.append("no \\boxed{} answer after the last step")
    return problems
