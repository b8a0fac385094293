"""Reward and scoring protocols: hand-computed boundary cases, null truths, and scalar == vectorized."""

from __future__ import annotations

from fractions import Fraction

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
        # round2 (the 2-decimal rule `orlm` had before it followed ORLM's code): round to 2 decimals, within 5 %
        ("round2", 104.9, 100.0, True),
        ("round2", 105.2, 100.0, False),
        ("round2", 0.004, 0.0, True),  # rounds to 0.00
        ("round2", 0.006, 0.0, False),  # rounds to 0.01
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


def _random_inputs(seed: int = 0, n: int = 4000):
    """(answers, truths, statuses): null truths, status answers, and numbers across every threshold."""
    rng = np.random.default_rng(seed)
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
    return answers, truths, statuses


def test_vectorized_equals_scalar_on_random_inputs():
    answers, truths, statuses = _random_inputs()
    for p in PROTOCOLS:
        for cfg in (ScoringConfig(), ScoringConfig(match_status_exactly=True)):
            scalar = np.array([is_correct(a, t, s, p, cfg) for a, t, s in zip(answers, truths, statuses)])
            vec = correct_batch(answers, truths, statuses, p, cfg)
            np.testing.assert_array_equal(scalar, vec)
            assert 0.05 < scalar.mean() < 0.95  # both outcomes are exercised


# ---------------------------------------------------------------------------------------------------------
# Threshold cases against a third, separately written reference
# ---------------------------------------------------------------------------------------------------------


def reference_rule(protocol: str, a: float, t: float, cfg: ScoringConfig) -> bool:
    """Each protocol once more, in exact rational arithmetic on the given floats (no float rounding at all).

    Deliberately plain: multiply instead of divide where it is the same inequality, Fraction's own
    round-half-to-even. It shares no code with storm_jax.rewards.
    """
    a, t = Fraction(a), Fraction(t)
    if protocol == "storm":
        if t == 0:
            return abs(a) <= Fraction(cfg.eps_abs)
        return abs(a - t) <= Fraction(cfg.eps) * abs(t)
    if protocol == "strict":
        return abs(a - t) <= Fraction(cfg.strict_tol) * (abs(t) + 1)
    if protocol == "orlm":
        big_a, big_t = round(a), round(t)  # ints, ties to even (ORLM applies Python's round to both)
        if big_t == 0:
            return abs(big_a) <= Fraction(cfg.orlm_rel)
        return abs(Fraction(big_a - big_t, big_t)) <= Fraction(cfg.orlm_rel)
    if protocol == "round2":
        ra, rt = round(a, cfg.orlm_ndigits), round(t, cfg.orlm_ndigits)
        if rt == 0:
            return ra == 0
        return abs(ra - rt) <= Fraction(cfg.orlm_rel) * abs(rt)
    if protocol == "abs001":
        return abs(a - t) < Fraction(cfg.abs_tol)
    raise AssertionError(protocol)


# Power-of-two tolerances make "exactly on the threshold" exact in floating point, whatever the formula.
DYADIC = ScoringConfig(eps=2**-4, eps_abs=2**-3, strict_tol=2**-10, abs_tol=2**-7, orlm_rel=1.0)
D = DYADIC
DEF = ScoringConfig()

# (protocol, answer, truth, config, expected): hand-computed; "on" = exactly on the threshold.
THRESHOLD_CASES = [
    # storm, default eps = eps_abs = 1e-4: 1e-4 * 10000 is 1.0 in floating point, so 10001 is on it
    ("storm", 10001.0, 10000.0, DEF, True),  # on: |a-t| = 1 = eps*|t|
    ("storm", 9999.0, 10000.0, DEF, True),  # on, from below
    ("storm", -10001.0, -10000.0, DEF, True),  # on, negative truth
    ("storm", 10001.000001, 10000.0, DEF, False),  # just past
    ("storm", 1e-4, 0.0, DEF, True),  # on: zero truth, |a| = eps_abs
    ("storm", -1e-4, 0.0, DEF, True),
    ("storm", 1.000001e-4, 0.0, DEF, False),  # just past
    ("storm", 17.0, 16.0, D, True),  # on: 1 = 2^-4 * 16
    ("storm", 17.0 + 2**-30, 16.0, D, False),
    ("storm", 0.125, 0.0, D, True),  # on: |a| = 2^-3
    ("storm", 0.125 + 2**-40, 0.0, D, False),
    # strict: |a-t| / (|t|+1) <= tol
    ("strict", 1e-6, 0.0, DEF, True),  # on: 1e-6 / 1
    ("strict", 1.000001e-6, 0.0, DEF, False),
    ("strict", 3.0 + 2**-8, 3.0, D, True),  # on: 2^-8 / 4 = 2^-10
    ("strict", 3.0 + 2**-8 + 2**-40, 3.0, D, False),
    ("strict", -3.0 - 2**-8, -3.0, D, True),
    # orlm (ORLM's eval/execute.py): round both to integers (ties to even), then relative error <= 0.05
    ("orlm", 10.6, 10.4, DEF, False),  # 11 vs 10: 10 % off (the 2-decimal rule accepted it)
    ("orlm", 105.0, 100.0, DEF, True),  # on: 5/100
    ("orlm", 94.6, 100.0, DEF, True),  # on: rounds to 95
    ("orlm", 105.49, 100.0, DEF, True),  # rounds to 105: on
    ("orlm", 105.4, 100.0, DEF, True),  # on only because the answer is rounded (5.4 % unrounded)
    ("orlm", 105.5, 100.0, DEF, False),  # tie -> 106 (even): just past
    ("orlm", 94.5, 100.0, DEF, False),  # tie -> 94 (even), not 95: just past
    ("orlm", 95.5, 100.0, DEF, True),  # tie -> 96
    ("orlm", 21.0, 19.6, DEF, True),  # on only because the truth is rounded: 21 vs 20 (7.1 % unrounded)
    ("orlm", 22.0, 20.5, DEF, False),  # truth tie -> 20 (even): 10 % off
    ("orlm", 1_050_000.0, 1_000_000.0, DEF, True),  # on
    ("orlm", 1_050_001.0, 1_000_000.0, DEF, False),  # just past
    ("orlm", -105.0, -100.0, DEF, True),  # on, negative
    ("orlm", -105.5, -100.0, DEF, False),
    ("orlm", 0.0, 0.4, DEF, True),  # the truth rounds to 0: |0| <= tol
    ("orlm", 0.4, 0.0, DEF, True),  # the answer rounds to 0
    ("orlm", 0.5, 0.0, DEF, True),  # tie -> 0 (even)
    ("orlm", -0.5, 0.0, DEF, True),
    ("orlm", 0.51, 0.0, DEF, False),  # rounds to 1 > 0.05
    ("orlm", -0.51, 0.0, DEF, False),
    ("orlm", 1.4, 0.3, D, True),  # on with tol 1: |round(1.4)| = 1 <= 1 for a zero rounded truth
    ("orlm", 1.5, 0.3, D, False),  # tie -> 2
    # abs001: |a-t| < tol, strictly
    ("abs001", 0.01, 0.0, DEF, False),  # on: not accepted
    ("abs001", 0.0099, 0.0, DEF, True),
    ("abs001", 1.0 + 2**-7, 1.0, D, False),  # on, exactly
    ("abs001", 1.0 + 2**-7 - 2**-30, 1.0, D, True),  # just inside
    # round2: both to 2 decimals, then |r(a)-r(t)| <= 5 % |r(t)|
    ("round2", 10.6, 10.4, DEF, True),
    ("round2", 105.0, 100.0, DEF, True),  # on
    ("round2", 105.004, 100.0, DEF, True),  # rounds to 105.0: on
    ("round2", 105.006, 100.0, DEF, False),  # rounds to 105.01: just past
    ("round2", 0.004, 0.0, DEF, True),
    ("round2", 0.006, 0.0, DEF, False),
]


@pytest.mark.parametrize("protocol,answer,truth,cfg,expected", THRESHOLD_CASES)
def test_thresholds_against_reference(protocol, answer, truth, cfg, expected):
    assert (
        reference_rule(protocol, answer, truth, cfg) is expected
    )  # the reference agrees with the hand value
    assert is_correct(answer, truth, None, protocol, cfg) is expected
    assert bool(correct_batch([answer], [truth], [None], protocol, cfg)[0]) is expected
    if protocol == "storm":  # the GRPO reward goes through the same rule
        assert storm_reward(answer, truth, None, cfg) == float(expected)
        assert storm_rewards([answer], [truth], [None], cfg)[0] == float(expected)


def test_every_protocol_has_threshold_cases():
    on_or_past = {p: {c[4] for c in THRESHOLD_CASES if c[0] == p} for p in PROTOCOLS}
    assert all(v == {True, False} for v in on_or_past.values()), on_or_past


def test_orlm_status_answers_follow_no_best_solution():
    # ORLM: a "No Best Solution" truth is matched only by that string; a number never matches it, and the
    # string never matches a numeric truth.
    assert is_correct("infeasible", None, "infeasible", "orlm")
    assert is_correct("unbounded", None, "unbounded", "orlm")
    assert not is_correct(0.0, None, "infeasible", "orlm")
    assert not is_correct("infeasible", 0.0, None, "orlm")


@pytest.mark.parametrize("protocol", ["storm", "strict", "orlm", "abs001"])
def test_reference_agrees_on_random_inputs(protocol):
    # round2 is left out: it compares 2-decimal roundings in binary floats, so a difference of exactly 5 %
    # in decimal (0.38 against 0.40) lands on either side; the exact reference accepts all of them.
    answers, truths, _ = _random_inputs()
    pairs = [(a, t) for a, t in zip(answers, truths) if isinstance(a, float) and t is not None]
    got = [is_correct(a, t, None, protocol) for a, t in pairs]
    want = [reference_rule(protocol, a, t, DEF) for a, t in pairs]
    assert len(pairs) > 2000 and min(sum(want), len(want) - sum(want)) >= 50  # both outcomes, often
    assert got == want
