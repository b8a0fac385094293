"""The verifier: problem -> prompt; completion or trajectory -> answer -> correctness -> failure class.

Every consumer that turns model output into a verdict goes through here: GRPO rewards (storm_jax/train/grpo.py),
the pipeline's evaluation (storm_jax/pipeline.py) and the offline scorer (storm_jax/eval/scoring.py, which
handles text-only completions and re-executes their code there).

Answer sources (``answer_from``):
  ``boxed``      the final ``\\boxed{}`` of the response;
  ``execution``  the answer of the last program that ran (status ok) and printed an objective, looking at most
                 `max_blocks` programs back from the end;
  ``auto``       the boxed answer when there is one, else execution.

A trajectory whose code already ran in the rollout is verified from its *recorded* executions: nothing is run
again. (A code block the rollout did not execute, e.g. past the tool-call limit, counts as not run.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from storm_jax.eval.scoring import ANSWER_MODES, classify
from storm_jax.execution.answers import Answer
from storm_jax.rewards import DEFAULT_CONFIG, ScoringConfig, check_protocol, is_correct


def problem_messages(question: str, system_prompt: str = "") -> list[dict]:
    """The chat messages of a problem: an optional system prompt, then the question as the user turn."""
    sys_msg = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return sys_msg + [{"role": "user", "content": question}]


def problem_prompt_ids(
    tokenizer: Any, question: str, *, system_prompt: str = "", enable_thinking: bool = True
):
    """Prompt ids (generation prompt included) of a problem, as every rollout of the project renders it."""
    from storm_jax.tokenizer import encode_prompt

    return encode_prompt(
        tokenizer, problem_messages(question, system_prompt), enable_thinking=enable_thinking
    )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one trajectory (or completion) answered and how it was judged."""

    answer: Answer
    answer_source: str | None  # "boxed" | "execution" | None
    correct: bool
    failure: str | None  # one of storm_jax.eval.scoring.FAILURES, None when correct
    exec_status: str | None  # status of the last executed program
    answer_block: int | None  # index (among executions) of the program whose output gave the answer
    n_code_blocks: int


def _check_source(answer_from: str) -> None:
    if answer_from not in ANSWER_MODES:
        raise ValueError(f"answer_from={answer_from!r}: expected one of {', '.join(ANSWER_MODES)}")


def trajectory_answer(
    traj: Any, answer_from: str, max_blocks: int | None = None
) -> tuple[Answer, str | None, int | None]:
    """(answer, source, execution index) of a trajectory, from its boxed answer and recorded executions."""
    _check_source(answer_from)
    if answer_from in ("boxed", "auto") and traj.answer is not None:
        return traj.answer, "boxed", None
    if answer_from in ("execution", "auto"):
        execs = list(traj.executions)
        first = 0 if max_blocks is None else max(len(execs) - max_blocks, 0)
        for i in range(len(execs) - 1, first - 1, -1):
            if execs[i].status == "ok" and execs[i].answer is not None:
                return execs[i].answer, "execution", i
    return None, None, None


def verify_trajectory(
    traj: Any,
    truth: float | None,
    truth_status: str | None,
    *,
    protocol: str = "storm",
    answer_from: str = "auto",
    config: ScoringConfig = DEFAULT_CONFIG,
    max_blocks: int | None = None,
) -> Verdict:
    """The verdict of a rollout trajectory (storm_jax.sampling.rollout.Trajectory) against a ground truth."""
    check_protocol(protocol)
    answer, source, block = trajectory_answer(traj, answer_from, max_blocks)
    ok = is_correct(answer, truth, truth_status, protocol, config)
    n_code = sum(1 for s in traj.segments if s.kind == "code")
    exec_status = traj.executions[-1].status if traj.executions else None
    attempted = answer_from in ("execution", "auto") and source != "boxed"
    failure = classify(answer, ok, truth_status, n_code, exec_status, attempted)
    return Verdict(answer, source, ok, failure, exec_status, block, n_code)


def verify_trajectories(
    trajs: Sequence[Any], truths: Sequence[tuple[float | None, str | None]], **kw: Any
) -> list[Verdict]:
    """`verify_trajectory` over aligned trajectories and (truth, truth_status) pairs."""
    if len(trajs) != len(truths):
        raise ValueError(f"{len(trajs)} trajectories but {len(truths)} truths")
    return [verify_trajectory(t, a, s, **kw) for t, (a, s) in zip(trajs, truths)]
