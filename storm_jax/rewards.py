r"""The STORM reward and the scoring protocols, as pure functions.

An answer is a float, ``"infeasible"``, ``"unbounded"`` or ``None`` (see `storm_jax.execution.answers`).
A ground truth is a float, or ``None`` with a status ``"infeasible"`` / ``"unbounded"`` / ``"unknown"``.

Protocols (``a`` answer, ``t`` ground truth):

=========  ===========================================================================================
storm      |a − t| ≤ ε·|t| when t ≠ 0, |a| ≤ ε_abs when t = 0 (ε = ε_abs = 1e-4 by default: the paper does
           not publish ε, these are guesses)
strict     |a − t| / (|t| + 1) ≤ 1e-6 (SIRL, OptiMind)
orlm       ORLM's evaluation (Cardinal-Operations/ORLM, ``eval/execute.py``): A = round(a) and
           T = round(t), Python's ``round`` to the nearest integer (ties to even), then
           |(A − T) / T| ≤ tol when T ≠ 0 and |A| ≤ tol when T = 0 (tol = 0.05, ORLM's
           ``--numerical_err_tolerance`` default)
abs001     |a − t| < 0.01 (ORThought)
round2     both rounded to 2 decimals, then |r(a) − r(t)| ≤ 5 %·|r(t)|, or r(a) = 0 when r(t) = 0 (this
           project's earlier reading of ORLM's rule, kept for comparison with runs scored that way; in
           binary floats as before, so a difference of exactly 5 % in decimal may land either side)
=========  ===========================================================================================

Null ground truths, in every protocol: a truth labelled infeasible/unbounded is matched only by an
explicit ``"infeasible"`` or ``"unbounded"`` answer. The benchmark sources do not tell infeasible from
unbounded apart (README of the benchmarks: ``-99999`` / "No Best Solution" means either), so either status
answer matches either status label unless ``match_status_exactly=True``. This is also ORLM's rule: its
programs print "No Best Solution" whenever the solver stops without an optimum, and that string matches
only a "No Best Solution" truth, which no number matches. A truth of status ``"unknown"`` is never matched
(the scorer counts these rows separately). A numeric truth is never matched by a status.

The batch variant (:func:`correct_batch` / :func:`correct_arrays`) is the same rule in numpy over
encoded arrays; tests check both agree element by element.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

Answer = float | str | None

# Encoding of answers / truths for the vectorized variant.
NUMERIC, INFEASIBLE_CODE, UNBOUNDED_CODE, MISSING = 0, 1, 2, 3
_STATUS_CODES = {"infeasible": INFEASIBLE_CODE, "unbounded": UNBOUNDED_CODE}

DEFAULT_EPS = 1e-4
DEFAULT_EPS_ABS = 1e-4


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """Tolerances of all protocols (`eps` and `eps_abs` are guesses: the STORM paper does not publish them).

    `orlm_rel` is the tolerance of both `orlm` and `round2`; `orlm_ndigits` the decimals `round2` keeps.
    """

    eps: float = DEFAULT_EPS
    eps_abs: float = DEFAULT_EPS_ABS
    strict_tol: float = 1e-6
    orlm_rel: float = 0.05
    orlm_ndigits: int = 2
    abs_tol: float = 0.01
    match_status_exactly: bool = False


#: The default tolerances (a frozen instance, safe as a default argument).
DEFAULT_CONFIG = ScoringConfig()


# ---------------------------------------------------------------------------------------------------------
# Scalar rules on two floats
# ---------------------------------------------------------------------------------------------------------


def _storm(a: float, t: float, c: ScoringConfig) -> bool:
    if t == 0.0:
        return abs(a) <= c.eps_abs
    return abs(a - t) <= c.eps * abs(t)


def _strict(a: float, t: float, c: ScoringConfig) -> bool:
    return abs(a - t) / (abs(t) + 1.0) <= c.strict_tol


def _orlm(a: float, t: float, c: ScoringConfig) -> bool:
    """ORLM's check (Cardinal-Operations/ORLM, eval/execute.py), as that script applies it.

    Prediction and truth are both rounded to the nearest integer with Python's ``round`` (ties to even:
    round(0.5) == 0, round(2.5) == 2); then a zero rounded truth accepts |round(a)| ≤ tol, any other the
    relative error |(round(a) − round(t)) / round(t)| ≤ tol, computed in that order. So 10.6 against a truth
    of 10.4 is 11 against 10, 10 % off: wrong; 0.4 against a truth of 0 is right.
    """
    # Python ints, as in ORLM: the difference is exact and int / int is correctly rounded.
    ra, rt = round(a), round(t)
    if rt == 0:
        return abs(ra) <= c.orlm_rel
    return abs((ra - rt) / rt) <= c.orlm_rel


def _round2(a: float, t: float, c: ScoringConfig) -> bool:
    ra, rt = round(a, c.orlm_ndigits), round(t, c.orlm_ndigits)
    if rt == 0.0:
        return ra == 0.0
    return abs(ra - rt) <= c.orlm_rel * abs(rt)


def _abs001(a: float, t: float, c: ScoringConfig) -> bool:
    return abs(a - t) < c.abs_tol


_NUMERIC_RULES: dict[str, Callable[[float, float, ScoringConfig], bool]] = {
    "storm": _storm,
    "strict": _strict,
    "orlm": _orlm,
    "abs001": _abs001,
    "round2": _round2,
}
PROTOCOLS: tuple[str, ...] = tuple(_NUMERIC_RULES)


def check_protocol(name: str) -> str:
    """`name` if it is a known protocol, else a ValueError listing the known ones."""
    if name not in _NUMERIC_RULES:
        raise ValueError(f"unknown scoring protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return name


def _truth_code(truth: float | None, truth_status: str | None) -> int:
    if truth is not None:
        if isinstance(truth, str):
            raise TypeError(f"ground truth must be a float or None, got {truth!r}")
        return NUMERIC
    if truth_status in _STATUS_CODES:
        return _STATUS_CODES[truth_status]
    return MISSING  # "unknown" or no status at all: cannot be matched


def is_correct(
    answer: Answer,
    truth: float | None,
    truth_status: str | None = None,
    protocol: str = "storm",
    config: ScoringConfig = DEFAULT_CONFIG,
) -> bool:
    """Whether `answer` matches the ground truth under `protocol` (see module docstring)."""
    rule = _NUMERIC_RULES[check_protocol(protocol)]
    tcode = _truth_code(truth, truth_status)
    if answer is None:
        return False
    if isinstance(answer, str):
        acode = _STATUS_CODES.get(answer.lower())
        if acode is None or tcode not in (INFEASIBLE_CODE, UNBOUNDED_CODE):
            return False
        return acode == tcode if config.match_status_exactly else True
    if tcode != NUMERIC:
        return False
    a, t = float(answer), float(truth)
    if not (math.isfinite(a) and math.isfinite(t)):
        return False
    return bool(rule(a, t, config))


def storm_reward(
    answer: Answer,
    truth: float | None,
    truth_status: str | None = None,
    config: ScoringConfig = DEFAULT_CONFIG,
) -> float:
    """The STORM outcome reward: 1.0 if the answer matches under the `storm` protocol, else 0.0."""
    return 1.0 if is_correct(answer, truth, truth_status, "storm", config) else 0.0


# ---------------------------------------------------------------------------------------------------------
# Vectorized variant
# ---------------------------------------------------------------------------------------------------------


def encode_answers(answers: Sequence[Answer]) -> tuple[np.ndarray, np.ndarray]:
    """Answers -> (float64 values with NaN where not numeric, int8 codes NUMERIC/INFEASIBLE/UNBOUNDED/MISSING)."""
    values = np.full(len(answers), np.nan, dtype=np.float64)
    codes = np.full(len(answers), MISSING, dtype=np.int8)
    for i, a in enumerate(answers):
        if a is None:
            continue
        if isinstance(a, str):
            codes[i] = _STATUS_CODES.get(a.lower(), MISSING)
        else:
            values[i] = float(a)
            codes[i] = NUMERIC if math.isfinite(values[i]) else MISSING
    return values, codes


def encode_truths(
    truths: Sequence[float | None], statuses: Sequence[str | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truths -> (float64 values, int8 codes), the same encoding as `encode_answers`."""
    if len(truths) != len(statuses):
        raise ValueError(f"{len(truths)} truths but {len(statuses)} statuses")
    values = np.array([np.nan if t is None else float(t) for t in truths], dtype=np.float64)
    codes = np.array([_truth_code(t, s) for t, s in zip(truths, statuses)], dtype=np.int8)
    return values, codes


def _round_half_even(x: np.ndarray, ndigits: int) -> np.ndarray:
    # Python's round() on floats is correctly rounded half-even on the exact decimal value; np.round
    # scales by 10**n first, which can differ on ties. Use Python's rule per element for agreement.
    return np.array([round(float(v), ndigits) if np.isfinite(v) else np.nan for v in x], dtype=np.float64)


def correct_arrays(
    a_vals: np.ndarray,
    a_codes: np.ndarray,
    t_vals: np.ndarray,
    t_codes: np.ndarray,
    protocol: str = "storm",
    config: ScoringConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """Element-wise `is_correct` over encoded arrays (see `encode_answers` / `encode_truths`)."""
    check_protocol(protocol)
    a = np.asarray(a_vals, dtype=np.float64)
    t = np.asarray(t_vals, dtype=np.float64)
    ac, tc = np.asarray(a_codes), np.asarray(t_codes)
    if not (a.shape == t.shape == ac.shape == tc.shape):
        raise ValueError(f"shape mismatch: {a.shape}, {ac.shape}, {t.shape}, {tc.shape}")
    numeric = (ac == NUMERIC) & (tc == NUMERIC) & np.isfinite(a) & np.isfinite(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(a - t)
        if protocol == "storm":
            ok = np.where(t == 0.0, np.abs(a) <= config.eps_abs, diff <= config.eps * np.abs(t))
        elif protocol == "strict":
            ok = diff / (np.abs(t) + 1.0) <= config.strict_tol
        elif protocol == "orlm":
            # np.rint rounds ties to even on the exact binary value, as Python's round(x) does; below 2**53
            # the float difference of two integers is exact, so this equals the scalar rule there.
            ra, rt = np.rint(a), np.rint(t)
            ok = np.where(rt == 0.0, np.abs(ra) <= config.orlm_rel, np.abs((ra - rt) / rt) <= config.orlm_rel)
        elif protocol == "round2":
            ra, rt = _round_half_even(a, config.orlm_ndigits), _round_half_even(t, config.orlm_ndigits)
            ok = np.where(rt == 0.0, ra == 0.0, np.abs(ra - rt) <= config.orlm_rel * np.abs(rt))
        else:  # abs001
            ok = diff < config.abs_tol
    status_a = (ac == INFEASIBLE_CODE) | (ac == UNBOUNDED_CODE)
    status_t = (tc == INFEASIBLE_CODE) | (tc == UNBOUNDED_CODE)
    status_ok = status_a & status_t & ((ac == tc) if config.match_status_exactly else True)
    return (numeric & ok) | status_ok


def correct_batch(
    answers: Sequence[Answer],
    truths: Sequence[float | None],
    truth_statuses: Sequence[str | None],
    protocol: str = "storm",
    config: ScoringConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """`is_correct` for a batch, vectorized: a bool array of len(answers)."""
    if len(answers) != len(truths):
        raise ValueError(f"{len(answers)} answers but {len(truths)} truths")
    a_vals, a_codes = encode_answers(answers)
    t_vals, t_codes = encode_truths(truths, truth_statuses)
    return correct_arrays(a_vals, a_codes, t_vals, t_codes, protocol, config)


def storm_rewards(
    answers: Sequence[Answer],
    truths: Sequence[float | None],
    truth_statuses: Sequence[str | None],
    config: ScoringConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """STORM rewards for a batch (float32 0/1), e.g. a GRPO group."""
    return correct_batch(answers, truths, truth_statuses, "storm", config).astype(np.float32)
