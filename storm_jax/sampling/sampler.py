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

Modules: requests.py (request types and host state), distribution.py (sampling math), engine.py (jitted
prefill / decode / copy), this file (the host scheduler), storm_jax/models/head.py (vocabulary projection and
decode weight layout).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from storm_jax.models.head import decode_layout, vocab_logits_t
from storm_jax.models.qwen import ModelConfig, Params, init_cache
from storm_jax.parallel.mesh import MeshRules
from storm_jax.sampling.distribution import argmax_logsumexp, processed_logprobs, sample_step
from storm_jax.sampling.engine import _copy_rows, compile_counts, decode_chunk, prefill_rows
from storm_jax.sampling.hooks import Feed, ToolHooks, _append_host, _first_prefix
from storm_jax.sampling.requests import (
    KIND_HINT,
    KIND_MODEL,
    KIND_TOOL_OUTPUT,
    MAX_EOS,
    SPAN_KINDS,
    EngineConfig,
    HostTokens,
    Request,
    SamplingParams,
    Sequence_,
    _pow2_at_least,
    sequence_key,
)

# ----------------------------------------------------------------------------------------------------------------
# Host scheduler
# ----------------------------------------------------------------------------------------------------------------


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
        # the cache spec (models/cache.py) gives shapes, dtype and shardings; created sharded when on a mesh
        cache = init_cache(cfg, S, L, cache_dtype, mesh_rules=mesh_rules)
        self.k, self.v = cache.k, cache.v
        self.lengths = np.zeros(S, np.int32)
        self.stats = {
            "decode_calls": 0,
            "prefill_calls": 0,
            "copy_calls": 0,
            "prefill_tokens": 0,
            "evictions": 0,
            # host wall seconds (a GRPO step's breakdown): decode chunks, prefill, and idle waits for tool
            # results while no slot could decode
            "decode_s": 0.0,
            "prefill_s": 0.0,
            "tool_wait_s": 0.0,
            "decoded_tokens": 0,
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
        self._params = decode_layout(params, unstack=self.engine.unstack_layers)

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
            cap = _pow2_at_least(eng.num_slots, eng.max_prefill_batch)
            for b, group in sorted(by_bucket.items()):
                for i in range(0, len(group), eng.max_prefill_batch):
                    part = group[i : i + eng.max_prefill_batch]
                    # Short pieces (tool outputs, hints) come back a few at a time, in varying numbers: each
                    # row count would be one more compile. Where the full batch holds no more positions than
                    # one decode chunk, it is always padded to the full batch (one executable per bucket).
                    full = b * cap <= eng.num_slots * eng.chunk_size
                    P = cap if full else _pow2_at_least(len(part), eng.max_prefill_batch)
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
        hooks: ToolHooks | Sequence[ToolHooks] | None = None,
        progress: Callable[[int], None] | None = None,
        feed: Feed | None = None,
    ) -> list[list[Sequence_]]:
        """Sample every request `n` times; returns, per request, its n finished sequences.

        `decode` (token ids -> text) is needed for stop strings and tool hooks. `progress(k)` is called when k
        more sequences finished. With a `feed` (see `Feed`), run() also takes requests from it between chunks
        and returns only when the feed's poll returns None; the return value covers `requests` only.
        """
        eng = self.engine
        S, C = eng.num_slots, eng.chunk_size
        hooks = [] if hooks is None else [hooks] if isinstance(hooks, ToolHooks) else list(hooks)
        counter = {"uid": 0, "group": 0}  # uids and groups stay unique over everything a feed adds

        def add(new_requests: Sequence[Request]) -> list[list[Sequence_]]:
            out: list[list[Sequence_]] = []
            for r in new_requests:
                gi = counter["group"]
                prefix = [int(t) for t in (r.prefix or ())]
                kinds = list(r.prefix_kinds) if r.prefix_kinds is not None else [KIND_MODEL] * len(prefix)
                if len(r.prompt) == 0:
                    raise ValueError(f"request {gi}: empty prompt")
                if len(r.prompt) + len(prefix) + 1 > eng.max_len:
                    raise ValueError(
                        f"request {gi}: prompt of {len(r.prompt)} tokens (+ prefix {len(prefix)}) does not fit "
                        f"max_len={eng.max_len}"
                    )
                if len(kinds) != len(prefix) or any(k not in SPAN_KINDS for k in kinds):
                    raise ValueError(
                        f"request {gi}: prefix_kinds must give one of {SPAN_KINDS} for each of the "
                        f"{len(prefix)} prefix ids"
                    )
                if (r.params.stop_strings or hooks) and decode is None:
                    raise ValueError("stop strings and tool hooks need `decode`")
                counter["group"] += 1
                group = []
                for si in range(r.n):
                    seq = Sequence_(
                        uid=counter["uid"],
                        group=gi,
                        sample_index=si,
                        prompt=[int(t) for t in r.prompt],
                        params=r.params,
                        key=sequence_key(r.seed, si),
                        forced=None if r.forced is None else [int(t) for t in r.forced],
                    )
                    counter["uid"] += 1
                    seq.tokens, seq.kinds = list(prefix), list(kinds)
                    seq.loss_mask = [int(k == KIND_MODEL) for k in kinds]
                    seq.logprobs_raw = [0.0] * len(prefix)
                    seq.logprobs_sampling = [0.0] * len(prefix)
                    seq.turn_start = len(prefix)
                    group.append(seq)
                out.append(group)
            return out

        seqs: list[Sequence_] = [s for g in add(requests) for s in g]
        queue = list(seqs)
        live = list(seqs)  # unfinished sequences (a feed's are never kept in `seqs`)
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

        while feed is not None or any(s.status != "done" for s in seqs):
            # 0. a feed sees the last chunk's tokens, adds requests and cancels samples
            if feed is not None:
                live = [s for s in live if s.status != "done"]
                new = feed.poll(not live)
                if new is None:
                    break
                if new:
                    groups = add(new)
                    feed.started(new, groups)
                    for g in groups:
                        live += g
                        queue += g
                for seq in live:
                    if seq.cancelled and seq.status != "done":
                        if seq in queue:
                            queue.remove(seq)
                        if seq in paused:  # its tool call's result will be dropped
                            paused.remove(seq)
                            seq.info.pop("_hook", None)
                            seq.future = None
                        finish(seq, "cancelled")
            # 1. tool results that came back: append host ids, resume (in place, or back to the queue if evicted)
            for seq in list(paused):
                if not seq.future.done():
                    continue
                paused.remove(seq)
                hook = seq.info.pop("_hook")
                res = hook.on_result(seq, seq.future.exception() or seq.future.result())
                seq.future = None
                if isinstance(res, str):
                    finish(seq, res)
                    continue
                _append_host(seq, res, hook.kind)
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
                t_pre = time.perf_counter()
                self._prefill(jobs)
                # host time of the calls (compiles included); no sync here: the device work lands in the
                # next chunk's decode_s, rather than a wait added to the decode loop for a metric
                self.stats["prefill_s"] += time.perf_counter() - t_pre
            self._copy(copies)
            for seq in slot_of:
                if seq is not None:
                    self.lengths[seq.slot] = seq.cached
            # 4. decode a chunk
            running = [s for s in slot_of if s is not None and s.status == "running"]
            if not running:
                if paused:
                    # with a feed, wake up often: new requests must not wait for a tool call
                    wait_s = 1.0 if feed is None else 0.02
                    t_wait = time.perf_counter()
                    cf.wait([s.future for s in paused], return_when=cf.FIRST_COMPLETED, timeout=wait_s)
                    self.stats["tool_wait_s"] += time.perf_counter() - t_wait
                    continue
                if queue or feed is not None:
                    continue
                break
            slots, forced, n_forced = self._slot_arrays(slot_of, budget)
            longest = max(int(self.lengths[s.slot]) for s in running)
            t_dec = time.perf_counter()
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
            self.stats["decode_s"] += time.perf_counter() - t_dec
            self.stats["decoded_tokens"] += int(sum(int(n_out[s.slot]) for s in running))
            # 5. host-side stops, pauses
            for seq in running:
                s = seq.slot
                n = int(n_out[s])
                new = tok[s, :n].tolist()
                seq.tokens += new
                seq.kinds += [KIND_MODEL] * n
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
        hook = None
        if decode is not None and (p.stop_strings or hooks):
            text = decode(turn)
            for st in p.stop_strings:
                if st in text:
                    end = _first_prefix(turn, decode, lambda t, st=st: st in t)
                    if cut is None or end < cut:
                        cut, reason = end, "stop"
            for h in hooks:
                if h.enabled is not None and not h.enabled(seq):
                    continue
                if h.pause_regex.search(text) is not None:
                    end = _first_prefix(turn, decode, lambda t, h=h: h.pause_regex.search(t) is not None)
                    if cut is None or end < cut:
                        cut, reason, hook = end, "pause", h
        if cut is not None:
            drop = len(turn) - cut
            if drop:
                del (
                    seq.tokens[-drop:],
                    seq.kinds[-drop:],
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
            match = hook.pause_regex.search(decode(seq.turn_tokens())).group(0)
            fut = hook.on_pause(seq, match)
            if isinstance(fut, str):
                finish(seq, fut)
                return
            if isinstance(fut, (list, tuple, HostTokens)):  # inserted at once: resume from the cached prefix
                _append_host(seq, fut, hook.kind)
                if budget(seq) <= 0:
                    finish(seq, "max_tokens")
                return
            seq.status, seq.future = "paused", fut
            seq.info["_hook"] = hook
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


__all__ = [
    "MAX_EOS",
    "EngineConfig",
    "Feed",
    "HostTokens",
    "KIND_HINT",
    "KIND_MODEL",
    "KIND_TOOL_OUTPUT",
    "SPAN_KINDS",
    "Request",
    "Sampler",
    "SamplingParams",
    "Sequence_",
    "ToolHooks",
    "argmax_logsumexp",
    "compile_counts",
    "decode_chunk",
    "generate",
    "prefill_rows",
    "processed_logprobs",
    "sample_step",
    "sequence_key",
    "vocab_logits_t",
]
