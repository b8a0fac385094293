"""Sampler.run(feed=...): requests added between chunks give the tokens a one-shot run() gives, a cancelled
sample leaves its slot at once, and run() returns when the feed says so."""

from __future__ import annotations

import jax
import numpy as np
from tolerances import assert_within, logits_depth, logprob_atol

from storm_jax.models.qwen import ModelConfig, forward, init_params
from storm_jax.sampling.sampler import EngineConfig, Request, Sampler, SamplingParams

CFG = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=8)  # fmt: skip
ENGINE = EngineConfig(num_slots=2, max_len=96, chunk_size=4, min_bucket=8, max_bucket=32)


class ScriptedFeed:
    """Adds request batches at given rounds, cancels sample (request, index) at a round, stops when all done."""

    def __init__(self, schedule: dict[int, list[Request]], cancel_at: dict[int, tuple[int, int]]):
        self.schedule, self.cancel_at = schedule, cancel_at
        self.round, self.groups, self.idle_polls = 0, [], 0

    def poll(self, idle: bool):
        r = self.round
        self.round += 1
        self.idle_polls += idle
        if r in self.cancel_at:
            gi, si = self.cancel_at[r]
            self.groups[gi][si].cancelled = True
        if self.schedule:
            return self.schedule.pop(r, [])
        if all(s.status == "done" for g in self.groups for s in g):
            return None
        return []

    def started(self, requests, groups):
        self.groups += groups


def test_feed_admits_between_chunks_and_cancels():
    params = init_params(CFG, jax.random.key(0), std=0.5)
    sp = SamplingParams(temperature=0.0, max_new_tokens=24)
    spt = SamplingParams(temperature=1.0, max_new_tokens=24)
    reqs = [Request([1, 2, 3, 4, 5], sp), Request([7, 8, 9], spt, n=2, seed=3), Request([11, 12], sp),
            Request([5, 4, 3, 2, 1, 9], spt, n=3, seed=5)]  # fmt: skip
    want = Sampler(params, CFG, ENGINE).run(reqs)

    sampler = Sampler(params, CFG, ENGINE)
    feed = ScriptedFeed({0: reqs[:1], 2: reqs[1:3], 5: reqs[3:], 7: []}, cancel_at={})
    assert sampler.run([], feed=feed) == []
    for w, g in zip(want, feed.groups):
        assert [s.tokens for s in g] == [s.tokens for s in w]
        for s, t in zip(g, w):
            # the same model under another batching (slots, attention windows): two evaluation orders of the
            # logits, so each raw log-prob within logprob_atol (tests/tolerances.py) of the one-shot run's
            full = np.asarray(t.prompt + t.tokens, np.int32)[None]
            logits = np.asarray(forward(params, full, CFG)[0])[0, len(t.prompt) - 1 : -1]
            bound = logprob_atol(logits, logits_depth(CFG, full.shape[1]))
            assert_within(s.logprobs_raw, t.logprobs_raw, bound, "feed vs one-shot raw log-probs")
    assert len({s.uid for g in feed.groups for s in g}) == 7  # uids unique across everything added

    long = SamplingParams(temperature=0.0, max_new_tokens=80)
    feed = ScriptedFeed({0: [Request([1, 2, 3], long)], 1: [Request([4, 5], sp)]}, cancel_at={3: (0, 0)})
    sampler.run([], feed=feed)
    (a,), (b,) = feed.groups
    assert a.stop_reason == "cancelled" and a.slot is None and len(a.tokens) < 80
    assert b.stop_reason == "max_tokens" and len(b.tokens) == 24
