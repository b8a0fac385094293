"""The generative process reward model (GenPRM): critique prompt, strict critique syntax, parser, score.

StepORLM's GenPRM reads the whole trajectory, reasons, and judges every step; its prompt and output syntax
are not public, so the ones below are ours (docs/steporlm.md). A critique is

    <free reasoning, any number of lines>
    Step 1: correct — <reason>
    Step 2: incorrect — <reason>
    ...
    Step n: correct — <reason>
    Final: correct|incorrect

Rules `parse_critique` enforces (each violation is a parse failure with a reason, never a silent score):
the verdict block starts at the first line that looks like a verdict line (``Step <k>:`` after folding
unicode look-alikes); from there on only verdict lines, blank lines and the final line may appear, and
nothing but blank lines after the final line. Verdict lines are exactly ``Step k: correct|incorrect``,
optionally followed by `` — reason`` (em dash, en dash or ``-``), for k = 1..n once each, in order. A line
that only matches after NFKC + look-alike folding (Cyrillic "е", fullwidth digits, ...) is a failure, and so
is a verdict-like line inside a ``` fence (a model quoting a verdict in code is not giving one).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence

from storm_jax.steporlm.policy_format import Step, segment_steps

__all__ = [
    "CRITIQUE_SYSTEM",
    "Critique",
    "VERDICTS",
    "build_critique_messages",
    "format_critique",
    "parse_critique",
    "process_score",
    "segment_steps",
]

VERDICTS = ("correct", "incorrect")

CRITIQUE_SYSTEM = (
    "You are a meticulous reviewer of operations-research solutions. Read the problem and the numbered "
    "steps of a solution. Reason about every step first. Then write exactly one verdict line per step, in "
    "order, in the form `Step k: correct — <reason>` or `Step k: incorrect — <reason>`, and finish with one "
    "line `Final: correct` or `Final: incorrect`. Write nothing after the final line."
)

_STRICT_RE = re.compile(r"^Step ([0-9]+): ([A-Za-z]+)(?:\s*(?:—|–|-)\s*(.*))?\s*$")
_FINAL_RE = re.compile(r"^Final: ([A-Za-z]+)\s*$")
_LOOSE_STEP_RE = re.compile(r"^\s*step\s*\S+\s*:", re.IGNORECASE)
_LOOSE_FINAL_RE = re.compile(r"^\s*final\s*:", re.IGNORECASE)
# Look-alikes that NFKC does not fold (Cyrillic / Greek letters used in "Step", "Final", "correct").
_CONFUSABLES = str.maketrans("аеорсхуіАЕОРСХТКМНВіοΟρΡτΤεΕ", "aeopcxyiAEOPCXTKMHBioOpPtTeE")


@dataclasses.dataclass
class Critique:
    """A parsed critique. `ok` False: `failure` says why and `verdicts` is empty."""

    num_steps: int
    verdicts: list[bool] = dataclasses.field(default_factory=list)  # True = correct, per step
    reasons: list[str] = dataclasses.field(default_factory=list)
    final: bool | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_json(self) -> dict:
        """The critique as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _fold(line: str) -> str:
    return unicodedata.normalize("NFKC", line).translate(_CONFUSABLES)


def _numbered(steps: Sequence[Step | str]) -> str:
    parts = []
    for k, s in enumerate(steps, 1):
        text = s.text if isinstance(s, Step) else str(s)
        parts.append(f"[Step {k}]\n{text.strip()}")
    return "\n\n".join(parts)


def build_critique_messages(
    problem: str, steps: Sequence[Step | str], system: str = CRITIQUE_SYSTEM
) -> list[dict]:
    """The GenPRM's chat prompt: the problem and the solution's steps, numbered from 1."""
    user = (
        f"Problem:\n{problem.strip()}\n\nSolution ({len(steps)} steps):\n\n{_numbered(steps)}\n\n"
        f"Judge steps 1 to {len(steps)}."
    )
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def parse_critique(text: str, num_steps: int) -> Critique:
    """Parse a critique of a `num_steps`-step solution under the strict rules of the module docstring."""
    out = Critique(num_steps)

    def fail(reason: str) -> Critique:
        out.failure, out.verdicts, out.reasons, out.final = reason, [], [], None
        return out

    if num_steps < 1:
        return fail("the solution has no steps")
    in_fence, in_block, expected = False, False, 1
    lines = text.split("\n")
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if line.lstrip().startswith("```"):
            if in_block:
                return fail(f"line {n}: code fence inside the verdict block")
            in_fence = not in_fence
            continue
        folded = _fold(line)
        looks_step, looks_final = bool(_LOOSE_STEP_RE.match(folded)), bool(_LOOSE_FINAL_RE.match(folded))
        if in_fence:
            if looks_step or looks_final:
                return fail(f"line {n}: verdict line inside a code block")
            continue
        if out.final is not None:
            if line.strip():
                return fail(f"line {n}: text after the final line")
            continue
        if not in_block and not looks_step:
            if looks_final:
                return fail(f"line {n}: final line before any verdict line")
            continue  # free reasoning
        in_block = True
        if not line.strip():
            continue
        if folded != line and (looks_step or looks_final):
            return fail(f"line {n}: unicode look-alike characters in a verdict line")
        if looks_final:
            m = _FINAL_RE.match(line.strip())
            if m is None or m.group(1) not in VERDICTS:
                return fail(f"line {n}: malformed final line (want 'Final: correct|incorrect')")
            if expected <= num_steps:
                return fail(
                    f"line {n}: final line before step {expected}'s verdict (missing step {expected})"
                )
            out.final = m.group(1) == "correct"
            continue
        m = _STRICT_RE.match(line.strip())
        if m is None:
            return fail(f"line {n}: malformed verdict line (want 'Step k: correct|incorrect — reason')")
        k, word = int(m.group(1)), m.group(2)
        if k < 1 or k > num_steps:
            return fail(f"line {n}: step {k} is out of range 1..{num_steps}")
        if k < expected:
            return fail(f"line {n}: step {k} repeated")
        if k > expected:
            return fail(f"line {n}: step {k} out of order (missing step {expected})")
        if word not in VERDICTS:
            return fail(f"line {n}: unknown verdict word {word!r} for step {k}")
        out.verdicts.append(word == "correct")
        out.reasons.append((m.group(3) or "").strip())
        expected += 1
    if in_fence and not in_block:
        pass  # an unclosed fence in the reasoning: the check below reports the missing verdicts
    if expected <= num_steps:
        return fail(f"missing step {expected} (no verdict line)" if in_block else "no verdict lines")
    if out.final is None:
        return fail("no final line")
    return out


def process_score(critique: Critique) -> float:
    """Share of the steps judged correct; a failed critique has no score (ValueError naming its failure)."""
    if not critique.ok:
        raise ValueError(f"process_score: critique failed to parse ({critique.failure})")
    return sum(critique.verdicts) / critique.num_steps


def format_critique(verdicts: Sequence[bool], reasons: Sequence[str], reasoning: str = "") -> str:
    """A critique in the strict syntax (the programmatic critic writes these; parse_critique reads them)."""
    lines = [reasoning.strip(), ""] if reasoning.strip() else []
    for k, (v, r) in enumerate(zip(verdicts, reasons, strict=True), 1):
        lines.append(f"Step {k}: {'correct' if v else 'incorrect'} — {r.strip() or 'ok'}")
    lines.append(f"Final: {'correct' if all(verdicts) else 'incorrect'}")
    return "\n".join(lines)
