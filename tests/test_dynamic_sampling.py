"""DAPO dynamic sampling (storm_jax/train/dynamic_sampling.py): plumbing with a scripted rollout."""

from __future__ import annotations

import numpy as np
import pytest

from storm_jax.train.dynamic_sampling import Group, collect_groups
from storm_jax.train.grpo import ProblemSampler

G = 4


def _roll_by_rule(has_var, calls):
    """A rollout stub: problem i gets rewards [1, 0, 0, 0] if has_var(i) else all zeros; records its calls."""

    def roll(ids, offset):
        calls.append((list(ids), offset))
        out = []
        for i in ids:
            r = np.array([1.0, 0, 0, 0] if has_var(i) else [0.0] * G, np.float32)
            out.append(Group(i, [f"t{i}.{s}" for s in range(G)], r, r.copy()))
        return out

    return roll


def test_fills_the_step_with_non_zero_variance_groups_when_some_exist():
    sampler = ProblemSampler(50, seed=3)
    order = ProblemSampler(50, seed=3).next(50)  # the sampler's own draw order
    calls: list = []
    col = collect_groups(sampler.next, _roll_by_rule(lambda i: i % 3 == 0, calls), target=4, max_draws=40)
    assert [gr.problem % 3 for gr in col.groups] == [0, 0, 0, 0]
    assert all(gr.has_variance for gr in col.groups) and col.kept == 4
    # it drew in sampler order until the 4th problem divisible by 3, asking only for the shortfall each round
    n = [k for k, i in enumerate(order) if i % 3 == 0][3] + 1
    assert col.drawn == n == sampler.get_state()["pos"]
    assert [i for ids, _ in calls for i in ids] == order[:n]
    assert (
        calls[0] == (order[:4], 0)
        and [off for _, off in calls][1:] == np.cumsum([len(c) for c, _ in calls])[:-1].tolist()
    )
    m = col.metrics()
    assert m["groups_drawn"] == n and m["groups_kept"] == 4
    assert m["filtered_share"] == pytest.approx(1 - 4 / n) and 0 < m["filtered_share"] < 1
    # the reward curve covers every drawn rollout, not only the kept ones
    assert col.drawn_rewards.shape == (n * G,) and col.drawn_rewards.sum() == pytest.approx(4.0)


def test_stops_at_the_cap_when_no_group_has_variance():
    sampler = ProblemSampler(50, seed=0)
    calls: list = []
    col = collect_groups(sampler.next, _roll_by_rule(lambda i: False, calls), target=4, max_draws=10)
    assert col.drawn == 10 and sampler.get_state()["pos"] == 10  # the cap, then no more draws
    assert (
        sum(len(ids) for ids, _ in calls) == 10 and len(calls[-1][0]) == 2
    )  # the last round is cut to the cap
    assert col.kept == 0 and len(col.groups) == 4  # topped up with zero-variance groups (batch shape kept)
    assert not any(gr.has_variance for gr in col.groups)
    assert col.metrics()["filtered_share"] == 1.0


def test_static_sampling_is_one_round_of_target_problems():
    sampler = ProblemSampler(50, seed=0)
    calls: list = []
    col = collect_groups(
        sampler.next, _roll_by_rule(lambda i: False, calls), target=4, max_draws=40, dynamic=False
    )
    assert len(calls) == 1 and col.drawn == 4 and len(col.groups) == 4 and col.kept == 0


def test_resumed_sampler_draws_what_the_uninterrupted_run_draws():
    """The sampler state after a dynamic step (what the checkpoint stores) continues the same sequence."""
    roll = _roll_by_rule(lambda i: i % 5 == 0, [])
    a = ProblemSampler(30, seed=1)
    collect_groups(a.next, roll, target=3, max_draws=12)
    state = a.get_state()
    b = ProblemSampler(30, seed=1)
    b.set_state(state)
    ga = collect_groups(a.next, roll, target=3, max_draws=12)
    gb = collect_groups(b.next, roll, target=3, max_draws=12)
    assert [g.problem for g in ga.groups] == [g.problem for g in gb.groups] and ga.drawn == gb.drawn
