"""A programmatic intervener for synthetic problems: it knows the gold program, so CALM runs offline.

It reads the same prompt a model intervener reads (storm_jax.calm.verdict.intervener_messages) and
answers with the same JSON verdict, so it is used as a chat client (`ProgrammaticIntervener.complete`).
It is a bootstrap and a test oracle, not a replacement for an expert model. What it checks, in order
(the first failing check is the verdict; "the program" is the last code step):

1. hand_calculation - no code step at all (flagged at the step that states the answer);
2. code_error - the program does not run to the end (it is re-run in the pool with a model probe);
3. objective_error (sense) - the probed objective sense differs from the gold model's;
4. missing_integrality - fewer integer/binary variables than the gold model;
5. wrong_data - the model differs from the gold one and the code holds a number that is nowhere in the
   statement (nor in the gold program, nor a percentage of one);
6. objective_error - the objective coefficients differ from the gold ones;
7. constraint_error - the constraint rows differ (missing when there are fewer than in the gold model);
8. result_misreport - the final boxed answer is not what the program printed.
Models are compared name-independently (storm_jax.calm.introspect). The gold program comes from the
problem row (`meta.program`, as storm-jax synth writes it); problems without one are judged by checks
1, 2 and 8 and by the program's answer against the ground truth.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from storm_jax.calm.introspect import ModelShape, with_probe
from storm_jax.clients.base import ClientStats, Completion, Messages, Usage
from storm_jax.data.format import CODE_OPEN
from storm_jax.execution.answers import answer_from_text
from storm_jax.rewards import is_correct

_STEP_RE = re.compile(r"^### Step (\d+) \((text|code|hint)\)\n", re.MULTILINE)
_NUM_RE = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def _norm_question(q: str) -> str:
    return " ".join(q.split())


def parse_prompt(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(question, [(kind, step text)]) from an intervener prompt built by `intervener_messages`."""
    head, sep, rest = text.partition("\n\n## Student solution (numbered steps)\n")
    if not sep or not head.startswith("## Problem\n"):
        raise ValueError("not a CALM intervener prompt (no '## Problem' / '## Student solution' sections)")
    body = rest[: rest.rfind("\n\n## Flaw types\n")]
    marks = list(_STEP_RE.finditer(body))
    steps = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        steps.append((m.group(2), body[m.end() : end].rstrip("\n")))
    return head[len("## Problem\n") :], steps


def program_of(step_text: str) -> str:
    """The code of a code step (its ```python block, without the output block)."""
    body = step_text[step_text.index(CODE_OPEN) + len(CODE_OPEN) :] if CODE_OPEN in step_text else step_text
    end = body.find("\n```")
    return body if end == -1 else body[:end]


def code_numbers(code: str) -> set[float]:
    """Numeric literals of a program, except 0/1, range() bounds, round() digits and tolerances (< 1e-3)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "range":
                skip |= {id(a) for a in node.args}
            elif node.func.id == "round" and len(node.args) == 2:
                skip.add(id(node.args[1]))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and id(node) not in skip:
            v = abs(float(node.value))
            if v not in (0.0, 1.0) and v >= 1e-3:
                out.add(v)
    return out


def text_numbers(text: str) -> set[float]:
    """Numbers written in a text ("1,200", "3.5"), with their /100 and *100 (percentages)."""
    out = set()
    for m in _NUM_RE.finditer(text):
        try:
            v = float(m.group(0).replace(",", ""))
        except ValueError:
            continue
        out |= {v, v / 100.0, v * 100.0}
    return out


def _close_to_any(x: float, pool: Iterable[float]) -> bool:
    return any(abs(x - y) <= 1e-9 * max(1.0, abs(y)) for y in pool)


class ProgrammaticIntervener:
    """Gold-aware intervener over problem rows (benchmark schema with `meta.program`) and an execution pool."""

    def __init__(self, problems: Sequence[dict], pool: Any, *, timeout_s: float | None = None):
        self.by_question = {_norm_question(p["question"]): p for p in problems}
        self.pool, self.timeout_s = pool, timeout_s
        self._gold: dict[str, ModelShape | None] = {}
        self._lock = threading.Lock()
        self.stats = ClientStats()

    # -- chat-client interface ---------------------------------------------------------------------------
    def complete(self, messages: Messages, **params: Any) -> Completion:
        question, steps = parse_prompt(messages[-1]["content"])
        problem = self.by_question.get(_norm_question(question))
        if problem is None:
            raise ValueError("ProgrammaticIntervener: the prompt's problem is not among its problems")
        verdict = self.judge(problem, steps)
        self.stats.add(requests=1, completions=1)
        return Completion(json.dumps(verdict), Usage(), finish_reason="stop")

    # -- judging -----------------------------------------------------------------------------------------
    def gold_shape(self, problem: dict) -> ModelShape | None:
        pid = str(problem.get("id"))
        with self._lock:
            if pid in self._gold:
                return self._gold[pid]
        program = (problem.get("meta") or {}).get("program")
        shape = None
        if program:
            res = self.pool.run(with_probe(program), timeout_s=self.timeout_s)
            shape = ModelShape.from_stdout(res.stdout) if res.status in ("ok", "no_answer") else None
        with self._lock:
            self._gold[pid] = shape
        return shape

    def judge(self, problem: dict, steps: Sequence[tuple[str, str]]) -> dict:
        """The verdict (a dict in the JSON schema) for a trajectory given as (kind, text) steps."""
        flaw = lambda step, name, hint: {"flawless": False, "step": step, "flaw": name, "hint": hint}
        code_steps = [i for i, (k, _) in enumerate(steps, 1) if k == "code"]
        text_steps = [i for i, (k, _) in enumerate(steps, 1) if k == "text"]
        prose = "".join(steps[i - 1][1] + "\n" for i in text_steps)
        answer = answer_from_text(prose)
        boxed = [i for i in text_steps if "\\boxed" in steps[i - 1][1]]
        answer_step = boxed[-1] if boxed else (text_steps[-1] if text_steps else len(steps))
        if not code_steps:
            return flaw(answer_step, "hand_calculation", "Do not solve this by hand: write the model as a "
                        "pyomo program, run it with HiGHS, and read the optimum from its output.")  # fmt: skip
        last = code_steps[-1]
        code = program_of(steps[last - 1][1])
        res = self.pool.run(with_probe(code), timeout_s=self.timeout_s)
        if res.status not in ("ok", "no_answer"):
            tail = [ln for ln in (res.stderr or "").strip().splitlines() if ln.strip()]
            why = tail[-1].strip() if tail else f"status {res.status}"
            return flaw(last, "code_error", f"This program does not run ({why[:200]}). Fix the error "
                        "before relying on any result.")  # fmt: skip
        meta = problem.get("meta") or {}
        cand, gold = ModelShape.from_stdout(res.stdout), self.gold_shape(problem)
        truth, status = problem.get("answer"), problem.get("answer_status")
        if status is None and truth is None:
            status = "unknown"
        if cand is not None and gold is not None:
            if cand.sense != gold.sense:
                word = "maximize" if gold.sense == "max" else "minimize"
                return flaw(last, "objective_error", f"Re-read what the problem asks: the goal is to {word}; "
                            "check the sense of your objective.")  # fmt: skip
            if cand.int_vars < gold.int_vars:
                return flaw(last, "missing_integrality", "Some decisions can only take whole values here; "
                            "declare those variables integer (or binary).")  # fmt: skip
            if cand.obj != gold.obj or cand.rows != gold.rows or abs(cand.obj_const - gold.obj_const) > 1e-6:
                allowed = text_numbers(problem["question"]) | code_numbers(meta.get("program", ""))
                allowed |= {abs(float(u)) for u in meta.get("unit_factors", []) or []}
                bad = sorted(x for x in code_numbers(code) if not _close_to_any(x, allowed))
                if bad:
                    return flaw(last, "wrong_data", f"The number {bad[0]:g} in your code does not appear in "
                                "the problem statement; re-check the data you copied.")  # fmt: skip
                if cand.obj != gold.obj or abs(cand.obj_const - gold.obj_const) > 1e-6:
                    return flaw(last, "objective_error", "Your objective does not match the statement: "
                                "check every cost/profit term in it.")  # fmt: skip
                missing = sum(cand.rows.values()) < sum(gold.rows.values())
                what = (
                    "A constraint of the problem is missing"
                    if missing
                    else "One of your constraints is wrong"
                )
                return flaw(last, "constraint_error", f"{what}; compare each sentence of the statement with "
                            "your constraints.")  # fmt: skip
        elif status != "unknown" and not is_correct(res.answer, truth, status):
            return flaw(last, "constraint_error", "The optimum of your model disagrees with the problem; "
                        "re-check every constraint and the objective against the statement.")  # fmt: skip
        printed = res.answer
        ok = (
            answer is not None
            and printed is not None
            and (
                is_correct(answer, None, printed)
                if isinstance(printed, str)
                else is_correct(answer, float(printed))
            )
        )
        if not ok:
            step = next((i for i in text_steps if i > last), answer_step)
            return flaw(step, "result_misreport", "State the objective value the program printed as your "
                        "final answer, in \\boxed{}.")  # fmt: skip
        return {"flawless": True, "step": None, "flaw": None, "hint": ""}
