"""GRPO group advantages at the edges: groups whose reward spread is tiny but not zero.

Reference: the textbook formula written out per group in float64, A = (r - mean) / (std + eps). A group whose
std is far below eps must get advantages of about spread / eps (small), not O(1) values: dividing by the std
alone, or putting eps under the square root, would turn rounding-level reward noise into a full-size signal.
"""

from __future__ import annotations

import numpy as np
import pytest
from tolerances import U32, assert_within, group_advantage_atol

from storm_jax.train.grpo_loss import group_advantages


def _reference(r: list[float], eps: float, ddof: int = 0) -> np.ndarray:
    r = np.asarray(r, np.float64)
    mean = sum(r) / len(r)
    var = sum((x - mean) ** 2 for x in r) / (len(r) - ddof)
    return (r - mean) / (var**0.5 + eps)


@pytest.mark.parametrize("spread", [1e-9, 1e-8, 1e-7, 1e-5])
def test_near_zero_std_group(spread):
    eps = 1e-6
    group = [0.5, 0.5 + spread, 0.5, 0.5 - spread]
    other = [1.0, 0.0, 0.0, 1.0]  # an ordinary binary group beside it
    ga = group_advantages(np.array([group, other]), eps=eps)
    want = _reference(group, eps)
    # float64 in both programs (in other summation orders), the library's rounded to fp32; near-zero spreads
    # make the float64 centering error (~U64 |r|) large relative to r - mean (tests/tolerances.py)
    assert_within(ga.advantages[0], want, group_advantage_atol(want, group, eps), f"spread {spread}")
    assert not ga.zero_variance[0].any()  # distinct rewards: not flagged as zero-variance
    std = np.std(group)
    # |A| <= spread / (std + eps): for std << eps that is about spread / eps, far below 1
    assert np.abs(ga.advantages[0]).max() <= spread / (std + eps) * (1 + 1e-6)
    if spread <= 1e-8:
        assert np.abs(ga.advantages[0]).max() < 0.02
    want = _reference(other, eps)
    assert_within(ga.advantages[1], want, group_advantage_atol(want, other, eps), "binary group")


def test_rounding_noise_rewards_are_not_a_signal():
    """0.1 + 0.2 and 0.3 differ in the last bit: the group is not zero-variance, but its advantages are ~1e-11."""
    group = [0.3, 0.1 + 0.2, 0.3, 0.3]
    ga = group_advantages(np.array([group]))
    assert np.abs(ga.advantages).max() < 1e-9
    # Here r - mean is itself rounding noise (an order-independent bound would exceed the values); the claim is
    # the bound above. Both programs sum in float64 in input order (np.bincount, a Python loop), so they agree
    # bitwise but for pow vs sqrt (within an ulp of float64), then the fp32 cast rounds by u: rtol 2u.
    np.testing.assert_allclose(ga.advantages[0], _reference(group, 1e-6), rtol=2 * U32, atol=0)
