"""Jitted sampler with continuous batching over a preallocated KV cache.

Layout. The device holds the KV cache of `num_slots` rows ([layers, slots, kv_heads, max_len, head_dim], sharded
like the model's cache); the host holds everything small (which request sits in which slot, the filled length
of every row, sampling parameters) as numpy arrays and passes them in with each call, so a scheduling decision
never needs a device round trip of its own.

Invariant of a decoding slot: the cache holds every token of its sequence but the last, the last one is the
*pending* token. One decode step feeds the pending tokens of all slots at their lengths, samples the next token
of every slot from the returned logits, and makes it the new pending token. `decode_chunk` runs `chunk_size`
such steps on device in a `lax.while_loop` (leaving early when every slot is done), so the host only acts
between chunks: it admits queued requests into free slots (prefill), detects stop strings and tool calls in
the newly decoded text, truncates what a slot generated past a stop, pauses and resumes requests.

Prefill writes the tokens of a sequence that are not yet in its slot's cache (all but the last) at the slot's
length: a whole prompt for a new request, only the appended tool output for a resumed one. Prompts are
right-padded to a few bucket lengths (and groups of slots to a few batch sizes) so steady state never
recompiles. n samples of one prompt share its prefill: later samples copy the cache rows of a slot that holds
the prompt (`_copy_rows`) instead of recomputing it.

Decode speed (measured on CPU, where every copy shows; see bench/sampler.py). The weights are decoded in a
"decode layout" (`Sampler.params`): per-layer arrays instead of the stacked ones (XLA copies a layer's weights
out of a stacked array inside a loop before using them) and, for an untied head, a [V, D] copy of the vocabulary
projection. Each chunk attends to a window of the cache, the smallest 2^k or 1.5 * 2^k >= `min_window` covering
every running row's length + chunk_size: the window is copied out of the cache once per chunk as one array per
layer (keys transposed to [B, K, hd, W], see KVCache.keys_transposed), decoded on in place, and written back, so
attention cost follows the longest live sequence, not max_len.
Logits are computed vocabulary-first ([V, B], XLA's fastest form of the projection) and the greedy token and
log-sum-exp come from a blocked reduction instead of argmax (a slow variadic reduction on CPU).

Randomness: token i of a sequence (i counts model-written tokens) is drawn with
`fold_in(fold_in(PRNGKey(seed), sample_index), i)`, so a result depends on its seed only, not on which slot it
ran in or what else was in the batch.

Log-probs returned per model-written token: `logprobs_raw` = log_softmax(logits)[tok] (temperature 1, no
truncation: what GRPO's old policy needs) and `logprobs_sampling` = the log-prob under the distribution actually
sampled from (temperature, top-k, top-p, min-p applied and renormalised; 0 for greedy). Host-appended tokens
(tool output) get 0 in both and loss-mask 0.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from storm_jax.models.qwen import (
    CACHE_LOGICAL_AXES,
    KVCache,
    ModelConfig,
    Params,
    cache_shape,
    forward,
    unstack_layers,
)
from storm_jax.parallel.mesh import MeshRules

MAX_EOS = 8  # eos ids per request (padded with -1): a fixed shape keeps decode_chunk compiled once


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
    """One prompt to sample `n` times. `forced` (optional) is a stream of model-written ids the sampler emits
    instead of sampling (teacher-forced generation for tests and replays); after it runs out, sampling resumes."""

    prompt: Sequence[int]
    params: SamplingParams = SamplingParams()
    n: int = 1
    seed: int = 0
    forced: Sequence[int] | None = None


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
    loss_mask: list[int] = dataclasses.field(default_factory=list)
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

    @property
    def full(self) -> list[int]:
        return self.prompt + self.tokens

    def turn_tokens(self) -> list[int]:
        return self.tokens[self.turn_start :]


# ----------------------------------------------------------------------------------------------------------------
# Sampling math (pure, jitted inside decode_chunk; tested on its own)
# ----------------------------------------------------------------------------------------------------------------


def processed_logprobs(logits, temperature, top_k, top_p, min_p):
    """Log-probs [B, V] of the distribution sampled from: logits/T, then top-k, top-p, min-p, renormalised.

    Greedy rows (T <= 0) get the T=1 distribution here (the caller takes the argmax). Ties at a truncation
    threshold are all kept.
    """
    logits = logits.astype(jnp.float32)
    V = logits.shape[-1]
    t = jnp.where(temperature > 0, temperature, 1.0)
    x = logits / t[:, None]
    need = jnp.any((top_k > 0) | (top_p < 1.0) | (min_p > 0.0))

    def truncate(x):
        srt = -jnp.sort(-x, axis=-1)  # descending
        k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
        kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)  # [B,1]
        srt_k = jnp.where(jnp.arange(V)[None, :] < k[:, None], srt, -jnp.inf)
        p = jax.nn.softmax(srt_k, axis=-1)
        before = jnp.cumsum(p, axis=-1) - p  # mass strictly above each sorted entry
        n_keep = jnp.maximum(jnp.sum(before < top_p[:, None], axis=-1), 1)
        pth = jnp.take_along_axis(srt, (n_keep - 1)[:, None], axis=-1)
        # min-p: keep p >= min_p * p_max  <=>  x >= x_max + log(min_p)
        mth = jnp.where(min_p > 0, srt[:, 0] + jnp.log(jnp.maximum(min_p, 1e-30)), -jnp.inf)[:, None]
        thresh = jnp.maximum(jnp.maximum(kth, pth), mth)
        return jnp.where(x >= thresh, x, -jnp.inf)

    x = jax.lax.cond(need, truncate, lambda x: x, x)
    return jax.nn.log_softmax(x, axis=-1)


_ARGMAX_BLOCK = 128


def argmax_logsumexp(logits_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First index of the maximum and the log-sum-exp of every column of logits_t [V, B] (fp32).

    Same result as `jnp.argmax(x, 0)` and `logsumexp(x, 0)`, written for XLA's CPU backend, where argmax over a
    152k vocabulary is a slow variadic reduction (13 ms at batch 32, more than the rest of the sampling): the
    maximum of blocks of 128 rows is a plain fast reduction, then only the first block holding the maximum is
    searched. Columns (rather than rows) because XLA computes the vocabulary projection fastest as [V, B].
    """
    V, B = logits_t.shape
    pad = (-V) % _ARGMAX_BLOCK
    x = jnp.pad(logits_t, ((0, pad), (0, 0)), constant_values=-jnp.inf) if pad else logits_t
    nb = x.shape[0] // _ARGMAX_BLOCK
    blocks = x.reshape(nb, _ARGMAX_BLOCK, B)
    block_max = jnp.max(blocks, axis=1)  # [nb, B]
    m = jnp.max(block_max, axis=0)  # [B]
    first = jnp.min(jnp.where(block_max == m, jnp.arange(nb, dtype=jnp.int32)[:, None], nb), axis=0)
    first = jnp.minimum(first, nb - 1)  # all-NaN column: no block equals the max; stay in range
    sub = blocks[first, :, jnp.arange(B)]  # [B, 128]
    within = jnp.min(
        jnp.where(sub == m[:, None], jnp.arange(_ARGMAX_BLOCK, dtype=jnp.int32)[None, :], _ARGMAX_BLOCK),
        axis=1,
    )
    best = jnp.minimum(first * _ARGMAX_BLOCK + within, V - 1).astype(jnp.int32)
    if B <= 2:  # reducing one or two long columns is ~20x slower on XLA:CPU than the same data as rows
        rows = logits_t.T
        lse = m + jnp.log(jnp.sum(jnp.exp(rows - m[:, None]), axis=1))
    else:
        lse = m + jnp.log(jnp.sum(jnp.exp(logits_t - m[None, :]), axis=0))
    return best, lse


def sample_step(logits_t, keys, step, temperature, top_k, top_p, min_p, forced, use_forced):
    """Next token [B], its raw log-prob and its sampling log-prob, for fp32 logits_t [V, B] (vocab first).

    keys [B, 2] uint32 are per-sequence base keys; `step` [B] is folded in. `forced` [B] replaces the
    sampled token where `use_forced`.
    """
    logits_t = logits_t.astype(jnp.float32)
    B = logits_t.shape[1]
    greedy = temperature <= 0
    best, lse = argmax_logsumexp(logits_t)

    def draw(key, s, row):
        return jax.random.categorical(jax.random.fold_in(key, s), row).astype(jnp.int32)

    def with_sampling(_):
        lp = processed_logprobs(logits_t.T, temperature, top_k, top_p, min_p)
        tok = jnp.where(greedy, best, jax.vmap(draw)(keys, step, lp))
        tok = jnp.where(use_forced, forced, tok).astype(jnp.int32)
        return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]

    def greedy_only(_):
        return jnp.where(use_forced, forced, best).astype(jnp.int32), jnp.zeros((B,), jnp.float32)

    # An all-greedy batch skips the transpose, the truncation and the [B, V] random draw.
    tok, samp_lp = jax.lax.cond(jnp.any(~greedy), with_sampling, greedy_only, None)
    raw_lp = logits_t[tok, jnp.arange(B)] - lse
    samp_lp = jnp.where(greedy, jnp.where(tok == best, 0.0, -jnp.inf), samp_lp)
    return tok, raw_lp, samp_lp


def vocab_logits_t(params: Params, h: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits [V, B] of final hidden states h [B, D] (vocabulary first: XLA's fastest CPU layout)."""
    dt = cfg.compute_dtype
    # An untied head is used through the Sampler's [V, D] copy when there is one: contracting the inner axis is
    # ~2.5x faster than the [D, V] checkpoint layout.
    if cfg.tie_word_embeddings:
        w = params["embed"]
    elif "lm_head_vd" in params:
        w = params["lm_head_vd"]
    else:
        return jnp.einsum("bd,dv->bv", h, params["lm_head"].astype(dt), preferred_element_type=jnp.float32).T
    if h.shape[0] > 1 and dt == jnp.float32 and w.dtype == jnp.float32 and jax.default_backend() == "cpu":
        # The same products and sums as the einsum (bit-identical here), but XLA:CPU hands a multiply-reduce to a
        # different library kernel: ~7 % faster per decode step at batch 8 and 32 (at batch 1 ~100x slower).
        return jnp.sum(w[:, None, :] * h[None, :, :].astype(jnp.float32), axis=-1)
    return jnp.einsum("vd,bd->vb", w.astype(dt), h, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Device functions
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("cfg", "n_steps", "mesh_rules", "attend_len"), donate_argnums=(1, 2)
)
def decode_chunk(
    params: Params,
    k,
    v,
    slots: dict,
    forced,
    n_forced,
    *,
    cfg: ModelConfig,
    n_steps: int,
    mesh_rules=None,
    attend_len: int | None = None,
):
    """Up to `n_steps` decode steps for every active slot, on device.

    attend_len (static): the caller guarantees lengths + n_steps <= attend_len for every active slot, so the
    whole chunk reads and writes only the first attend_len cache positions. That window is copied out of the
    cache once, decoded on in place, and written back once per chunk: slicing it inside every step would copy
    it out of the cache layer by layer on every token.

    slots: lengths, pending, active (bool), remaining, key [S,2], step, temperature, top_k, top_p, min_p,
    eos [S, MAX_EOS]. A slot stops on an eos id or when `remaining` hits 0. Returns (k, v, tokens [S, n],
    raw_lp [S, n], samp_lp [S, n], n_out [S], hit_eos [S]).
    """
    S = slots["pending"].shape[0]
    f32 = jnp.float32
    out_tok = jnp.zeros((S, n_steps), jnp.int32)
    out_raw = jnp.zeros((S, n_steps), f32)
    out_samp = jnp.zeros((S, n_steps), f32)

    def cond(c):
        i, active = c[0], c[4]
        return (i < n_steps) & jnp.any(active)

    def body(c):
        i, k, v, lengths, active, pending, remaining, step, n_out, hit_eos, ot, orw, osp = c
        cache = KVCache(k, v, lengths, keys_transposed=isinstance(k, tuple))
        hidden, cache = forward(
            params,
            pending[:, None],
            cfg,
            segment_ids=active[:, None].astype(jnp.int32),
            kv_cache=cache,
            mesh_rules=mesh_rules,
            return_hidden=True,
        )
        use_forced = i < n_forced
        tok, raw_lp, samp_lp = sample_step(
            vocab_logits_t(params, hidden[:, 0], cfg),
            slots["key"],
            step,
            slots["temperature"],
            slots["top_k"],
            slots["top_p"],
            slots["min_p"],
            forced[:, jnp.minimum(i, forced.shape[1] - 1)],
            use_forced,
        )
        ot = ot.at[:, i].set(jnp.where(active, tok, 0))
        orw = orw.at[:, i].set(jnp.where(active, raw_lp, 0.0))
        osp = osp.at[:, i].set(jnp.where(active, samp_lp, 0.0))
        is_eos = jnp.any(tok[:, None] == slots["eos"], axis=-1) & active
        remaining = remaining - active
        n_out = n_out + active
        step = step + active
        pending = jnp.where(active, tok, pending)
        hit_eos = hit_eos | is_eos
        active = active & ~is_eos & (remaining > 0)
        return (
            i + 1,
            cache.k,
            cache.v,
            cache.lengths,
            active,
            pending,
            remaining,
            step,
            n_out,
            hit_eos,
            ot,
            orw,
            osp,
        )

    zeros = jnp.zeros((S,), jnp.int32)
    init = (
        jnp.int32(0),
        k,
        v,
        slots["lengths"],
        slots["active"],
        slots["pending"],
        slots["remaining"],
        slots["step"],
        zeros,
        jnp.zeros((S,), bool),
        out_tok,
        out_raw,
        out_samp,
    )
    W = k.shape[3] if attend_len is None else min(attend_len, k.shape[3])
    if isinstance(params["layers"], (list, tuple)):  # per-layer window arrays: no slicing inside the loop
        # Keys as [B, K, hd, W] for the chunk (see KVCache.keys_transposed): transposed once per chunk here and
        # back below, which costs far less than it saves over the chunk's steps.
        init = (
            init[0],
            tuple(k[i, :, :, :W].transpose(0, 1, 3, 2) for i in range(k.shape[0])),
            tuple(v[i, :, :, :W] for i in range(k.shape[0])),
        ) + init[3:]
    elif W < k.shape[3]:
        init = (init[0], k[:, :, :, :W], v[:, :, :, :W]) + init[3:]
    c = jax.lax.while_loop(cond, body, init)
    kw, vw = c[1], c[2]
    if isinstance(kw, tuple):
        kw, vw = jnp.stack([a.transpose(0, 1, 3, 2) for a in kw]), jnp.stack(vw)
    if W < k.shape[3]:
        kw = jax.lax.dynamic_update_slice_in_dim(k, kw, 0, axis=3)
        vw = jax.lax.dynamic_update_slice_in_dim(v, vw, 0, axis=3)
    return kw, vw, c[10], c[11], c[12], c[8], c[9]


@functools.partial(jax.jit, static_argnames=("cfg", "mesh_rules", "attend_len"), donate_argnums=(1, 2))
def prefill_rows(
    params: Params,
    k,
    v,
    slot_idx,
    tokens,
    n_tokens,
    start,
    *,
    cfg: ModelConfig,
    mesh_rules=None,
    attend_len: int | None = None,
):
    """Write tokens [P, T] (right-padded, n_tokens valid) into cache rows `slot_idx` [P] from `start` [P].

    Padding entries of slot_idx point past the last slot: their rows are computed on a clipped copy and the
    writes are dropped. attend_len as in `decode_chunk` (start + T <= attend_len).
    """
    kk = jnp.take(k, slot_idx, axis=1, mode="clip")
    vv = jnp.take(v, slot_idx, axis=1, mode="clip")
    seg = (jnp.arange(tokens.shape[1])[None, :] < n_tokens[:, None]).astype(jnp.int32)
    # return_hidden: the logits of a prefill are never needed (the last token stays pending), and [P, T, V]
    # logits would dominate memory for a 152k vocabulary.
    _, cache = forward(
        params,
        tokens,
        cfg,
        segment_ids=seg,
        kv_cache=KVCache(kk, vv, start),
        mesh_rules=mesh_rules,
        return_hidden=True,
        attend_len=attend_len,
    )
    k = k.at[:, slot_idx].set(cache.k, mode="drop")
    v = v.at[:, slot_idx].set(cache.v, mode="drop")
    return k, v


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _copy_rows(k, v, src, dst):
    """Copy cache rows src[i] -> dst[i] (shared prefill of n samples); dst past the end is dropped."""
    k = k.at[:, dst].set(jnp.take(k, src, axis=1, mode="clip"), mode="drop")
    v = v.at[:, dst].set(jnp.take(v, src, axis=1, mode="clip"), mode="drop")
    return k, v


def compile_counts() -> dict[str, int]:
    """How many executables each jitted sampler function holds (tests keep these bounded)."""
    return {
        "decode_chunk": decode_chunk._cache_size(),
        "prefill_rows": prefill_rows._cache_size(),
        "copy_rows": _copy_rows._cache_size(),
    }


def _pow2_at_least(n: int, cap: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return min(p, cap)


def sequence_key(seed: int, sample_index: int) -> np.ndarray:
    """uint32[2] base key of sample `sample_index` of a request with `seed`."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), sample_index)
    return np.asarray(jax.device_get(key), np.uint32)


# ----------------------------------------------------------------------------------------------------------------
# Host scheduler
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ToolHooks:
    """Pause / resume hooks of multi-turn generation (the rollout loop supplies them).

    pause_regex: when it matches the decoded text of the current model-written run, the sequence pauses at
    the token completing the first match. on_pause(seq, match_text) returns a Future (its result goes to
    on_result) or a string: the stop reason to finish with instead. on_result(seq, result) (the future's result, or its exception) returns the ids to
    append (host-written, loss-masked) before resuming, or a string stop reason.
    """

    pause_regex: re.Pattern
    on_pause: Callable[[Sequence_, str], Any]
    on_result: Callable[[Sequence_, Any], Any]


class Sampler:
    """Continuous-batching sampler over `engine.num_slots` decode slots. Reusable across `run` calls."""

    def __init__(
        self,
        params: Params,
        cfg: ModelConfig,
        engine: EngineConfig = EngineConfig(),
        mesh_rules: MeshRules | None = None,
        cache_dtype: Any = None,
    ):
        self.cfg, self.engine, self.mesh_rules = cfg, engine, mesh_rules
        self.params = params
        S, L = engine.num_slots, engine.max_len
        shape = cache_shape(cfg, S, L)
        dtype = cfg.compute_dtype if cache_dtype is None else cache_dtype
        if mesh_rules is not None:
            sh = mesh_rules.sharding(CACHE_LOGICAL_AXES, shape)
            self.k = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sh)()
            self.v = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sh)()
        else:
            self.k, self.v = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
        self.lengths = np.zeros(S, np.int32)
        self.stats = {
            "decode_calls": 0,
            "prefill_calls": 0,
            "copy_calls": 0,
            "prefill_tokens": 0,
            "evictions": 0,
        }

    @property
    def params(self) -> Params:
        """The weights decoded with (per-layer arrays when engine.unstack_layers)."""
        return self._params

    @params.setter
    def params(self, params: Params) -> None:
        # A weight update (GRPO) sets new params here; they are re-laid out once, not on every decode call
        # (and not again when the same params object is set twice, as rollout() does with a given sampler).
        leaves, treedef = jax.tree.flatten(params)
        old = getattr(self, "_source", None)
        if old is not None and old[1] == treedef and all(a is b for a, b in zip(leaves, old[0])):
            return
        self._source = (leaves, treedef)
        if self.engine.unstack_layers:
            params = unstack_layers(params)
            if "lm_head" in params:
                params = {**params, "lm_head_vd": jnp.transpose(params["lm_head"])}
        self._params = params

    # -- device calls ------------------------------------------------------------------------------------------

    def _prefill(self, jobs: list[tuple[int, list[int], int]]) -> None:
        """jobs: (slot, ids, start). Writes ids at start in the slot's rows, bucketed and batched."""
        eng = self.engine
        pieces: list[tuple[int, list[int], int]] = []
        for slot, ids, start in jobs:
            for off in range(0, len(ids), eng.max_bucket):
                pieces.append((slot, ids[off : off + eng.max_bucket], start + off))
        # pieces of one slot must run in order: process in rounds, each round at most one piece per slot
        while pieces:
            seen, now, later = set(), [], []
            for p in pieces:
                (later if p[0] in seen else now).append(p)
                seen.add(p[0])
            pieces = later
            by_bucket: dict[int, list] = {}
            for p in now:
                b = next(b for b in eng.buckets() if b >= len(p[1]))
                by_bucket.setdefault(b, []).append(p)
            for b, group in sorted(by_bucket.items()):
                for i in range(0, len(group), eng.max_prefill_batch):
                    part = group[i : i + eng.max_prefill_batch]
                    P = _pow2_at_least(len(part), eng.max_prefill_batch)
                    slot_idx = np.full(P, eng.num_slots, np.int32)
                    toks = np.zeros((P, b), np.int32)
                    n = np.zeros(P, np.int32)
                    start = np.zeros(P, np.int32)
                    for j, (slot, ids, st) in enumerate(part):
                        slot_idx[j], n[j], start[j] = slot, len(ids), st
                        toks[j, : len(ids)] = ids
                    self.k, self.v = prefill_rows(
                        self.params,
                        self.k,
                        self.v,
                        slot_idx,
                        toks,
                        n,
                        start,
                        cfg=self.cfg,
                        mesh_rules=self.mesh_rules,
                        attend_len=eng.window(int(start.max()) + b),
                    )
                    self.stats["prefill_calls"] += 1
                    self.stats["prefill_tokens"] += int(n.sum())

    def _copy(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        S = self.engine.num_slots
        P = _pow2_at_least(len(pairs), 1 << (S - 1).bit_length())
        src = np.zeros(P, np.int32)
        dst = np.full(P, S, np.int32)
        for j, (a, b) in enumerate(pairs):
            src[j], dst[j] = a, b
        self.k, self.v = _copy_rows(self.k, self.v, src, dst)
        self.stats["copy_calls"] += 1

    # -- scheduling ----------------------------------------------------------------------------------------------

    def run(
        self,
        requests: Sequence[Request],
        *,
        decode: Callable[[list[int]], str] | None = None,
        hooks: ToolHooks | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Sequence_]]:
        """Sample every request `n` times; returns, per request, its n finished sequences.

        `decode` (token ids -> text) is needed for stop strings and tool hooks. `progress(k)` is called when k
        more sequences finished.
        """
        eng = self.engine
        S, C = eng.num_slots, eng.chunk_size
        seqs: list[Sequence_] = []
        for gi, r in enumerate(requests):
            if len(r.prompt) == 0:
                raise ValueError(f"request {gi}: empty prompt")
            if len(r.prompt) + 1 > eng.max_len:
                raise ValueError(
                    f"request {gi}: prompt of {len(r.prompt)} tokens does not fit max_len={eng.max_len}"
                )
            if (r.params.stop_strings or hooks is not None) and decode is None:
                raise ValueError("stop strings and tool hooks need `decode`")
            for si in range(r.n):
                seqs.append(
                    Sequence_(
                        uid=len(seqs),
                        group=gi,
                        sample_index=si,
                        prompt=[int(t) for t in r.prompt],
                        params=r.params,
                        key=sequence_key(r.seed, si),
                        forced=None if r.forced is None else [int(t) for t in r.forced],
                    )
                )
        queue = list(seqs)
        slot_of: list[Sequence_ | None] = [None] * S
        paused: list[Sequence_] = []
        self.lengths[:] = 0

        def finish(seq: Sequence_, reason: str) -> None:
            seq.status, seq.stop_reason = "done", reason
            if seq.slot is not None:
                slot_of[seq.slot] = None
                seq.slot = None
            if progress is not None:
                progress(1)

        def budget(seq: Sequence_) -> int:
            return min(seq.params.max_new_tokens - len(seq.tokens), eng.max_len - len(seq.full))

        while any(s.status != "done" for s in seqs):
            # 1. tool results that came back: append host ids, resume (in place, or back to the queue if evicted)
            for seq in list(paused):
                if not seq.future.done():
                    continue
                paused.remove(seq)
                res = hooks.on_result(seq, seq.future.exception() or seq.future.result())
                seq.future = None
                if isinstance(res, str):
                    finish(seq, res)
                    continue
                seq.tokens += [int(t) for t in res]
                seq.loss_mask += [0] * len(res)
                seq.logprobs_raw += [0.0] * len(res)
                seq.logprobs_sampling += [0.0] * len(res)
                seq.turn_start = len(seq.tokens)
                if budget(seq) <= 0:
                    finish(seq, "max_tokens")
                elif seq.slot is None:
                    seq.status = "queued"
                    queue.insert(0, seq)
                else:
                    seq.status = "running"
            # 2. admit queued sequences into free slots; siblings copy a slot that holds their prompt
            free = [s for s in range(S) if slot_of[s] is None]
            if queue and not free and eng.evict_paused:
                for seq in paused:
                    if seq.slot is not None and len(free) < len(queue):
                        self.stats["evictions"] += 1
                        free.append(seq.slot)
                        slot_of[seq.slot] = None
                        seq.slot, seq.cached = None, 0
            admitted: list[Sequence_] = []
            while queue and free:
                seq = queue.pop(0)
                seq.slot, seq.status, seq.cached = free.pop(0), "running", 0
                slot_of[seq.slot] = seq
                admitted.append(seq)
            # A fresh sample whose prompt is already in (or about to be prefilled into) another slot copies those
            # rows after the prefill below instead of recomputing them.
            copies: list[tuple[int, int]] = []
            targets: set[int] = set()
            undecided = {seq.uid for seq in admitted}  # a donor must hold (or be about to prefill) its prompt
            for seq in admitted:
                undecided.discard(seq.uid)
                if seq.tokens or len(seq.prompt) < 2:
                    continue
                donor = next(
                    (
                        o
                        for o in slot_of
                        if o is not None
                        and o is not seq
                        and o.uid not in targets
                        and o.uid not in undecided
                        and o.group == seq.group
                        and o.prompt == seq.prompt
                    ),
                    None,
                )
                if donor is not None:
                    copies.append((donor.slot, seq.slot))
                    targets.add(seq.uid)
                    seq.cached = len(seq.prompt) - 1
            # 3. prefill what is missing from each running slot's cache (all but the pending token)
            jobs = []
            for seq in slot_of:
                if seq is None or seq.status != "running" or seq.uid in targets:
                    continue
                full = seq.full
                if seq.cached < len(full) - 1:
                    jobs.append((seq.slot, full[seq.cached : len(full) - 1], seq.cached))
                    seq.cached = len(full) - 1
            if jobs:
                self._prefill(jobs)
            self._copy(copies)
            for seq in slot_of:
                if seq is not None:
                    self.lengths[seq.slot] = seq.cached
            # 4. decode a chunk
            running = [s for s in slot_of if s is not None and s.status == "running"]
            if not running:
                if paused:
                    cf.wait([s.future for s in paused], return_when=cf.FIRST_COMPLETED, timeout=1.0)
                    continue
                if queue:
                    continue
                break
            slots, forced, n_forced = self._slot_arrays(slot_of, budget)
            longest = max(int(self.lengths[s.slot]) for s in running)
            self.k, self.v, tok, raw, samp, n_out, hit_eos = decode_chunk(
                self.params,
                self.k,
                self.v,
                slots,
                forced,
                n_forced,
                cfg=self.cfg,
                n_steps=C,
                mesh_rules=self.mesh_rules,
                attend_len=eng.window(longest + C),
            )
            self.stats["decode_calls"] += 1
            tok, raw, samp, n_out, hit_eos = jax.device_get((tok, raw, samp, n_out, hit_eos))
            # 5. host-side stops, pauses
            for seq in running:
                s = seq.slot
                n = int(n_out[s])
                new = tok[s, :n].tolist()
                seq.tokens += new
                seq.loss_mask += [1] * n
                seq.logprobs_raw += raw[s, :n].tolist()
                seq.logprobs_sampling += samp[s, :n].tolist()
                seq.n_model += n
                seq.cached += n
                self._after_chunk(seq, n, bool(hit_eos[s]), decode, hooks, finish, paused, budget)
                if seq.slot is not None:
                    self.lengths[s] = seq.cached
        return [[s for s in seqs if s.group == gi] for gi in range(len(requests))]

    def _after_chunk(self, seq, n, hit_eos, decode, hooks, finish, paused, budget) -> None:
        """Check the stops of the host side after a chunk added `n` tokens to `seq`."""
        p = seq.params
        turn = seq.turn_tokens()
        cut: int | None = None  # number of turn tokens to keep
        reason = None
        for stop in p.stop_token_seqs:  # earliest completed stop sequence among the new tokens
            L = len(stop)
            for end in range(max(L, len(turn) - n), len(turn) + 1):
                if tuple(turn[end - L : end]) == tuple(stop):
                    if cut is None or end < cut:
                        cut, reason = end, "stop"
                    break
        if decode is not None and (p.stop_strings or hooks is not None):
            text = decode(turn)
            for st in p.stop_strings:
                if st in text:
                    end = _first_prefix(turn, decode, lambda t, st=st: st in t)
                    if cut is None or end < cut:
                        cut, reason = end, "stop"
            if hooks is not None:
                m = hooks.pause_regex.search(text)
                if m is not None:
                    end = _first_prefix(turn, decode, lambda t: hooks.pause_regex.search(t) is not None)
                    if cut is None or end < cut:
                        cut, reason = end, "pause"
        if cut is not None:
            drop = len(turn) - cut
            if drop:
                del (
                    seq.tokens[-drop:],
                    seq.loss_mask[-drop:],
                    seq.logprobs_raw[-drop:],
                    seq.logprobs_sampling[-drop:],
                )
                seq.n_model -= drop
            seq.cached = len(seq.full) - 1
            if reason == "stop":
                finish(seq, "stop")
                return
            if seq.tokens and seq.tokens[-1] in p.eos_ids:
                finish(seq, "eos")
                return
            match = hooks.pause_regex.search(decode(seq.turn_tokens())).group(0)
            fut = hooks.on_pause(seq, match)
            if isinstance(fut, str):
                finish(seq, fut)
                return
            seq.status, seq.future = "paused", fut
            paused.append(seq)
            return
        if hit_eos:
            finish(seq, "eos")
        elif budget(seq) <= 0:
            finish(seq, "max_tokens")

    def _slot_arrays(self, slot_of, budget):
        S, C = self.engine.num_slots, self.engine.chunk_size
        a = {
            "lengths": self.lengths.copy(),
            "pending": np.zeros(S, np.int32),
            "active": np.zeros(S, bool),
            "remaining": np.zeros(S, np.int32),
            "key": np.zeros((S, 2), np.uint32),
            "step": np.zeros(S, np.int32),
            "temperature": np.zeros(S, np.float32),
            "top_k": np.zeros(S, np.int32),
            "top_p": np.ones(S, np.float32),
            "min_p": np.zeros(S, np.float32),
            "eos": np.full((S, MAX_EOS), -1, np.int32),
        }
        forced = np.zeros((S, C), np.int32)
        n_forced = np.zeros(S, np.int32)
        for seq in slot_of:
            if seq is None or seq.status != "running":
                continue
            s, p = seq.slot, seq.params
            a["pending"][s] = seq.full[-1]
            a["active"][s] = True
            a["remaining"][s] = max(budget(seq), 0)
            a["key"][s] = seq.key
            a["step"][s] = seq.n_model
            a["temperature"][s] = p.temperature
            a["top_k"][s] = p.top_k
            a["top_p"][s] = p.top_p
            a["min_p"][s] = p.min_p
            a["eos"][s, : len(p.eos_ids)] = p.eos_ids
            if seq.forced is not None and seq.n_model < len(seq.forced):
                f = seq.forced[seq.n_model : seq.n_model + C]
                forced[s, : len(f)] = f
                n_forced[s] = len(f)
            assert self.lengths[s] == len(seq.full) - 1, (s, self.lengths[s], len(seq.full))
        return a, forced, n_forced

    def cache_rows(self, slot: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copy of the first n cache positions of a slot (tests compare it with a fresh prefill)."""
        return np.asarray(self.k[:, slot, :, :n]), np.asarray(self.v[:, slot, :, :n])


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


# ----------------------------------------------------------------------------------------------------------------
# Convenience
# ----------------------------------------------------------------------------------------------------------------


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    params_: SamplingParams = SamplingParams(),
    *,
    engine: EngineConfig | None = None,
    seed: int = 0,
    n: int = 1,
    decode: Callable[[list[int]], str] | None = None,
    mesh_rules: MeshRules | None = None,
) -> list[list[Sequence_]]:
    """One-shot sampling of `prompts` (n samples each, request i seeded with seed + i)."""
    if engine is None:
        longest = max(len(p) for p in prompts) + params_.max_new_tokens + 1
        engine = EngineConfig(num_slots=min(8, max(1, len(prompts) * n)), max_len=longest)
    sampler = Sampler(params, cfg, engine, mesh_rules=mesh_rules)
    reqs = [Request(prompt=list(p), params=params_, n=n, seed=seed + i) for i, p in enumerate(prompts)]
    return sampler.run(reqs, decode=decode)
