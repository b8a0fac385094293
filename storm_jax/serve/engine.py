"""A long-lived sampling engine: one background thread owns a `Sampler` and keeps it running.

Clients (the HTTP server's handlers, the eval harness) call `Engine.submit(request)` from any thread and get
a `Job`. The engine thread runs `Sampler.run(feed=self)` forever; between decode chunks the sampler polls the
engine (`Feed.poll`), which then

1. publishes what the last chunk produced into each job (`SampleState`: tokens, log-probs, kinds, stop
   reason, executed code) and calls the job's `on_update` callback;
2. marks the samples of cancelled jobs (a client that went away) so the sampler frees their slots;
3. hands over waiting requests while there are free slots (a request whose n samples do not fit waits,
   first come first served; an idle engine admits any request), so at most `max_queue` requests wait here
   and a full queue refuses new ones (`QueueFull`, HTTP 429).

Concurrent requests therefore share the continuous batch, and the n samples of one request share its
prefill (the sampler copies the prompt's cache rows). With `tools=True` the code interpreter
(`storm_jax.sampling.rollout.code_interpreter_hook`) runs inside the loop: a closed ```python block pauses
its sample, the execution pool runs it, and the output block is appended before the sample resumes.

Only the engine thread touches the sampler and the `Sequence_` objects; other threads read a job's
published state under its lock (`Job.snapshot`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from storm_jax.models.qwen import ModelConfig, Params
from storm_jax.sampling.requests import Request, Sequence_
from storm_jax.sampling.rollout import Execution, RolloutConfig, code_interpreter_hook, make_decode
from storm_jax.sampling.sampler import EngineConfig, Sampler

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The engine's queue of waiting requests is full (the server answers 429)."""


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Engine shapes, admission and tool-use settings."""

    num_slots: int = 16
    max_len: int = 4096  # cache positions per slot: prompt + response
    chunk_size: int = 32  # decode steps between two scheduling rounds
    max_queue: int | None = 64  # requests waiting for a slot; None: unbounded (the eval harness)
    # When an idle engine gets a request it waits until no other one arrived for this long before the first
    # prefill, so clients that arrive together start in one batch instead of one chunk apart.
    gather_s: float = 0.01
    tools: bool = False  # run the code interpreter on ```python blocks
    max_tool_calls: int = 15  # per sample (docs/design.md: 15 in evaluation)
    max_output_chars: int = 2000
    exec_timeout_s: float | None = None  # None: the pool's default

    def engine_config(self) -> EngineConfig:
        """The sampler's shape config."""
        return EngineConfig(
            num_slots=self.num_slots,
            max_len=self.max_len,
            chunk_size=self.chunk_size,
            max_bucket=min(512, max(16, self.max_len)),
        )


@dataclasses.dataclass
class SampleState:
    """What a client sees of one sample: the response so far (model and host tokens)."""

    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)  # log_softmax at T=1; 0 on host tokens
    kinds: list[str] = dataclasses.field(default_factory=list)
    turn_start: int = 0  # index where the last model-written run began (stop strings are searched there)
    done: bool = False
    stop_reason: str | None = None  # eos | stop | max_tokens | max_tool_calls | cancelled | error
    executions: list[Execution] = dataclasses.field(default_factory=list)

    def copy(self) -> SampleState:
        return dataclasses.replace(
            self,
            tokens=list(self.tokens),
            logprobs=list(self.logprobs),
            kinds=list(self.kinds),
            executions=list(self.executions),
        )


class Job:
    """One submitted request: the state of its n samples as the engine thread last published it."""

    def __init__(self, request: Request, on_update: Callable[[Job], None] | None = None, meta: Any = None):
        self.request = request
        self.meta = meta  # free for the caller (the eval harness keeps its problem here)
        self.samples = [SampleState() for _ in range(request.n)]
        self.error: str | None = None
        self.submitted_at = time.monotonic()
        self._on_update = on_update
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancel = False
        self._seqs: list[Sequence_] | None = None  # engine thread only

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every sample finished (or the job failed); False on timeout."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Ask the engine to stop this job's samples (frees their slots before the next chunk)."""
        self._cancel = True

    def snapshot(self) -> list[SampleState]:
        """A consistent copy of every sample's state."""
        with self._lock:
            return [s.copy() for s in self.samples]

    def _notify(self) -> None:
        if self._on_update is not None:
            try:
                self._on_update(self)
            except Exception:  # noqa: BLE001 - a client's callback must not stop the engine
                log.exception("job update callback failed")

    def _fail(self, message: str) -> None:
        with self._lock:
            self.error = message
            for s in self.samples:
                if not s.done:
                    s.done, s.stop_reason = True, "error"
        self._done.set()
        self._notify()


class Engine:
    """The engine thread and its queue (see the module docstring). Use as a context manager or `close()`."""

    def __init__(
        self,
        params: Params,
        cfg: ModelConfig,
        tokenizer: Any,
        options: EngineOptions = EngineOptions(),
        executor: Any = None,
    ):
        if options.tools and executor is None:
            raise ValueError("an engine with tools=True needs an executor (storm_jax.execution.pool)")
        self.options, self.cfg, self.tokenizer = options, cfg, tokenizer
        self.sampler = Sampler(params, cfg, options.engine_config())
        self.decode = make_decode(tokenizer)
        self._executions: dict[int, list[Execution]] = {}
        self._hooks = None
        if options.tools:
            rc = RolloutConfig(
                max_tool_calls=options.max_tool_calls,
                max_output_chars=options.max_output_chars,
                exec_timeout_s=options.exec_timeout_s,
            )
            self._hooks = [code_interpreter_hook(tokenizer, rc, executor, self._executions)]
        self._cond = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []  # handed to the sampler, not done (engine thread only)
        self._stop = False
        self.stats = {
            "requests": 0,
            "rejected": 0,
            "cancelled_samples": 0,
            "finished_samples": 0,
            "generated_tokens": 0,  # model-written tokens published
            "running_samples": 0,  # samples holding a decode slot at the last round
            "live_samples": 0,  # samples handed to the sampler and not finished
            "errors": 0,
        }
        self._thread = threading.Thread(target=self._loop, name="storm-serve-engine", daemon=True)
        self._thread.start()

    # -- client side (any thread) --------------------------------------------------------------------------

    def submit(
        self, request: Request, on_update: Callable[[Job], None] | None = None, meta: Any = None
    ) -> Job:
        """Queue a request; raises QueueFull when `max_queue` requests already wait, ValueError if it cannot
        fit the cache."""
        if len(request.prompt) == 0:
            raise ValueError("empty prompt")
        if len(request.prompt) + 1 > self.options.max_len:
            raise ValueError(
                f"prompt of {len(request.prompt)} tokens does not fit max_len={self.options.max_len}"
            )
        job = Job(request, on_update, meta)
        with self._cond:
            if self._stop:
                raise RuntimeError("engine is closed")
            mq = self.options.max_queue
            if mq is not None and len(self._pending) >= mq:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._pending)} requests are waiting (max_queue={mq}); retry later")
            self._pending.append(job)
            self.stats["requests"] += 1
            self._cond.notify_all()
        return job

    def health(self) -> dict[str, Any]:
        """Counters for /health: slots, running and waiting work, totals."""
        with self._cond:
            waiting = len(self._pending)
        return {
            "slots": self.options.num_slots,
            "waiting_requests": waiting,
            "max_queue": self.options.max_queue,
            "tools": self.options.tools,
            "engine_alive": self._thread.is_alive(),
            **self.stats,
        }

    def close(self, timeout: float = 30.0) -> None:
        """Stop the engine thread; unfinished jobs fail with 'engine closed'."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        for job in list(self._pending) + list(self._active):
            job._fail("engine closed")
        self._pending.clear()
        self._active.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- engine thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            try:
                self.sampler.run([], decode=self.decode, hooks=self._hooks, feed=self)
            except Exception as e:  # noqa: BLE001 - fail the jobs in flight, keep serving
                log.exception("engine loop failed")
                self.stats["errors"] += 1
                for job in self._active:
                    job._fail(f"engine error: {type(e).__name__}: {e}")
                self._active.clear()
                self._executions.clear()  # uids restart with the next run()

    def poll(self, idle: bool) -> Sequence[Request] | None:
        """Feed.poll: publish, cancel, admit (see the module docstring)."""
        self._publish()
        with self._cond:
            if idle and not self._pending and not self._stop:
                self._cond.wait(0.1)  # nothing to do: sleep until a request arrives (or re-poll)
                # Requests that arrive together start together: keep gathering while they keep coming (until
                # gather_s passes without an arrival, 5 x gather_s at most).
                end = time.monotonic() + 5 * self.options.gather_s
                while self._pending and not self._stop and (left := end - time.monotonic()) > 0:
                    seen = len(self._pending)
                    more = self._cond.wait_for(
                        lambda seen=seen: self._stop or len(self._pending) > seen,
                        min(self.options.gather_s, left),
                    )
                    if not more:
                        break
            if self._stop:
                return None
            for job in [j for j in self._pending if j._cancel]:
                self._pending.remove(job)
                job._fail("cancelled")
                self.stats["cancelled_samples"] += job.request.n
            live = sum(1 for j in self._active for s in (j._seqs or ()) if s.status not in ("done", "paused"))
            take: list[Job] = []
            while self._pending:
                n = self._pending[0].request.n
                if live + n > self.options.num_slots and (live or take):
                    break
                take.append(self._pending.popleft())
                live += n
        self._active += take
        return [j.request for j in take]

    def started(self, requests: Sequence[Request], groups: list[list[Sequence_]]) -> None:
        """Feed.started: remember the sequences of the jobs just handed over (same order as poll's)."""
        jobs = self._active[len(self._active) - len(groups) :]
        for job, group in zip(jobs, groups):
            job._seqs = group

    def _publish(self) -> None:
        """Copy new tokens and finished states into the jobs; cancel what clients gave up on."""
        running = live = 0
        still: list[Job] = []
        for job in self._active:
            seqs = job._seqs or []
            changed = False
            with job._lock:
                for seq, st in zip(seqs, job.samples):
                    if job._cancel and seq.status != "done":
                        seq.cancelled = True
                    n_old = len(st.tokens)
                    if len(seq.tokens) < n_old:  # never expected (stops cut only unpublished tokens)
                        st.tokens, st.logprobs, st.kinds = [], [], []
                        n_old = 0
                    if len(seq.tokens) > n_old:
                        st.tokens += seq.tokens[n_old:]
                        st.logprobs += seq.logprobs_raw[n_old:]
                        st.kinds += seq.kinds[n_old:]
                        self.stats["generated_tokens"] += sum(seq.loss_mask[n_old:])
                        changed = True
                    st.turn_start = seq.turn_start
                    ex = self._executions.get(seq.uid, ())
                    if len(ex) > len(st.executions):
                        st.executions = list(ex)
                        changed = True
                    if seq.status == "done" and not st.done:
                        st.done, st.stop_reason = True, seq.stop_reason
                        self._executions.pop(seq.uid, None)
                        key = "cancelled_samples" if seq.stop_reason == "cancelled" else "finished_samples"
                        self.stats[key] += 1
                        changed = True
                    elif seq.status != "done":
                        live += 1
                        running += seq.slot is not None and seq.status == "running"
                all_done = bool(seqs) and all(st.done for st in job.samples)
            if all_done:
                job._done.set()
            else:
                still.append(job)
            if changed:
                job._notify()
        self._active[:] = still
        self.stats["running_samples"], self.stats["live_samples"] = running, live


__all__ = ["Engine", "EngineOptions", "Job", "QueueFull", "SampleState"]
