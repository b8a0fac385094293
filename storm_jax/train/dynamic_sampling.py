"""Problem draws for GRPO (a checkpointed epoch-permutation sampler) and DAPO dynamic sampling: keep
drawing problems until a GRPO step holds enough groups that carry a gradient.

A group whose G rewards are all equal has zero advantage everywhere, so it contributes nothing to the policy
gradient (and with `drop_zero_variance` nothing to the loss at all). Instead of spending a step on such groups,
`collect_groups` draws more problems from the sampler and rolls them out until `target` groups with non-zero
reward variance are held, or `max_draws` problems were drawn in the step. Short of `target` at the cap, the
step is topped up with zero-variance groups it drew (so batch shapes stay fixed; they weigh nothing), and the
metrics say so.

The draws come from the run's ProblemSampler, whose state is checkpointed after every step, so a resumed run
draws exactly the problems (and seeds) the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def draw_cap(g: Any) -> int:
    """Most groups one step may draw: `grpo.max_draws_per_step`, where 0 means 4 x problems_per_step."""
    return int(g.max_draws_per_step) or 4 * int(g.problems_per_step)


class ProblemSampler:
    """Seeded epoch permutations of problem indices; its state goes into checkpoints."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("no problems to sample from")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = self._perm()
            take = min(k - len(out), self.n - self.pos)
            out.extend(int(i) for i in perm[self.pos : self.pos + take])
            self.pos += take
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class ProblemBatches:
    """The loop's iterator for GRPO: each item is the next `per_step` problem indices of a ProblemSampler."""

    def __init__(self, sampler: ProblemSampler, per_step: int):
        self.sampler, self.per_step = sampler, per_step

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        return self.sampler.next(self.per_step)

    def get_state(self) -> dict:
        return self.sampler.get_state()

    def set_state(self, state: dict) -> None:
        self.sampler.set_state(state)


@dataclasses.dataclass
class Group:
    """One problem's G rollouts and their rewards."""

    problem: int
    trajs: list[Any]
    rewards: np.ndarray  # [G]
    correct: np.ndarray  # [G]

    @property
    def has_variance(self) -> bool:
        return bool(np.ptp(self.rewards) > 0)


@dataclasses.dataclass
class Collected:
    """The groups a step trains on (exactly `target` unless fewer were drawn) and how they were found."""

    groups: list[Group]
    drawn: int  # problems drawn (and rolled out) this step
    kept: int  # groups with non-zero reward variance among `groups`
    rounds: int  # rollout calls
    drawn_rewards: np.ndarray  # rewards of every drawn group (the step's reward curve covers what it sampled)
    drawn_correct: np.ndarray

    def metrics(self) -> dict[str, float]:
        return {
            "groups_drawn": float(self.drawn),
            "groups_kept": float(self.kept),
            "filtered_share": 1.0 - self.kept / self.drawn if self.drawn else 0.0,
            "sampling_rounds": float(self.rounds),
        }


def collect_groups(
    draw: Callable[[int], list[int]],
    roll: Callable[[list[int], int], Sequence[Group]],
    *,
    target: int,
    max_draws: int,
    dynamic: bool = True,
) -> Collected:
    """Draw problems with `draw(k)` and roll them out with `roll(indices, first_draw)` until `target` groups
    have non-zero reward variance or `max_draws` problems were drawn.

    `first_draw` is the number of problems drawn before this round (a stable per-step seed offset). Each round
    draws only the shortfall. With `dynamic=False` it is one round of `target` problems (plain GRPO).
    """
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    cap = max(max_draws, target) if dynamic else target
    kept: list[Group] = []
    flat: list[Group] = []
    all_groups: list[Group] = []
    drawn = rounds = 0
    while len(kept) < target and drawn < cap:
        k = min(target - len(kept), cap - drawn) if dynamic else target
        idx = draw(k)
        groups = list(roll(idx, drawn))
        if len(groups) != len(idx):
            raise ValueError(f"roll returned {len(groups)} groups for {len(idx)} problems")
        drawn += len(idx)
        rounds += 1
        all_groups.extend(groups)
        for gr in groups:
            (kept if (gr.has_variance or not dynamic) else flat).append(gr)
    n_var = sum(gr.has_variance for gr in kept)
    chosen = (kept + flat)[:target]  # short at the cap: top up with zero-variance groups (no gradient)
    return Collected(
        groups=chosen,
        drawn=drawn,
        kept=n_var if dynamic else sum(gr.has_variance for gr in chosen),
        rounds=rounds,
        drawn_rewards=np.concatenate([gr.rewards for gr in all_groups]),
        drawn_correct=np.concatenate([gr.correct for gr in all_groups]),
    )
