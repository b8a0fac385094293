"""StepORLM warm-up data: teacher solutions in the step format, checked by the solver, retried with the
error until they verify.

Per problem: the teacher (any chat client) writes a full solution (storm_jax.steporlm.format) -> the
layout is checked -> its final program runs in the execution pool -> the program's answer is verified
against the ground truth when the problem has one (storm_jax.rewards, `protocol`), else the program must
reach an optimum (a numeric `OBJECTIVE:`) -> the boxed answer must agree with the program. On any
failure the reason (format problems, the error's tail, or "printed X, which is not the optimum" - the
truth itself is never shown) goes back to the teacher in the same conversation, at most `max_retries`
times. Only verified solutions become rows.

Augmentation (optional): the teacher rewrites the problem (`paraphrase`: same numbers and answer;
`units`: some quantities in other units; `scale`: some numbers scaled) and the rewritten problem is solved
and verified like any other (a paraphrase against the original truth, the others by solver optimality).

Rows are chat-format SFT rows `{"id", "messages": [system, user, assistant], "answer", "meta"}` that
storm_jax.data.sft reads; duplicates (same normalised question) are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from storm_jax.clients.base import ChatClient, ClientError
from storm_jax.execution.answers import answer_from_text
from storm_jax.rewards import is_correct
from storm_jax.steporlm.format import STEP_TITLES, final_program, format_problems, policy_messages

AUGMENTATIONS: dict[str, str] = {
    "paraphrase": "Rewrite the problem in different words. Keep every number, unit and the question exactly "
    "equivalent, so the optimal objective does not change.",
    "units": "Rewrite the problem with some quantities stated in other units (e.g. hours as minutes, kg as "
    "tonnes), converting the numbers consistently. Keep the question's unit for the objective.",
    "scale": "Rewrite the problem with some of its numbers (costs, capacities or demands) multiplied by a "
    "factor of your choice, so that the problem stays feasible and well posed.",
}  # fmt: skip


def question_key(question: str) -> str:
    """Dedup key of a problem statement: sha256 of its lower-cased, whitespace-normalised text."""
    return hashlib.sha256(" ".join(question.lower().split()).encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Attempt:
    ok: bool
    reason: str  # "" when ok; else why it failed (what the teacher was told)
    answer: Any = None


@dataclasses.dataclass
class Solved:
    """Outcome of one (possibly augmented) problem."""

    id: str
    question: str
    row: dict | None
    attempts: list[Attempt]

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)


class WarmupGenerator:
    """Teacher -> pool -> verify -> retry (see module docstring)."""

    def __init__(self, teacher: ChatClient, pool: Any, *, max_retries: int = 2, protocol: str = "storm",
                 titles: Sequence[str] = STEP_TITLES, teacher_params: dict | None = None,
                 exec_timeout_s: float | None = None, require_format: bool = True):  # fmt: skip
        self.teacher, self.pool, self.max_retries, self.protocol = teacher, pool, max_retries, protocol
        self.titles, self.params, self.timeout_s = tuple(titles), dict(teacher_params or {}), exec_timeout_s
        self.require_format = require_format

    def check(self, text: str, truth: float | None, status: str | None) -> Attempt:
        """Verify one teacher solution."""
        if self.require_format:
            problems = format_problems(text, self.titles)
            if problems:
                return Attempt(
                    False, "The solution does not follow the required format: " + "; ".join(problems) + "."
                )
        code = final_program(text)
        if code is None:
            return Attempt(False, "The solution has no ```python block to run.")
        res = self.pool.run(code, timeout_s=self.timeout_s)
        if res.status != "ok":
            tail = "\n".join((res.stderr or res.stdout or "").strip().splitlines()[-8:])
            return Attempt(False, f"The program failed ({res.status}):\n{tail}")
        printed = res.answer
        if status == "unknown" or (truth is None and status is None):
            if not isinstance(printed, (int, float)):
                return Attempt(
                    False, f"The program did not reach an optimal solution (it printed {printed!r})."
                )
        elif not is_correct(printed, truth, status, self.protocol):
            return Attempt(False, f"The program printed {printed!r}, which is not the optimal objective of this "
                           "problem. Re-check the model against the statement.", printed)  # fmt: skip
        boxed = answer_from_text(text)
        agree = (
            is_correct(boxed, None, printed)
            if isinstance(printed, str)
            else is_correct(boxed, float(printed))
        )
        if not agree:
            return Attempt(False, f"The program printed {printed!r} but the boxed answer is {boxed!r}; "
                           "box the value the program printed.", printed)  # fmt: skip
        return Attempt(True, "", printed)

    def solve(self, pid: str, question: str, truth: float | None, status: str | None) -> Solved:
        """Ask the teacher, verify, and retry with the reason, at most `max_retries` times."""
        base = policy_messages(question, self.titles)
        messages = list(base)
        attempts: list[Attempt] = []
        for _ in range(self.max_retries + 1):
            try:
                text = self.teacher.complete(messages, **self.params).text
            except ClientError as e:
                attempts.append(Attempt(False, f"teacher request failed: {e}"))
                break
            a = self.check(text, truth, status)
            attempts.append(a)
            if a.ok:
                row = {
                    "id": pid,
                    # the row is the clean prompt and the verified solution; the corrections are not data
                    "messages": base + [{"role": "assistant", "content": text}],
                    "answer": a.answer if not isinstance(a.answer, str) else None,
                    "answer_status": a.answer if isinstance(a.answer, str) else "optimal",
                }
                return Solved(pid, question, row, attempts)
            messages = messages + [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"{a.reason}\nWrite the complete corrected solution in the same format."},
            ]  # fmt: skip
        return Solved(pid, question, None, attempts)

    def augment(self, question: str, kind: str) -> str | None:
        """The teacher's rewrite of a problem (`kind` in AUGMENTATIONS), or None when it gave none."""
        prompt = (f"{AUGMENTATIONS[kind]}\n\nReply with the rewritten problem only, between <problem> and "
                  f"</problem>.\n\n<problem>\n{question.strip()}\n</problem>")  # fmt: skip
        try:
            text = self.teacher.complete([{"role": "user", "content": prompt}], **self.params).text
        except ClientError:
            return None
        m = re.search(r"<problem>\s*(.*?)\s*</problem>", text, re.DOTALL)
        return m.group(1) if m and m.group(1).strip() else None

    def run_problem(self, problem: dict, augment: Sequence[str] = ()) -> list[Solved]:
        """The problem itself, then each augmentation of it."""
        pid = str(problem["id"])
        truth, status = problem.get("answer"), problem.get("answer_status")
        if truth is None and status is None:
            status = "unknown"
        out = [self.solve(pid, problem["question"], truth, status)]
        for kind in augment:
            q = self.augment(problem["question"], kind)
            if q is None:
                out.append(Solved(f"{pid}~{kind}", "", None, [Attempt(False, "no rewritten problem")]))
                continue
            t, st = (truth, status) if kind == "paraphrase" else (None, "unknown")
            solved = self.solve(f"{pid}~{kind}", q, t, st)
            if solved.row is not None:
                solved.row["meta"] = {"augmentation": kind, "parent": pid}
            out.append(solved)
        for s in out:
            if s.row is not None:
                s.row.setdefault("meta", {"augmentation": "none", "parent": None})
                s.row["meta"]["attempts"] = len(s.attempts)
        return out
