"""Planted flaws in gold solutions: GenPRM warm-up data and a simulated weak policy (best-of-N checks).

A flaw is one of the mistakes the programmatic critic checks for, planted in a gold pyomo program of
storm_jax.data.synth: the objective sense flipped, integrality toggled, one explicit constraint dropped, or
one constraint's right-hand side changed to a number that is not in the statement. The flawed program is
really executed by the pool wherever an outcome is needed, so a flaw that happens not to change the optimum
stays a correct sample.
"""

from __future__ import annotations

import random
import re

from storm_jax.data.format import CODE_CLOSE, CODE_OPEN, OUTPUT_CLOSE, OUTPUT_OPEN

FLAWS = ("sense", "integrality", "drop_constraint", "wrong_number")
_CON_LINE_RE = re.compile(r"^.*Constraint\(expr=.*(?:<=|>=|==)\s*(-?\d+(?:\.\d+)?)\)\s*$", re.MULTILINE)


def plant_flaw(program: str, flaw: str, rng: random.Random) -> str | None:
    """`program` with one flaw of kind `flaw`, or None when the program has nothing to plant it in."""
    if flaw == "sense":
        if "pyo.maximize" in program:
            return program.replace("pyo.maximize", "pyo.minimize")
        return program.replace("pyo.minimize", "pyo.maximize") if "pyo.minimize" in program else None
    if flaw == "integrality":
        for a, b in (("NonNegativeIntegers", "NonNegativeReals"), ("Binary", "UnitInterval"),
                     ("NonNegativeReals", "NonNegativeIntegers")):  # fmt: skip
            if a in program:
                return program.replace(a, b)
        return None
    lines = list(_CON_LINE_RE.finditer(program))
    if not lines:
        return None
    m = lines[rng.randrange(len(lines))]
    if flaw == "drop_constraint":
        return program[: m.start()] + program[m.end() + 1 :]
    if flaw == "wrong_number":
        old = m.group(1)
        new = str(int(float(old)) * 10 + 7)  # never a number of the statement's small data
        line = m.group(0)[: m.start(1) - m.start()] + new + m.group(0)[m.end(1) - m.start() :]
        return program[: m.start()] + line + program[m.end() :]
    raise ValueError(f"plant_flaw: unknown flaw {flaw!r} (known: {FLAWS})")


def gold_parts(segments: list[dict]) -> tuple[str, str]:
    """(the reasoning before the first code block, the last program) of a gold trajectory's segments."""
    intro = ""
    for s in segments:
        if s["kind"] == "code":
            break
        if s["kind"] == "text":
            intro += s["text"]
    codes = [s["text"] for s in segments if s["kind"] == "code"]
    if not codes:
        raise ValueError("gold trajectory has no code segment")
    code = codes[-1]
    return intro.strip(), code[len(CODE_OPEN) : -len(CODE_CLOSE)] if code.startswith(CODE_OPEN) else code


def storm_solution(intro: str, program: str, output: str | None = None, boxed: str | None = None) -> str:
    """A STORM-layout solution text: reasoning, the program, optionally its output block and a box."""
    text = f"{intro}\n{CODE_OPEN}{program.strip(chr(10))}{CODE_CLOSE}"
    if output is not None:
        text += f"{OUTPUT_OPEN}{output.strip(chr(10))}{OUTPUT_CLOSE}"
    if boxed is not None:
        text += f"\n\\boxed{{{boxed}}}"
    return text


def weak_samples(program: str, n: int, p_flaw: float, rng: random.Random) -> list[tuple[str, str | None]]:
    """n (program, flaw or None) samples of a simulated weak policy: each is flawed with probability p_flaw."""
    out = []
    for _ in range(n):
        prog, flaw = program, None
        if rng.random() < p_flaw:
            for f in rng.sample(FLAWS, len(FLAWS)):
                planted = plant_flaw(program, f, rng)
                if planted is not None:
                    prog, flaw = planted, f
                    break
        out.append((prog, flaw))
    return out
