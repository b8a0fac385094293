"""StepORLM-style warm-up augmentations of a parameter dict. Each returns *new parameters*; the caller
builds a fresh instance from them and re-solves it (answers are never carried over or assumed).

- paraphrase: the same numbers, a different phrasing (templates, clause order, wording);
- answer-unit conversion: the question asks for the objective in cents or in thousands; the gold program
  converts and the reference form's `scale` converts independently;
- parameter scaling: the family's scalable parameters multiplied by a factor.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from storm_jax.data.synth.family import Family

AUGMENTATIONS = ("paraphrase", "unit", "scale")


def unit_convert(fam: Family, p: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """Ask for the answer in another unit of money; None when the objective is not money."""
    cur = fam.currency_of(p)
    if cur is None:
        return None
    q = copy.deepcopy(p)
    sub = {"dollars": "cents", "euros": "cents", "pounds": "pence"}[cur]
    if rng.random() < 0.5:
        q["answer_unit"] = {
            "factor": 100.0,
            "ask": f"Give the answer in {sub}, not {cur}.",
            "reason": f"The answer is asked in {sub}: multiply the objective in {cur} by 100.",
            "note": f"{cur} -> {sub}",
        }
    else:
        q["answer_unit"] = {
            "factor": 0.001,
            "ask": f"Express the answer in thousands of {cur}.",
            "reason": f"The answer is asked in thousands of {cur}: divide the objective by 1000.",
            "note": f"{cur} -> thousands of {cur}",
        }
    return q


def _scale_value(v: Any, k: int) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v * k
    if isinstance(v, float):
        return round(v * k, 2)
    if isinstance(v, list):
        return [_scale_value(x, k) for x in v]
    if isinstance(v, dict):
        return {a: _scale_value(b, k) for a, b in v.items()}
    return v


def scale(fam: Family, p: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """Multiply one of the family's scalable parameters by 2, 3, 5 or 10."""
    keys = [k for k in fam.scalable if k in p and p[k] is not None]
    if not keys:
        return None
    q = copy.deepcopy(p)
    key, k = rng.choice(keys), rng.choice([2, 3, 5, 10])
    q[key] = _scale_value(q[key], k)
    return q


def augment(fam: Family, kind: str, p: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """Apply augmentation `kind` to parameters `p` (None when it does not apply to this family)."""
    if kind == "paraphrase":
        return copy.deepcopy(p)  # the statement is re-rendered with a fresh rng by the caller
    if kind == "unit":
        return unit_convert(fam, p, rng)
    if kind == "scale":
        return scale(fam, p, rng)
    raise ValueError(f"unknown augmentation {kind!r} (expected one of {AUGMENTATIONS})")
