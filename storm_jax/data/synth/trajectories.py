r"""Gold tool-integrated trajectories (docs/design.md#trajectory-format) built from a verified instance and *real* outputs.

Styles:
- ``plain``: reasoning (variables, constraints, objective in words and math), a ```python block, the
  real ```output, and a closing sentence with ``\boxed{}``;
- ``recovery``: a first program with a deliberate bug, its real error output, a short diagnosis and the
  corrected program with its real output;
- ``thinking``: the same inside ``<think> ... </think>`` followed by a short final answer.
"""

from __future__ import annotations

import random
import re

from storm_jax.data.format import Segment, code_segment, output_segment
from storm_jax.data.synth.core import DATA_MARK, MODEL_MARK, Instance, fmt_answer

SYSTEM_PROMPT = (
    "You are an expert in operations research. Model the problem, write a Python program using pyomo with the "
    "HiGHS solver in a ```python block; it will be run and its output shown in an ```output block. "
    "Finish with the optimal objective value in \\boxed{} (or \\boxed{infeasible})."
)

STYLES = ("plain", "recovery", "thinking")

#: Families whose trajectories carry no filler sentences (the tiny CPU demos: every token costs there).
TERSE_FAMILIES = ("arith", "cart")


# ---------------------------------------------------------------------------------------------------------
# Deliberate bugs: each breaks the program in its own top-level code so the traceback shows only main.py
# ---------------------------------------------------------------------------------------------------------


def _bug_no_import(code: str) -> tuple[str, str] | None:
    first = "import pyomo.environ as pyo\n"
    if not code.startswith(first):
        return None
    fix = "The name `pyo` is not defined: I forgot to import pyomo. I add `import pyomo.environ as pyo` and run it again."
    return code[len(first) :].lstrip("\n"), fix


def _bug_sense_typo(code: str) -> tuple[str, str] | None:
    for good, bad in (("pyo.maximize", "pyo.maximise"), ("pyo.minimize", "pyo.minimise")):
        if good in code:
            fix = f"`{bad}` does not exist in pyomo; the objective sense is spelled `{good}`. Fixing that."
            return code.replace(good, bad, 1), fix
    return None


def _bug_data_name(code: str) -> tuple[str, str] | None:
    if DATA_MARK not in code or MODEL_MARK not in code:
        return None
    data, model = code.split(MODEL_MARK, 1)
    names = re.findall(r"^([a-z_][a-z0-9_]*) = ", data.split(DATA_MARK, 1)[1], re.MULTILINE)
    for name in names:
        m = re.search(rf"(?<![\w.\[]){name}\[", model)
        if m:
            bad = name + "s" if not name.endswith("s") else name[:-1]
            if re.search(rf"\b{bad}\b", code):
                continue
            model = model[: m.start()] + bad + model[m.start() + len(name) :]
            fix = f"I wrote `{bad}` but the data dictionary is called `{name}`. Correcting the name."
            return data + MODEL_MARK + model, fix
    return None


BUGS = (_bug_no_import, _bug_sense_typo, _bug_data_name)


def make_bug(code: str, rng: random.Random) -> tuple[str, str] | None:
    """A buggy variant of `code` and the sentence that diagnoses it, or None if no bug applies."""
    for bug in sorted(BUGS, key=lambda _: rng.random()):
        out = bug(code)
        if out is not None:
            return out
    return None


# ---------------------------------------------------------------------------------------------------------


def _answer_sentence(inst: Instance, answer: float | str) -> str:
    if answer == "infeasible":
        return "The solver reports that no plan satisfies all the constraints, so the problem is infeasible.\n\n\\boxed{infeasible}"
    if inst.family in TERSE_FAMILIES:
        return f"\\boxed{{{fmt_answer(answer)}}}"
    return f"The solver finds an optimal solution with objective value {fmt_answer(answer)}.\n\n\\boxed{{{fmt_answer(answer)}}}"


def _intro(inst: Instance) -> str:
    if inst.family in TERSE_FAMILIES:
        return inst.reasoning + "\n"
    return inst.reasoning + "\n\nI will write this model in pyomo and solve it with HiGHS.\n"


def gold_segments(
    inst: Instance,
    output: str,
    answer: float | str,
    style: str = "plain",
    bug: tuple[str, str, str] | None = None,
) -> list[Segment]:
    """The segments of one gold trajectory.

    `output` is the real stdout of the gold program; `bug` is (buggy code, its real error output, diagnosis)
    for the ``recovery`` style (and optionally ``thinking``).
    """
    if style not in STYLES:
        raise ValueError(f"unknown trajectory style {style!r} (expected one of {STYLES})")
    segs: list[Segment] = []
    think = style == "thinking"
    intro = ("<think>\n" if think else "") + _intro(inst)
    segs.append(Segment("text", intro))
    if bug is not None:
        bad_code, bad_out, diagnosis = bug
        segs.append(code_segment(bad_code))
        segs.append(output_segment(bad_out))
        segs.append(Segment("text", diagnosis + "\n"))
    segs.append(code_segment(inst.program))
    segs.append(output_segment(output))
    if think:
        done = (
            "The program ran and printed the objective."
            if answer != "infeasible"
            else "The solver found no feasible point."
        )
        segs.append(Segment("text", f"{done}\n</think>\n\n{_answer_sentence(inst, answer)}"))
    else:
        segs.append(Segment("text", _answer_sentence(inst, answer)))
    return segs
