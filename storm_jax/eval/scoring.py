r"""Scoring samples: the answer of each completion (boxed and/or executed code), its verdict and failure.

Answer sources (``answer_from``):
  ``boxed``      the final ``\boxed{}`` (see `storm_jax.execution.answers`); nothing is executed;
  ``execution``  the completion's ```python blocks are executed, last block first; the answer is that of
                 the last block that ran (status ok) and printed an objective; at most `max_blocks` blocks
                 are tried, from the end;
  ``auto``       the boxed answer when there is one, else execution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Protocol

from storm_jax.data import benchmarks as bm
from storm_jax.eval.completions import Completion
from storm_jax.execution.answers import Answer, answer_from_text, python_blocks
from storm_jax.rewards import DEFAULT_CONFIG, ScoringConfig, check_protocol, is_correct

ANSWER_MODES = ("boxed", "execution", "auto")
FAILURES = (
    "no_code",
    "code_error",
    "timeout",
    "infeasible_answer",
    "wrong_objective",
    "parse_failure",
    "unknown_truth",
)
ERROR_STATUSES = ("error", "memory", "killed")

#: Revision of the rules that turn a completion into a verdict (answer extraction, protocols). It is part
#: of every result's input hash, so bumping it makes a rerun rescore results stored by an older scorer
#: instead of reusing them. 2: digit groups in boxes, ambiguous boxes, ORLM's integer rounding.
SCORER_REVISION = 2


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """The scored outcome of one completion (one line of samples.jsonl)."""

    id: str
    sample_index: int
    dataset: str
    answer: float | str | None
    answer_source: str | None  # "boxed" | "execution" | None
    correct: bool
    failure: str | None
    exec_status: str | None  # status of the completion's last code block, if executed
    answer_block: int | None  # index of the code block whose output gave the answer
    n_code_blocks: int
    duration_s: float  # execution time spent on this sample (0 for boxed answers)
    input_sha256: str | None = None  # `input_hash` of what was scored (None: written by an older scorer)

    def to_json(self) -> dict:
        """The result as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> SampleResult:
        """The inverse of `to_json`; a field with a default may be absent (lines of older runs)."""
        kw = {}
        for f in dataclasses.fields(SampleResult):
            if f.name in d:
                kw[f.name] = d[f.name]
            elif f.default is dataclasses.MISSING:
                raise KeyError(f.name)
        return SampleResult(**kw)


def input_hash(row: bm.BenchmarkRow, c: Completion) -> str:
    """sha256 of everything a verdict depends on besides the run settings: the completion row, the truth
    it is judged against and `SCORER_REVISION`. A stored result is reused only under the same hash."""
    payload = {
        "scorer_revision": SCORER_REVISION,
        "id": c.id,
        "sample_index": c.sample_index,
        "completion": c.completion,
        "truth": row.answer,
        "truth_status": row.answer_status,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class _ExecResult(Protocol):
    status: str
    answer: Answer


class Executor(Protocol):
    """What the scorer needs from an execution pool."""

    def map(self, codes: Sequence[str]) -> list[_ExecResult]: ...


def effective_options(answer_from: str, max_blocks: int) -> tuple[str, int | None]:
    """(answer source, code blocks tried) as they take effect; these, not the requested ones, are recorded.

    ``boxed`` executes nothing, so the block count plays no part (None). ``max_blocks=0`` executes nothing
    either, so ``auto`` becomes ``boxed``; with ``execution`` no sample could get an answer: an error.
    """
    if answer_from not in ANSWER_MODES:
        raise ValueError(f"unknown answer source {answer_from!r}; known: {', '.join(ANSWER_MODES)}")
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 0:
        raise ValueError(f"max_blocks must be a non-negative integer, got {max_blocks!r}")
    if answer_from == "boxed" or (answer_from == "auto" and max_blocks == 0):
        return "boxed", None
    if max_blocks == 0:
        raise ValueError(
            "max_blocks=0 with answer_from='execution' executes no code, so nothing could be scored"
        )
    return answer_from, max_blocks


def classify(
    answer: Answer,
    correct: bool,
    truth_status: str | None,
    n_code_blocks: int,
    exec_status: str | None,
    attempted_execution: bool,
) -> str | None:
    """The failure category of one sample (None when correct)."""
    if correct:
        return None
    if truth_status == "unknown":
        return "unknown_truth"
    if answer is None:
        if attempted_execution:
            if n_code_blocks == 0:
                return "no_code"
            if exec_status == "timeout":
                return "timeout"
            if exec_status in ERROR_STATUSES:
                return "code_error"
        return "parse_failure"
    if isinstance(answer, str):
        return "infeasible_answer"
    return "wrong_objective"


def score_samples(
    items: Sequence[tuple[bm.BenchmarkRow, Completion]],
    protocol: str = "strict",
    answer_from: str = "auto",
    executor: Executor | None = None,
    config: ScoringConfig = DEFAULT_CONFIG,
    max_blocks: int = 3,
) -> list[SampleResult]:
    """Score (row, completion) pairs; code runs through `executor.map` (needed unless answer_from="boxed")."""
    check_protocol(protocol)
    if answer_from not in ANSWER_MODES:
        raise ValueError(f"unknown answer source {answer_from!r}; known: {', '.join(ANSWER_MODES)}")
    n = len(items)
    exec_seconds = [0.0] * n
    answers: list[Answer] = [None] * n
    sources: list[str | None] = [None] * n
    blocks = [python_blocks(c.completion) for _, c in items]
    exec_status: list[str | None] = [None] * n
    answer_block: list[int | None] = [None] * n
    attempted = [False] * n
    pending: list[int] = []
    for i, (_, c) in enumerate(items):
        if answer_from in ("boxed", "auto"):
            a = answer_from_text(c.completion)
            if a is not None:
                answers[i], sources[i] = a, "boxed"
                continue
        if answer_from in ("execution", "auto"):
            attempted[i] = True
            if blocks[i]:
                pending.append(i)
    # Round r runs block len-1-r of every sample still without an answer: all samples run in parallel.
    for r in range(max_blocks):
        jobs = [i for i in pending if len(blocks[i]) - 1 - r >= 0]
        if not jobs:
            break
        if executor is None:
            raise ValueError("code must be executed but no executor was given")
        results = executor.map([blocks[i][len(blocks[i]) - 1 - r] for i in jobs])
        still = []
        for i, res in zip(jobs, results):
            exec_seconds[i] += float(getattr(res, "duration_s", 0.0) or 0.0)
            if r == 0:
                exec_status[i] = res.status
            if res.status == "ok" and res.answer is not None:
                answers[i], sources[i] = res.answer, "execution"
                answer_block[i] = len(blocks[i]) - 1 - r
            else:
                still.append(i)
        pending = still
    out = []
    for i, (row, c) in enumerate(items):
        ok = is_correct(answers[i], row.answer, row.answer_status, protocol, config)
        failure = classify(answers[i], ok, row.answer_status, len(blocks[i]), exec_status[i], attempted[i])
        out.append(
            SampleResult(
                id=c.id,
                sample_index=c.sample_index,
                dataset=row.dataset,
                answer=answers[i],
                answer_source=sources[i],
                correct=ok,
                failure=failure,
                exec_status=exec_status[i],
                answer_block=answer_block[i],
                n_code_blocks=len(blocks[i]),
                duration_s=round(exec_seconds[i], 6),
                input_sha256=input_hash(row, c),
            )
        )
    return out
