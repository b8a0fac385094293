"""The intervener's side of CALM: our flaw taxonomy, the JSON verdict schema and the intervener prompt.

Taxonomy. CALM (arXiv 2510.04204) sorts the reasoner's flaws into 7 types in 2 categories,
computation-driven and domain-knowledge; the paper's exact type names are not public, so the names and
descriptions below are ours (inferred), chosen so every type maps to a hint the reasoner can act on.

Verdict. The intervener answers with one JSON object
    {"flawless": bool, "step": int | null, "flaw": str | null, "hint": str}
`step` is the 1-based number of the first flawed step (as numbered in the prompt), `flaw` one of the
taxonomy's names, `hint` one or two sentences that point at the problem without giving the answer.
`parse_verdict` accepts the object bare or inside a ```json fence and validates it with pydantic; a
malformed answer raises `VerdictError` with the reason (the caller retries once, then counts a failure).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError, model_validator

COMPUTATION = "computation-driven"
DOMAIN = "domain-knowledge"

#: flaw name -> (category, description). Names are ours (inferred): the paper does not publish them.
FLAW_TYPES: dict[str, tuple[str, str]] = {
    "hand_calculation": (COMPUTATION, "solves or computes by hand (mental arithmetic, enumeration in prose) "
                         "instead of writing and running solver code"),
    "code_error": (COMPUTATION, "the code did not run (exception, syntax error, timeout, solver failure) and "
                   "the error was not fixed"),
    "result_misreport": (COMPUTATION, "the final answer does not match what the executed code printed, or "
                         "no answer is given"),
    "wrong_data": (DOMAIN, "a number is copied wrongly from the problem text (coefficient, capacity, demand, "
                   "cost, unit)"),
    "missing_integrality": (DOMAIN, "quantities that must be whole (units, people, vehicles, yes/no "
                            "decisions) are modelled as continuous"),
    "constraint_error": (DOMAIN, "a constraint of the problem is missing, or is modelled wrongly (wrong "
                         "direction, wrong terms)"),
    "objective_error": (DOMAIN, "the objective function is wrong, or the optimisation sense (min/max) is "
                        "wrong"),
}  # fmt: skip
FLAW_NAMES: tuple[str, ...] = tuple(FLAW_TYPES)


class VerdictError(ValueError):
    """An intervener answer that is not a valid verdict; the message says why."""


class Verdict(BaseModel):
    """A validated intervener verdict (see module docstring)."""

    flawless: bool
    step: int | None = None
    flaw: str | None = None
    hint: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.flawless:
            if self.step is not None or self.flaw is not None:
                raise ValueError("a flawless verdict has step = null and flaw = null")
            return self
        if self.step is None or self.step < 1:
            raise ValueError("a flawed verdict needs step >= 1")
        if self.flaw not in FLAW_TYPES:
            raise ValueError(f"flaw {self.flaw!r} is not one of {', '.join(FLAW_NAMES)}")
        if not self.hint.strip():
            raise ValueError("a flawed verdict needs a non-empty hint")
        return self

    def to_json(self) -> dict:
        return self.model_dump()


_FENCE_RE = re.compile(r"```(?:json)?\s*\n(.*?)\n```", re.DOTALL)


def _first_object(text: str) -> str | None:
    """The first balanced {...} of `text` (strings respected), or None."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def parse_verdict(text: str, num_steps: int, selectable: Sequence[int] | None = None) -> Verdict:
    """The verdict in an intervener answer; VerdictError when there is none or it is invalid.

    `selectable`: the step numbers a flaw may point at (model-written steps; default all 1..num_steps).
    """
    fenced = _FENCE_RE.findall(text)
    candidates = [c for c in fenced if c.strip().startswith("{")] + [text]
    raw = None
    for c in candidates:
        raw = _first_object(c)
        if raw is not None:
            break
    if raw is None:
        raise VerdictError("no JSON object in the answer")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise VerdictError(f"invalid JSON ({e.msg} at char {e.pos})") from None
    try:
        v = Verdict.model_validate(obj, strict=False)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "verdict"
        raise VerdictError(f"{loc}: {first.get('msg')}") from None
    if not v.flawless:
        if v.step > num_steps:
            raise VerdictError(f"step {v.step} is out of range (the trajectory has {num_steps} steps)")
        if selectable is not None and v.step not in selectable:
            raise VerdictError(f"step {v.step} is not a step the reasoner wrote")
    return v


SYSTEM = (
    "You are an expert in operations research reviewing a student's solution. The student writes reasoning "
    "and pyomo code; the code is executed and its output shown. Find the FIRST flawed step, if any, and "
    "write a short hint that helps the student fix it without giving away the answer."
)


def taxonomy_text() -> str:
    """The taxonomy as the prompt lists it."""
    lines = []
    for cat in (COMPUTATION, DOMAIN):
        lines.append(f"{cat} flaws:")
        lines += [f"  - {name}: {desc}" for name, (c, desc) in FLAW_TYPES.items() if c == cat]
    return "\n".join(lines)


def intervener_messages(question: str, steps_text: Sequence[str], step_kinds: Sequence[str]) -> list[dict]:
    """The intervener conversation: problem, the trajectory as numbered steps, taxonomy, answer format."""
    numbered = "\n\n".join(
        f"### Step {i} ({kind})\n{text.strip()}"
        for i, (kind, text) in enumerate(zip(step_kinds, steps_text), 1)
    )
    user = (
        f"## Problem\n{question.strip()}\n\n## Student solution (numbered steps)\n{numbered}\n\n"
        f"## Flaw types\n{taxonomy_text()}\n\n"
        "## Your answer\nReply with exactly one JSON object and nothing else:\n"
        '{"flawless": true|false, "step": <number of the first flawed step, or null>, '
        '"flaw": <one flaw type name, or null>, "hint": "<one or two sentences, or empty>"}\n'
        "Steps of kind `hint` were written by a reviewer; never point at them."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
