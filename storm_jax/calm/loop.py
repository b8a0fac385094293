"""The CALM loop: reasoner rollouts with tools, intervener verdicts, hints inserted at the first flaw, and
golden trajectories as token-level SFT rows.

Per problem (all problems of a batch move through a round together, in one sampler call):
  round 0: the reasoner solves the problem with live code execution (storm_jax.sampling.rollout);
  then the intervener reads the problem and the trajectory as numbered steps (storm_jax.calm.steps) and
  answers with a JSON verdict (storm_jax.calm.verdict; an invalid answer is retried once with the reason,
  then counted as an intervener failure and the problem stops);
  flawless + correct answer -> golden, stop; flawless + wrong answer -> stop (no hint to give);
  a flaw at step k -> keep the response tokens before step k exactly, append the hint (span kind `hint`),
  and continue from that prefix (a RolloutRequest with prefix_ids/prefix_kinds): the next round;
  at most `max_interventions` hints per trajectory.
Golden filter: the final answer is correct against the ground truth AND the intervener judges the
trajectory flawless. The SFT row is `trajectory_to_sft_row(level="token")`: hint tokens stay in the
context with loss mask 0 (RolloutConfig.loss_kinds = ("model",)).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from storm_jax.calm.steps import Step, selectable_steps, trajectory_steps
from storm_jax.calm.verdict import Verdict, VerdictError, intervener_messages, parse_verdict
from storm_jax.clients.base import ChatClient, ClientError
from storm_jax.data.format import Segment
from storm_jax.jobs import stable_seed
from storm_jax.rewards import is_correct
from storm_jax.sampling.requests import KIND_HINT
from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, Trajectory, make_decode, rollout

#: How a hint is written into the trajectory (`{hint}` is the intervener's text).
DEFAULT_HINT_TEMPLATE = "\n\nHint: {hint}\n\n"

#: forced(problem, round, prefix_text) -> teacher-forced model ids for that round, or None to sample.
ForcedFn = Callable[[dict, int, str], list[int] | None]


@dataclasses.dataclass
class Judgement:
    """The intervener's answer on one trajectory."""

    verdict: Verdict | None
    attempts: int
    error: str = ""  # why the last attempt was not a valid verdict (verdict is None)


def judge(client: ChatClient, question: str, steps: Sequence[Step], params: dict | None = None) -> Judgement:
    """Ask the intervener for a verdict; one retry with the reason when the answer is invalid."""
    messages = intervener_messages(question, [s.text for s in steps], [s.kind for s in steps])
    selectable = selectable_steps(steps)
    error = ""
    for attempt in (1, 2):
        try:
            text = client.complete(messages, **(params or {})).text
        except ClientError as e:
            return Judgement(None, attempt, f"client: {e}")
        try:
            return Judgement(parse_verdict(text, len(steps), selectable), attempt)
        except VerdictError as e:
            error = str(e)
            messages = messages + [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"That is not a valid verdict ({error}). Reply with the JSON "
                 "object only, in the format given."},
            ]  # fmt: skip
    return Judgement(None, 2, error)


@dataclasses.dataclass
class ProblemResult:
    """What CALM did with one problem. `history`: the trajectory of every round (in memory only)."""

    id: str
    golden: bool
    outcome: str  # golden | flawless_wrong | max_interventions | intervener_failure | out_of_budget
    correct_by_round: list[bool]
    interventions: list[dict]
    row: dict | None
    history: list[Trajectory] = dataclasses.field(default_factory=list)
    intervener_retries: int = 0

    def record(self) -> dict:
        """The per-problem line of results.jsonl (no timings: a resumed run writes the same bytes)."""
        hint = sum(k == KIND_HINT for k in self.row["kinds"]) if self.row else 0
        return {
            "id": self.id,
            "golden": self.golden,
            "outcome": self.outcome,
            "correct_by_round": self.correct_by_round,
            "interventions": self.interventions,
            "intervener_retries": self.intervener_retries,
            "response_tokens": len(self.row["response_ids"]) if self.row else 0,
            "hint_tokens": hint,
        }


@dataclasses.dataclass
class _State:
    problem: dict
    prompt_ids: list[int]
    prefix_ids: list[int] = dataclasses.field(default_factory=list)
    prefix_kinds: list[str] = dataclasses.field(default_factory=list)
    kept_executions: list = dataclasses.field(default_factory=list)
    result: ProblemResult | None = None


class CalmLoop:
    """CALM over a reasoner (params + sampler + executor) and an intervener client (see module docstring)."""

    def __init__(self, params, cfg, tokenizer, sampler, executor, rollout_cfg: RolloutConfig,
                 intervener: ChatClient, *, max_interventions: int = 5, seed: int = 0,
                 system_prompt: str = "", enable_thinking: bool = False,
                 hint_template: str = DEFAULT_HINT_TEMPLATE, protocol: str = "storm",
                 intervener_params: dict | None = None, forced: ForcedFn | None = None,
                 judge_workers: int = 1):  # fmt: skip
        self.params, self.cfg, self.tok, self.sampler, self.executor = (
            params,
            cfg,
            tokenizer,
            sampler,
            executor,
        )
        self.rollout_cfg, self.intervener = rollout_cfg, intervener
        self.max_interventions, self.seed, self.system_prompt = max_interventions, seed, system_prompt
        self.enable_thinking, self.hint_template, self.protocol = enable_thinking, hint_template, protocol
        self.intervener_params, self.forced = intervener_params or {}, forced
        self.judge_workers = judge_workers  # verdicts asked at once (the HTTP client caps what is in flight)
        self.decode = make_decode(tokenizer)

    def messages(self, problem: dict) -> list[dict]:
        sys = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return sys + [{"role": "user", "content": problem["question"]}]

    def hint_ids(self, hint: str) -> list[int]:
        from storm_jax.tokenizer import encode_segment

        return encode_segment(self.tok, Segment("hint", self.hint_template.format(hint=hint.strip())))

    def correct(self, problem: dict, traj: Trajectory) -> bool:
        truth, status = problem.get("answer"), problem.get("answer_status")
        if truth is None and status is None:
            status = "unknown"
        return is_correct(traj.answer, truth, status, self.protocol)

    def run(
        self, problems: Sequence[dict], on_done: Callable[[ProblemResult], Any] | None = None
    ) -> list[ProblemResult]:
        """Run CALM on a batch of problems; `on_done(result)` is called as each problem finishes."""
        from storm_jax.tokenizer import encode_prompt

        states = [_State(p, encode_prompt(self.tok, self.messages(p), enable_thinking=self.enable_thinking))
                  for p in problems]  # fmt: skip
        for s in states:
            s.result = ProblemResult(str(s.problem["id"]), False, "", [], [], None)
        active = list(states)
        for rnd in range(self.max_interventions + 1):
            if not active:
                break
            reqs = []
            for s in active:
                forced = None
                if self.forced is not None:
                    forced = self.forced(s.problem, rnd, self.decode(s.prefix_ids) if s.prefix_ids else "")
                reqs.append(RolloutRequest(
                    s.prompt_ids, seed=stable_seed(self.seed, s.problem["id"], rnd), forced=forced,
                    meta={"id": s.problem["id"], "answer": s.problem.get("answer")},
                    prefix_ids=list(s.prefix_ids) or None, prefix_kinds=list(s.prefix_kinds) or None,
                ))  # fmt: skip
            trajs = rollout(
                self.params, self.cfg, self.tok, reqs, self.rollout_cfg, self.executor, sampler=self.sampler
            )
            for s, traj in zip(active, trajs):
                traj.executions = s.kept_executions + traj.executions  # prefix-era runs are part of it
            # Verdicts of a round are asked concurrently (a remote intervener is slow per request) and applied
            # in problem order, so what is written does not depend on which answer came back first.
            steps = [trajectory_steps(t.segments, t.response_ids, self.decode) for t in trajs]
            questions = [st.problem["question"] for st in active]

            def ask(k: int, questions=questions, steps=steps) -> Judgement:
                return judge(self.intervener, questions[k], steps[k], self.intervener_params)

            if self.judge_workers > 1 and len(active) > 1:
                with cf.ThreadPoolExecutor(min(self.judge_workers, len(active))) as ex:
                    judgements = list(ex.map(ask, range(len(active))))
            else:
                judgements = [ask(k) for k in range(len(active))]
            still = []
            for s, traj, st, j in zip(active, trajs, steps, judgements):
                if self._step(s, traj, rnd, st, j):
                    still.append(s)
                elif on_done is not None:
                    on_done(s.result)
            active = still
        return [s.result for s in states]

    def _step(self, s: _State, traj: Trajectory, rnd: int, steps: list[Step], j: Judgement) -> bool:
        """Apply the judgement of one trajectory; True when the problem continues with a hint."""
        res = s.result
        res.history.append(traj)
        ok = self.correct(s.problem, traj)
        res.correct_by_round.append(ok)
        res.intervener_retries += j.attempts - 1
        if j.verdict is None:
            res.outcome = "intervener_failure"
            res.interventions.append({"round": rnd, "error": j.error})
            return False
        v = j.verdict
        if v.flawless:
            res.golden, res.outcome = ok, "golden" if ok else "flawless_wrong"
            if ok:
                from storm_jax.sampling.rollout import trajectory_to_sft_row

                res.row = trajectory_to_sft_row(traj, level="token")
                res.row["calm"] = {"rounds": rnd, "interventions": list(res.interventions)}
            return False
        if len(res.interventions) >= self.max_interventions:
            res.outcome = "max_interventions"
            return False
        cut = steps[v.step - 1].start
        hint = self.hint_ids(v.hint)
        room = min(
            self.rollout_cfg.sampling.max_new_tokens, self.sampler.engine.max_len - len(s.prompt_ids) - 1
        )
        if cut + len(hint) >= room:  # the kept steps + hint leave no token to continue with
            res.outcome = "out_of_budget"
            return False
        s.prefix_ids = list(traj.response_ids[:cut]) + hint
        s.prefix_kinds = list(traj.kinds[:cut]) + [KIND_HINT] * len(hint)
        s.kept_executions = [e for e in traj.executions if e.end <= cut]
        res.interventions.append({"round": rnd, "step": v.step, "flaw": v.flaw, "hint": v.hint, "cut": cut,
                                  "hint_tokens": len(hint)})  # fmt: skip
        return True
