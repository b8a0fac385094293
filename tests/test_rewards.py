"""Reward and scoring protocols: hand-computed boundary cases, null truths, and scalar == vectorized."""

from __future__ import annotations

import numpy as np
import pytest

from storm_jax.rewards import (
    PROTOCOLS,
    ScoringConfig,
    correct_batch,
    is_correct,
    storm_reward,
    storm_rewards,
)


@pytest.mark.parametrize(
    "protocol,answer,truth,expected",
    [
        # storm: |a-t| <= 1e-4 |t|
        ("storm", 1000.099, 1000.0, True),  # diff 0.099 < 1e-4 * 1000 = 0.1
        ("storm", 1000.11, 1000.0, False),
        ("storm", -500.04, -500.0, True),
        ("storm", 5e-5, 0.0, True),  # t = 0: |a| <= eps_abs
        ("storm", 2e-4, 0.0, False),
        # strict: |a-t|/(|t|+1) <= 1e-6
        ("strict", 1000.0009, 1000.0, True),  # 0.0009/1001 < 1e-6
        ("strict", 1000.0011, 1000.0, False),  # 0.0011/1001 > 1e-6
        ("strict", 5e-7, 0.0, True),
        ("strict", 2e-6, 0.0, False),
        # orlm: round to 2 decimals, within 5 %
        ("orlm", 104.9, 100.0, True),
        ("orlm", 105.2, 100.0, False),
        ("orlm", 0.004, 0.0, True),  # rounds to 0.00
        ("orlm", 0.006, 0.0, False),  # rounds to 0.01
        # abs001: |a-t| < 0.01
        ("abs001", 12.345, 12.34, True),
        ("abs001", 12.36, 12.34, False),
        ("abs001", 1e6 + 0.02, 1e6, False),
    ],
)
def test_numeric_boundaries(protocol, answer, truth, expected):
    assert is_correct(answer, truth, None, protocol) is expected
    assert bool(correct_batch([answer], [truth], [None], protocol)[0]) is expected


def test_null_truths_and_statuses():
    for p in PROTOCOLS:
        assert is_correct("infeasible", None, "infeasible", p)
        assert is_correct("unbounded", None, "infeasible", p)  # sources do not distinguish the two
        assert not is_correct("unbounded", None, "infeasible", p, ScoringConfig(match_status_exactly=True))
        assert not is_correct(0.0, None, "infeasible", p)  # a number never matches a null truth
        assert not is_correct(None, None, "infeasible", p)
        assert not is_correct("infeasible", None, "unknown", p)  # unknown labels are never matched
        assert not is_correct(1.0, None, "unknown", p)
        assert not is_correct("infeasible", 0.0, None, p)  # a status never matches a number
        assert not is_correct(None, 3.0, None, p)
        assert not is_correct(float("nan"), 3.0, None, p)


def test_unknown_protocol_errors():
    with pytest.raises(ValueError, match="unknown scoring protocol 'exact'.*storm, strict, orlm, abs001"):
        is_correct(1.0, 1.0, None, "exact")


def test_storm_reward_values():
    assert storm_reward(3050.0, 3050.0) == 1.0
    assert storm_reward(3051.0, 3050.0) == 0.0
    r = storm_rewards(
        [3050.0, "infeasible", None, 1.0], [3050.0, None, 1.0, None], [None, "infeasible", None, "unknown"]
    )
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, [1, 1, 0, 0])


def test_vectorized_equals_scalar_on_random_inputs():
    rng = np.random.default_rng(0)
    n = 4000
    truths, statuses, answers = [], [], []
    for _ in range(n):
        kind = rng.integers(0, 10)
        if kind == 0:
            truths.append(None)
            statuses.append(["infeasible", "unbounded", "unknown"][rng.integers(0, 3)])
        else:
            t = 0.0 if kind == 1 else float(rng.choice([1, -1]) * 10 ** rng.uniform(-3, 6))
            truths.append(round(t, int(rng.integers(0, 4))))
            statuses.append(None)
        akind = rng.integers(0, 10)
        t = truths[-1] if truths[-1] is not None else 1.0
        if akind == 0:
            answers.append(None)
        elif akind == 1:
            answers.append(["infeasible", "unbounded"][rng.integers(0, 2)])
        else:
            # relative perturbations across every protocol's threshold, plus exact hits
            scale = 10 ** rng.uniform(-9, -0.5) * rng.choice([0, 1, -1])
            answers.append(float(t * (1 + scale) + rng.choice([0, 1e-7, 5e-3, 0.02])))
    for p in PROTOCOLS:
        for cfg in (ScoringConfig(), ScoringConfig(match_status_exactly=True)):
            scalar = np.array([is_correct(a, t, s, p, cfg) for a, t, s in zip(answers, truths, statuses)])
            vec = correct_batch(answers, truths, statuses, p, cfg)
            np.testing.assert_array_equal(scalar, vec)
            assert 0.05 < scalar.mean() < 0.95  # both outcomes are exercised
