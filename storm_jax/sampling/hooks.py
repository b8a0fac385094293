"""Intervention hooks of multi-turn generation, and the feed a long-lived caller admits requests through.

A hook pauses a sequence when its pattern matches the model's current run, appends host tokens of a named
span kind (tool output, a hint) and lets the sequence resume from its cached prefix; see `ToolHooks`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from storm_jax.sampling.requests import KIND_TOOL_OUTPUT, HostTokens, Request, Sequence_


@dataclasses.dataclass
class ToolHooks:
    """An intervention hook of multi-turn generation: pause a sequence, append host tokens, resume.

    The code interpreter is one implementation (storm_jax.sampling.rollout); a hint inserter is another.
    pause_regex: when it matches the decoded text of the current model-written run (and `enabled(seq)`, if
    given, is true), the sequence pauses at the token completing the first match. on_pause(seq, match_text)
    returns one of
      * a Future: the sequence waits (its slot may be lent out); the future's result, or its exception, goes
        to on_result(seq, result), which returns the ids to append (or HostTokens, or a stop-reason string);
      * ids (a list) or HostTokens: appended at once, and the sequence resumes from its cached prefix;
      * a string: the stop reason to finish with.
    Appended ids get span kind `kind` (a HostTokens result carries its own), loss mask 0 and log-prob 0. When
    several hooks match in one chunk, the earliest match wins.
    """

    pause_regex: re.Pattern
    on_pause: Callable[[Sequence_, str], Any]
    on_result: Callable[[Sequence_, Any], Any] | None = None
    kind: str = KIND_TOOL_OUTPUT
    enabled: Callable[[Sequence_], bool] | None = None

    def __post_init__(self):
        HostTokens((), self.kind)  # validates the kind


class Feed(Protocol):
    """A source of requests for a long-lived `Sampler.run` (a server's engine loop, storm_jax.serve.engine).

    run(feed=...) polls it at the top of every scheduling round, i.e. between decode chunks, on the thread
    running run(). poll(idle) returns the requests to add now ([] for none) or None to end run() at once
    (unfinished sequences are left as they are); `idle` is true when no sequence is queued, running or paused,
    so poll may block until work arrives. started(requests, groups) hands over the Sequence_ objects created
    for the requests just added (groups[i]: the n samples of requests[i]); their tokens grow in place, so the
    feed sees new tokens and finished sequences at its next poll. Setting `seq.cancelled` (from the feed,
    during poll) finishes that sample with stop reason "cancelled" before the next chunk and frees its slot.
    """

    def poll(self, idle: bool) -> Sequence[Request] | None: ...

    def started(self, requests: Sequence[Request], groups: list[list[Sequence_]]) -> None: ...


def _append_host(seq: Sequence_, res: Any, kind: str) -> None:
    """Append host-written ids (a list or HostTokens) to `seq`; the next model-written run starts after them."""
    if isinstance(res, HostTokens):
        ids, kind = list(res.ids), res.kind
    else:
        ids = [int(t) for t in res]
    seq.tokens += ids
    seq.kinds += [kind] * len(ids)
    seq.loss_mask += [0] * len(ids)
    seq.logprobs_raw += [0.0] * len(ids)
    seq.logprobs_sampling += [0.0] * len(ids)
    seq.turn_start = len(seq.tokens)


def _first_prefix(tokens: list[int], decode, pred) -> int:
    """Smallest k with pred(decode(tokens[:k])) (pred is monotone in k and true for k = len(tokens))."""
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(decode(tokens[:mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo
