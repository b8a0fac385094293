"""The CPU demo family `cart`: every gold program is right, and the relaxation it uses is safe exactly
where it is used (so the lesson left for GRPO is real: relaxing elsewhere gives a wrong answer)."""

from __future__ import annotations

import random

from storm_jax.data.synth.families import ALL_FAMILIES, FAMILIES
from storm_jax.data.synth.families_demo import DIVISIBLE_SHARE
from storm_jax.data.synth.runner import LocalRunner


def _instances(n: int):
    fam = FAMILIES["cart"]
    return [fam.build(random.Random(f"cart-test/{k}"), 0, False, f"c{k}") for k in range(n)]


def test_teacher_relaxes_exactly_the_divisible_problems():
    insts = _instances(400)
    for inst in insts:
        p = inst.params
        relaxed = "NonNegativeReals" in inst.program
        assert relaxed == (p["cap"] % p["w"] == 0), p
        # every number the program uses is stated in the question, in the order the program uses it
        assert inst.question.index(f"earns {p['v']} ") < inst.question.index(f"weighs {p['w']} ")
        assert f"at most {p['cap']} kg" in inst.question
    share = sum("NonNegativeReals" in i.program for i in insts) / len(insts)
    # binomial: 400 draws, sd = sqrt(0.6 * 0.4 / 400) ~ 0.0245; 4 sd either side
    assert abs(share - DIVISIBLE_SHARE) < 4 * 0.0245


def test_relaxing_a_non_divisible_problem_gives_a_wrong_answer():
    fam = FAMILIES["cart"]
    p = {"v": 7, "w": 3, "cap": 20}
    relaxed = fam.program(p).replace("NonNegativeIntegers", "NonNegativeReals")
    with LocalRunner() as r:
        good, bad = r.run(fam.program(p)), r.run(relaxed)
    assert good.answer == fam.reference(p) == 42.0
    # the LP optimum 140/3 = 46.67, printed rounded to a whole number like every cart answer: 47, off by 12 %
    assert bad.answer == round(7 * 20 / 3) == 47


def test_cart_is_not_part_of_all():
    assert "cart" in FAMILIES and "cart" not in ALL_FAMILIES and "arith" in ALL_FAMILIES
