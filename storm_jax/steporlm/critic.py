"""A programmatic critic for synthetic problems: it knows the gold model and writes GenPRM-syntax critiques.

It bootstraps the GenPRM (round 0 has training data) and is a test oracle; it is not a replacement for the
model. The gold model is read from the problem's gold program (``meta["program"]`` of storm_jax.data.synth
rows): the objective sense, whether any variable is integer/binary, every explicitly written constraint
(``pyo.Constraint(expr=...)``), and the data numbers (numbers of the gold program that also occur in the
problem statement). It never looks at the gold answer, so its verdicts judge the model, not the outcome.

Checks, and the steps they land on (docs/steporlm.md has the full table):
  code steps (a ```python block, with its ```output block in the STORM layout; "Python Code" when titled):
    the program ran and printed an objective; objective sense; integrality; every explicit gold constraint
    present (whitespace-insensitive); every data number used; no number that is in neither the statement
    nor the gold program (a wrong number copied from the text).
  titled steps: "Objective Function" also gets the sense check, "Decision Variables" the integrality check,
    "Constraints" the constraint and data-number checks, each against the final program.
  reasoning steps: no number foreign to the statement, the outputs so far and small counts (0-10); a step
    holding \\boxed{} must box the objective the last program printed (else: a hand calculation).
Final line: correct iff every step is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from storm_jax.execution.answers import answer_from_output, answer_from_text, python_blocks
from storm_jax.steporlm.genprm import Critique, format_critique, parse_critique
from storm_jax.steporlm.policy_format import Step, final_program, segment_steps

_NUM_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_SENSE_RE = re.compile(r"sense\s*=\s*(?:pyo\.)?(maximize|minimize)")
_INT_RE = re.compile(r"within\s*=\s*(?:pyo\.)?(Binary|NonNegativeIntegers|Integers|PositiveIntegers|Boolean)")
_CON_RE = re.compile(r"Constraint\(\s*expr\s*=\s*(.+?)\)\s*$", re.MULTILINE)
_OUTPUT_RE = re.compile(r"```output\n(.*?)```", re.DOTALL)
_FOOTER = ("SolverFactory", "termination_condition", "round(", "abs(v.value)", "print(")


def _numbers(text: str) -> set[float]:
    return {float(x) for x in _NUM_RE.findall(text.replace(",", ""))}


def _norm(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


@dataclasses.dataclass(frozen=True)
class GoldModel:
    """What the critic knows of a problem's gold model."""

    sense: str | None  # "maximize" | "minimize"
    integer: bool
    constraints: tuple[str, ...]  # whitespace-free explicit constraint expressions
    data_numbers: frozenset[float]  # gold-program numbers that occur in the statement
    allowed_numbers: frozenset[float]  # statement + gold program numbers

    @staticmethod
    def from_problem(question: str, program: str) -> GoldModel:
        """The gold model of a synthetic problem (statement + gold program)."""
        body = "\n".join(ln for ln in program.splitlines() if not any(f in ln for f in _FOOTER))
        sense = _SENSE_RE.search(program)
        q_nums, p_nums = _numbers(question), _numbers(body)
        return GoldModel(
            sense=sense.group(1) if sense else None,
            integer=bool(_INT_RE.search(program)),
            constraints=tuple(_norm(c) for c in _CON_RE.findall(program)),
            data_numbers=frozenset(q_nums & p_nums),
            allowed_numbers=frozenset(q_nums | p_nums),
        )


def _code_body(program: str) -> str:
    return "\n".join(ln for ln in program.splitlines() if not any(f in ln for f in _FOOTER))


def _sense_issues(gold: GoldModel, program: str) -> list[str]:
    m = _SENSE_RE.search(program)
    if gold.sense and (m is None or m.group(1) != gold.sense):
        return [f"the objective should {gold.sense[:-1]}e, the program has {m.group(1) if m else 'no sense'}"]
    return []


def _int_issues(gold: GoldModel, program: str) -> list[str]:
    has = bool(_INT_RE.search(program))
    if has != gold.integer:
        return [
            "integrality is missing" if gold.integer else "variables are integer but should be continuous"
        ]
    return []


def _constraint_issues(gold: GoldModel, program: str) -> list[str]:
    have = {_norm(c) for c in _CON_RE.findall(program)}
    issues = [f"constraint {c} is missing or wrong" for c in gold.constraints if c not in have]
    used = _numbers(_code_body(program))
    missing = sorted(gold.data_numbers - used)
    if missing:
        issues.append(f"data {', '.join(f'{x:g}' for x in missing[:3])} of the statement not used")
    return issues


def _foreign_issues(gold: GoldModel, text: str, extra: set[float]) -> list[str]:
    bad = sorted(_numbers(text) - gold.allowed_numbers - extra - {float(i) for i in range(11)})
    return [f"number {', '.join(f'{x:g}' for x in bad[:3])} is not in the problem statement"] if bad else []


def _ran(step_text: str, execution: dict | None) -> tuple[bool, float | str | None]:
    """Whether the step's program ran and printed an objective (its output block, else `execution`)."""
    outs = _OUTPUT_RE.findall(step_text)
    if outs:
        ans = answer_from_output(outs[-1])
        return ans is not None and "Traceback" not in outs[-1], ans
    if execution is not None:
        return execution.get("status") == "ok" and execution.get("answer") is not None, execution.get(
            "answer"
        )
    return False, None


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


def judge_steps(
    question: str, program: str, steps: Sequence[Step], *, execution: dict | None = None
) -> tuple[list[bool], list[str]]:
    """Per-step verdicts and reasons (see the module docstring). `execution`: the pool's result of the final
    program ({"status", "answer"}), used where the text holds no output block (titled layout)."""
    gold = GoldModel.from_problem(question, program)
    text = "".join(s.text + "\n" for s in steps)
    final = final_program(text) or ""
    seen_out: set[float] = set()
    last_answer = None
    any_code = False
    verdicts, reasons = [], []
    for s in steps:
        issues: list[str] = []
        blocks = python_blocks(s.text)
        if blocks:
            any_code = True
            code = blocks[-1]
            ok, ans = _ran(s.text, execution if code == final else None)
            if not ok:
                issues.append("the program did not run to an objective")
            issues += _sense_issues(gold, code) + _int_issues(gold, code) + _constraint_issues(gold, code)
            issues += _foreign_issues(gold, _code_body(code), seen_out)
            for out in _OUTPUT_RE.findall(s.text):
                seen_out |= _numbers(out)
            last_answer = ans if ok else last_answer
        else:
            title = s.title.strip().lower()
            if title == "objective function" and final:
                issues += _sense_issues(gold, final)
            elif title == "decision variables" and final:
                issues += _int_issues(gold, final)
            elif title == "constraints" and final:
                issues += _constraint_issues(gold, final)
            issues += _foreign_issues(gold, s.text, seen_out)
            if "\\boxed{" in s.text:
                boxed = answer_from_text(s.text)
                if last_answer is None and execution is not None and execution.get("status") == "ok":
                    last_answer = execution.get("answer")
                if last_answer is None:
                    issues.append("the boxed answer was computed by hand: no program printed an objective")
                elif boxed is None or not _same(boxed, last_answer):
                    issues.append("the boxed answer is not the objective the program printed")
        verdicts.append(not issues)
        reasons.append("; ".join(issues) if issues else "consistent with the problem")
    if not any_code and verdicts:
        verdicts[-1], reasons[-1] = False, "no program was written: " + reasons[-1]
    return verdicts, reasons


STYLES = ("full", "terse")

# The terse style's reason labels: the first issue of a step, by the start of its full reason.
_TERSE = (("no program was written", "no program"), ("the objective should", "wrong sense"),
          ("integrality", "wrong integrality"), ("variables are integer", "wrong integrality"),
          ("constraint ", "missing constraint"), ("data ", "unused data"), ("number ", "wrong number"),
          ("the program did not run", "did not run"), ("the boxed answer was computed", "hand answer"),
          ("the boxed answer is not", "wrong box"))  # fmt: skip


def terse_reason(verdict: bool, reason: str) -> str:
    """The terse style's reason: "ok", or a two-word label of the step's first issue."""
    if verdict:
        return "ok"
    return next((label for start, label in _TERSE if reason.startswith(start)), "wrong")


def critique(
    question: str, program: str, solution: str, *, execution: dict | None = None, style: str = "full"
) -> tuple[str, Critique, list[Step]]:
    """(critique text, its parse, the steps) of a solution; the text parses back to the same verdicts.

    style "full": a sentence of reasoning and each step's issues in words; "terse" (small models learning
    the syntax): a fixed one-line reasoning and a two-word reason per step (`terse_reason`). Same verdicts."""
    if style not in STYLES:
        raise ValueError(f"critique style {style!r} not in {STYLES}")
    steps = segment_steps(solution)
    if not steps:
        return "The solution is empty.", parse_critique("", 0), steps
    verdicts, reasons = judge_steps(question, program, steps, execution=execution)
    bad = [k for k, v in enumerate(verdicts, 1) if not v]
    if style == "terse":
        reasons = [terse_reason(v, r) for v, r in zip(verdicts, reasons)]
        summary = "Checked every step."
    else:
        summary = (
            f"Checked {len(steps)} steps against the problem's model (sense, integrality, constraints, data). "
            + (f"Problems in steps {', '.join(map(str, bad))}." if bad else "No problem found.")
        )
    text = format_critique(verdicts, reasons, summary)
    return text, parse_critique(text, len(steps)), steps
