"""What a sampling request is: its parameters, the engine's shapes and the host state of one sample.

Plain data shared by the jitted engine (storm_jax.sampling.engine), the host scheduler
(storm_jax.sampling.sampler) and the rollout loop (storm_jax.sampling.rollout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

MAX_EOS = 8  # eos ids per request (padded with -1): a fixed shape keeps decode_chunk compiled once

# Span kinds of response tokens, recorded when the tokens are appended. The model writes MODEL tokens (sampled
# or teacher-forced); the host appends TOOL_OUTPUT (execution results) and HINT (an intervener's hint) tokens.
# Which kinds carry loss is a config choice of the consumer (RolloutConfig.loss_kinds), not fixed here.
KIND_MODEL = "model"
KIND_TOOL_OUTPUT = "tool_output"
KIND_HINT = "hint"
SPAN_KINDS: tuple[str, ...] = (KIND_MODEL, KIND_TOOL_OUTPUT, KIND_HINT)

# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request is sampled. temperature <= 0 means greedy.

    max_new_tokens bounds the whole response (model-written plus host-appended tokens). Truncation order as in
    transformers: temperature, then top-k, then top-p (on the top-k-renormalised distribution), then min-p.
    Stops: an id in `eos_ids` (kept in the output), a token sequence of `stop_token_seqs` or a string of
    `stop_strings` (kept: generation ends with the token that completes it).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 256
    eos_ids: tuple[int, ...] = ()
    stop_token_seqs: tuple[tuple[int, ...], ...] = ()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.eos_ids) > MAX_EOS:
            raise ValueError(f"at most {MAX_EOS} eos ids, got {len(self.eos_ids)}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.min_p < 0 or self.max_new_tokens < 1:
            raise ValueError("top_k and min_p must be >= 0 and max_new_tokens >= 1")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Shapes of the sampler: these (and the model config) are all that compilation depends on."""

    num_slots: int = 8
    max_len: int = 2048  # cache positions per slot: prompt + response must fit
    chunk_size: int = 32  # decode steps per device call
    min_bucket: int = 16  # prefill lengths are padded to powers of two from here ...
    max_bucket: int = 512  # ... up to here; longer prefills run in pieces of this size
    max_prefill_batch: int = 8  # slots prefilled per call (padded to a power of two)
    evict_paused: bool = True  # a paused request gives its slot to a queued one (re-prefilled on resume)
    # Attention reads only the first `window` cache positions: the smallest 2^k or 1.5 * 2^k >= min_window that
    # covers the longest running row (one compiled decode per window size, two per doubling of the length:
    # a window overshoots by 25 % at most, 17 % on average); min_window >= max_len turns this off.
    min_window: int = 128
    # Per-layer weight arrays (Python loop over layers) instead of the stacked scan: faster decode on CPU at the
    # price of one copy of the layer weights (see models.qwen.unstack_layers).
    unstack_layers: bool = True

    def window(self, needed: int) -> int:
        """Attention window covering `needed` cache positions."""
        p = _pow2_at_least(needed, 1 << 62)
        size = 3 * p // 4 if p >= 4 and 3 * p // 4 >= needed else p
        return min(self.max_len, max(self.min_window, size))

    def buckets(self) -> list[int]:
        out, b = [], self.min_bucket
        while b < self.max_bucket:
            out.append(b)
            b *= 2
        return out + [self.max_bucket]


@dataclasses.dataclass
class Request:
    """One prompt to sample `n` times.

    `forced` (optional) is a stream of model-written ids the sampler emits instead of sampling (teacher-forced
    generation for tests and replays); after it runs out, sampling resumes.
    `prefix` (optional) is the start of the response, already decided: ids prefilled with the prompt and kept at
    the head of `Sequence_.tokens`, each with its kind from `prefix_kinds` (default all KIND_MODEL). CALM uses
    it to continue a trajectory from the steps before a flaw plus an inserted hint. Prefix ids get log-prob 0
    (they were not sampled in this run) and do not advance the random stream.
    """

    prompt: Sequence[int]
    params: SamplingParams = SamplingParams()
    n: int = 1
    seed: int = 0
    forced: Sequence[int] | None = None
    prefix: Sequence[int] | None = None
    prefix_kinds: Sequence[str] | None = None


@dataclasses.dataclass(frozen=True)
class HostTokens:
    """Ids the host appends to a paused sequence before it resumes, and their span kind."""

    ids: tuple[int, ...]
    kind: str = KIND_TOOL_OUTPUT

    def __post_init__(self):
        if self.kind == KIND_MODEL or self.kind not in SPAN_KINDS:
            raise ValueError(f"host tokens need a host kind ({', '.join(SPAN_KINDS[1:])}), got {self.kind!r}")


@dataclasses.dataclass
class Sequence_:
    """Host state of one sample (request index `group`, sample `sample_index`) while and after it runs."""

    uid: int
    group: int
    sample_index: int
    prompt: list[int]
    params: SamplingParams
    key: np.ndarray  # uint32[2]
    forced: list[int] | None = None
    tokens: list[int] = dataclasses.field(default_factory=list)  # response ids (model + host)
    loss_mask: list[int] = dataclasses.field(default_factory=list)  # 1 = KIND_MODEL, 0 = host-written
    kinds: list[str] = dataclasses.field(default_factory=list)  # span kind of every response token
    logprobs_raw: list[float] = dataclasses.field(default_factory=list)
    logprobs_sampling: list[float] = dataclasses.field(default_factory=list)
    n_model: int = 0  # model-written tokens so far (rng step, forced cursor)
    turn_start: int = 0  # index in `tokens` where the current model-written run began
    status: str = "queued"  # queued | running | paused | done
    slot: int | None = None
    cached: int = 0  # positions of prompt+tokens present in the slot's cache
    stop_reason: str | None = None
    future: Any = None  # pending tool call
    info: dict = dataclasses.field(default_factory=dict)  # free for hooks (rollout bookkeeping)
    cancelled: bool = False  # set by a sampler.Feed: ends the sample ("cancelled") before the next chunk

    @property
    def full(self) -> list[int]:
        return self.prompt + self.tokens

    def turn_tokens(self) -> list[int]:
        return self.tokens[self.turn_start :]


def _pow2_at_least(n: int, cap: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return min(p, cap)


def sequence_key(seed: int, sample_index: int) -> np.ndarray:
    """uint32[2] base key of sample `sample_index` of a request with `seed`."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), sample_index)
    return np.asarray(jax.device_get(key), np.uint32)
