"""Multi-turn rollouts with intervention hooks on top of the continuous-batching sampler.

Hooks (storm_jax.sampling.sampler.ToolHooks) pause a request, append host tokens and resume it from its cached
prefix. The code interpreter (`code_interpreter_hook`) is one; CALM's hint inserter and StepORLM's final-code
runner are others, passed to `rollout(..., hooks=[...])`. Every response token carries a span kind (`model`,
`tool_output`, `hint`) recorded when it was appended; the loss mask is derived from the kinds by
`RolloutConfig.loss_kinds`. A request may start from a token prefix with per-token kinds (`prefix_ids`,
`prefix_kinds`). `trajectory_to_sft_row` turns a trajectory into an SFT row at token level (ids and masks kept
exactly) or at segment level. The trajectory format itself is described in docs/architecture.md.

Code interpreter:

A request decodes until it closes a ```` ```python ```` block; it then pauses (its slot keeps decoding nothing,
or is lent to a queued request), the code goes to the executor, and when the result is back the host-written
output block is appended as ids (loss mask 0) and the request resumes from its cache: only the appended ids
are prefilled. Code of paused requests runs while the other slots keep decoding.

Output block shown to the model (`execution_output_text`): the program's stdout; when the status is not
`ok`/`no_answer`, stdout followed by the last `stderr_tail_chars` characters of stderr (the traceback's end
says what went wrong; the pool puts its own "[storm_jax sandbox: ... limit exceeded]" line there for
timeouts and memory). The whole body is then head+tail truncated to `max_output_chars` by
`storm_jax.data.format.output_segment`, and tokenized with `encode_segment` (host text: special-token text
stays plain bytes).

Token-in/token-out: `Trajectory.response_ids` are exactly the ids the model saw and wrote; segment texts are
decodes of their token spans (a token straddling a fence goes to the later segment).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from storm_jax.data.format import CODE_CLOSE, CODE_OPEN, Segment, output_segment
from storm_jax.execution.answers import Answer, answer_from_text
from storm_jax.models.qwen import ModelConfig, Params
from storm_jax.parallel.mesh import MeshRules
from storm_jax.sampling.requests import KIND_HINT, KIND_MODEL, KIND_TOOL_OUTPUT, SPAN_KINDS
from storm_jax.sampling.sampler import (
    EngineConfig,
    Request,
    Sampler,
    SamplingParams,
    Sequence_,
    ToolHooks,
)

#: Segment kind (storm_jax.data.format) of the host-written span kinds.
_SEGMENT_OF_KIND = {KIND_TOOL_OUTPUT: "output", KIND_HINT: "hint"}

#: First complete code block of the current model-written run (empty code allowed).
CODE_BLOCK_RE = re.compile(re.escape(CODE_OPEN) + r"(?:.*?\n)??```", re.DOTALL)


class Executor(Protocol):
    """What the rollout needs of an executor (storm_jax.execution.pool.ExecutionPool fits)."""

    def submit(self, code: str, *, timeout_s: float | None = None) -> cf.Future: ...


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling + tool-use limits of a rollout."""

    sampling: SamplingParams = SamplingParams()  # max_new_tokens = total response budget (model + output ids)
    tools: bool = True
    max_tool_calls: int = 12
    max_output_chars: int = 2000
    stderr_tail_chars: int = 1000
    exec_timeout_s: float | None = None  # None: the executor's default
    loss_kinds: tuple[str, ...] = (KIND_MODEL,)  # span kinds whose tokens carry loss (Trajectory.loss_mask)

    def __post_init__(self):
        bad = [k for k in self.loss_kinds if k not in SPAN_KINDS]
        if bad:
            raise ValueError(
                f"RolloutConfig.loss_kinds: unknown span kinds {bad} (known: {list(SPAN_KINDS)})"
            )


@dataclasses.dataclass
class RolloutRequest:
    """One prompt (ids, generation prompt included) to sample n times. `forced`: teacher-forced model ids.

    `prefix_ids` / `prefix_kinds`: the response so far (e.g. CALM's steps before a flaw plus a hint), kept
    exactly at the head of the trajectory; sampling continues after it."""

    prompt_ids: list[int]
    n: int = 1
    seed: int = 0
    forced: list[int] | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    prefix_ids: list[int] | None = None
    prefix_kinds: list[str] | None = None


@dataclasses.dataclass
class SegmentSpan:
    """A segment of the response and its token span [start, end) in `response_ids`."""

    kind: str  # text | code | output | hint
    text: str
    start: int
    end: int


@dataclasses.dataclass
class Execution:
    """One executed code block: what ran, how it went, what the model was shown and where."""

    code: str
    status: str
    stdout: str
    stderr: str
    answer: Answer
    duration_s: float
    returncode: int | None
    output_text: str  # the whole output block as appended (fences included)
    start: int  # token span of the output block in response_ids
    end: int


@dataclasses.dataclass
class Trajectory:
    """A finished sample. Lists indexed by response token share one length."""

    group: int  # index of its RolloutRequest
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]  # 1 where the token's kind is in RolloutConfig.loss_kinds (default: model-written)
    logprobs: list[float]  # sampler log-probs (the sampled distribution); 0 on masked ids
    logprobs_raw: list[float]  # log_softmax(logits)[id] at T=1, untruncated; 0 on masked ids
    segments: list[SegmentSpan]
    executions: list[Execution]
    answer: Answer  # last \boxed{} of model-written text (answers.answer_from_text)
    stop_reason: str  # eos | stop | max_tokens | max_tool_calls
    text: str  # decoded response
    meta: dict = dataclasses.field(default_factory=dict)
    kinds: list[str] = dataclasses.field(default_factory=list)  # span kind of every response token

    @property
    def num_tool_calls(self) -> int:
        return len(self.executions)

    def to_segments(self) -> list[Segment]:
        return [Segment(s.kind, s.text) for s in self.segments]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def execution_output_text(result: Any, stderr_tail_chars: int = 1000) -> str:
    """Body of the output block for an ExecutionResult (see module docstring)."""
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    body = result.stdout or ""
    if result.status not in ("ok", "no_answer") and result.stderr:
        tail = result.stderr[-stderr_tail_chars:] if stderr_tail_chars > 0 else ""
        body = body.rstrip("\n") + ("\n" if body.strip() else "") + tail
    return body


def make_decode(tokenizer) -> Callable[[list[int]], str]:
    """Exact decode (special tokens kept, no clean-up of spaces) of a HF tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(list(ids), skip_special_tokens=False)
    return lambda ids: tokenizer.decode(
        list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


def _code_of(block: str) -> str:
    body = block[len(CODE_OPEN) :]
    return body[: -len("```")].removesuffix("\n") if body.endswith("```") else body


def _segments(seq: Sequence_, decode) -> list[SegmentSpan]:
    """Split the response into text / code / output / hint spans from the span kinds and the code fences."""
    out: list[SegmentSpan] = []
    toks, kinds = seq.tokens, seq.kinds
    i = 0
    while i < len(toks):
        j = i
        while j < len(toks) and kinds[j] == kinds[i]:
            j += 1
        if kinds[i] != KIND_MODEL:
            out.append(SegmentSpan(_SEGMENT_OF_KIND[kinds[i]], decode(toks[i:j]), i, j))
        else:
            run = toks[i:j]
            ends_in_code = j < len(toks) or seq.info.get("last_turn_code", False)
            m = CODE_BLOCK_RE.search(decode(run)) if ends_in_code else None
            if m is not None:
                # largest k whose decode ends at or before the fence: the token holding the fence starts code
                k = 0
                while k < len(run) and len(decode(run[: k + 1])) <= m.start():
                    k += 1
                if k:
                    out.append(SegmentSpan("text", decode(run[:k]), i, i + k))
                out.append(SegmentSpan("code", decode(run[k:]), i + k, j))
            else:
                out.append(SegmentSpan("text", decode(run), i, j))
        i = j
    return out


def code_interpreter_hook(
    tokenizer, rollout_cfg: RolloutConfig, executor: Executor, executions: dict[int, list[Execution]]
) -> ToolHooks:
    """The code interpreter as an intervention hook: a closed ```python block runs in `executor`; its output
    block is appended (kind `tool_output`) and the record goes to `executions[seq.uid]`."""
    from storm_jax.tokenizer import encode_segment

    def on_pause(seq: Sequence_, block: str):
        calls = seq.info.setdefault("tool_calls", 0)
        if calls >= rollout_cfg.max_tool_calls:
            seq.info["last_turn_code"] = True
            return "max_tool_calls"
        seq.info["tool_calls"] = calls + 1
        code = _code_of(block)
        seq.info["code"] = code
        try:
            return executor.submit(code, timeout_s=rollout_cfg.exec_timeout_s)
        except Exception as e:  # noqa: BLE001 - a broken executor ends this sample, not the batch
            fut: cf.Future = cf.Future()
            fut.set_exception(e)
            return fut

    def on_result(seq: Sequence_, result: Any):
        body = execution_output_text(result, rollout_cfg.stderr_tail_chars)
        seg = output_segment(body, rollout_cfg.max_output_chars)
        ids = encode_segment(tokenizer, seg)
        start = len(seq.tokens)
        if isinstance(result, BaseException):
            fields = ("error", "", repr(result), None, 0.0, None)
        else:
            fields = (
                result.status,
                result.stdout,
                result.stderr,
                result.answer,
                result.duration_s,
                result.returncode,
            )
        ex = Execution(seq.info["code"], *fields, seg.text, start, start + len(ids))
        executions.setdefault(seq.uid, []).append(ex)
        return ids

    return ToolHooks(CODE_BLOCK_RE, on_pause, on_result, kind=KIND_TOOL_OUTPUT)


def rollout(
    params: Params,
    cfg: ModelConfig,
    tokenizer,
    requests: Sequence[RolloutRequest],
    rollout_cfg: RolloutConfig,
    executor: Executor | None,
    *,
    engine: EngineConfig | None = None,
    sampler: Sampler | None = None,
    mesh_rules: MeshRules | None = None,
    progress: Callable[[int], None] | None = None,
    hooks: Sequence[ToolHooks] = (),
) -> list[Trajectory]:
    """Sample every request n times with tool use; trajectories ordered by request, then sample.

    Pass a long-lived `sampler` (its cache is reused; set `sampler.params` after a weight update) or an
    `engine` config to build one. `executor` may be None only with `rollout_cfg.tools=False`. `hooks`: more
    intervention hooks beside the code interpreter (which `rollout_cfg.tools` switches on).
    """
    if rollout_cfg.tools and executor is None:
        raise ValueError("rollout with tools=True needs an executor")
    if sampler is None:
        sampler = Sampler(params, cfg, engine or EngineConfig(), mesh_rules=mesh_rules)
    else:
        sampler.params = params
    decode = make_decode(tokenizer)
    executions: dict[int, list[Execution]] = {}
    all_hooks = list(hooks)
    if rollout_cfg.tools:
        all_hooks.insert(0, code_interpreter_hook(tokenizer, rollout_cfg, executor, executions))
    reqs = [
        Request(
            r.prompt_ids,
            rollout_cfg.sampling,
            n=r.n,
            seed=r.seed,
            forced=r.forced,
            prefix=r.prefix_ids,
            prefix_kinds=r.prefix_kinds,
        )
        for r in requests
    ]
    groups = sampler.run(reqs, decode=decode, hooks=all_hooks or None, progress=progress)
    loss_kinds = frozenset(rollout_cfg.loss_kinds)
    out = []
    for r, group in zip(requests, groups):
        for seq in group:
            text = decode(seq.tokens)
            out.append(
                Trajectory(
                    group=seq.group,
                    sample_index=seq.sample_index,
                    prompt_ids=seq.prompt,
                    response_ids=seq.tokens,
                    loss_mask=[int(k in loss_kinds) for k in seq.kinds],
                    logprobs=seq.logprobs_sampling,
                    logprobs_raw=seq.logprobs_raw,
                    segments=_segments(seq, decode),
                    executions=executions.get(seq.uid, []),
                    answer=answer_from_text(text),
                    stop_reason=seq.stop_reason,
                    text=text,
                    meta=dict(r.meta),
                    kinds=list(seq.kinds),
                )
            )
    return out


def trajectory_to_sft_row(
    traj: Trajectory,
    *,
    level: str = "token",
    messages: Sequence[dict] | None = None,
    loss_kinds: Sequence[str] | None = None,
) -> dict:
    """An SFT row (storm_jax.data.sft reads both levels) from a trajectory.

    level="token": {"prompt_ids", "response_ids", "loss_mask", "kinds"} with the ids exactly as sampled (no
    re-tokenization: token-in/token-out through SFT); the mask is the trajectory's, or recomputed from
    `loss_kinds`. level="segment": {"messages", "segments"} (text), which SFT re-tokenizes segment by segment;
    `messages` (the prompt conversation, ending with the user turn) is required there.
    """
    if level == "token":
        mask = traj.loss_mask
        if loss_kinds is not None:
            keep = frozenset(loss_kinds)
            mask = [int(k in keep) for k in traj.kinds]
        row = {
            "prompt_ids": list(traj.prompt_ids),
            "response_ids": list(traj.response_ids),
            "loss_mask": list(mask),
            "kinds": list(traj.kinds),
        }
    elif level == "segment":
        if not messages:
            raise ValueError("a segment-level SFT row needs the prompt `messages`")
        row = {"messages": [dict(m) for m in messages], "segments": [s.to_json() for s in traj.to_segments()]}
    else:
        raise ValueError(f"level must be 'token' or 'segment', got {level!r}")
    for key in ("id", "answer"):
        if key in traj.meta:
            row[key] = traj.meta[key]
    return row


__all__ = [
    "CODE_BLOCK_RE",
    "CODE_CLOSE",
    "Execution",
    "Executor",
    "RolloutConfig",
    "RolloutRequest",
    "SegmentSpan",
    "Trajectory",
    "code_interpreter_hook",
    "execution_output_text",
    "make_decode",
    "rollout",
    "trajectory_to_sft_row",
]
