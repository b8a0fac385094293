"""The programmatic critic on planted flaws of a synthetic problem's gold solution (STORM and titled layouts)."""

import json

from storm_jax.steporlm.critic import GoldModel, critique
from storm_jax.steporlm.genprm import process_score
from storm_jax.steporlm.policy_format import STEP_TITLES, format_problems, segment_steps

ROW = json.loads(open("storm_jax/resources/tiny/arith/train.problems.jsonl").readline())
Q, PROG = ROW["question"], ROW["meta"]["program"]  # min 35x+35y s.t. 5x+y>=8, x+y>=27, 2x+3y>=6


def storm(program, boxed="945", out="OBJECTIVE: 945.0"):
    return (f"Let x, y >= 0; minimize the objective under the 3 constraints.\n\n```python\n{program}```\n"
            f"```output\n{out}\n```\n\n\\boxed{{{boxed}}}")  # fmt: skip


def test_gold_model_from_program():
    g = GoldModel.from_problem(Q, PROG)
    assert g.sense == "minimize" and not g.integer
    assert g.constraints == ("5*m.x+m.y>=8", "m.x+m.y>=27", "2*m.x+3*m.y>=6")
    assert {35.0, 8.0, 27.0, 6.0, 5.0} <= g.data_numbers


def test_gold_solution_is_all_correct():
    text, c, steps = critique(Q, PROG, storm(PROG))
    assert [s.kind for s in steps] == ["text", "code", "text"]
    assert c.ok and c.verdicts == [True, True, True] and c.final is True and process_score(c) == 1.0


def test_planted_flaws_land_on_their_steps():
    cases = {
        "sense": (PROG.replace("pyo.minimize", "pyo.maximize"), "should minimize"),
        "integrality": (PROG.replace("NonNegativeReals", "NonNegativeIntegers"), "continuous"),
        "dropped constraint": (
            PROG.replace("m.c2 = pyo.Constraint(expr=m.x + m.y >= 27)\n", ""),
            "m.x+m.y>=27",
        ),
        "wrong number": (PROG.replace(">= 27", ">= 72"), "72 is not in the problem"),
    }
    for name, (prog, reason) in cases.items():
        _, c, _ = critique(Q, PROG, storm(prog))
        assert c.ok and c.verdicts == [True, False, True], name
        assert reason in c.reasons[1], (name, c.reasons[1])
        assert process_score(c) == 2 / 3 and c.final is False


def test_failed_program_and_hand_calculation():
    _, c, _ = critique(Q, PROG, storm(PROG, out="Traceback (most recent call last):\nNameError: x"))
    assert c.verdicts == [True, False, False]  # did not run; the box has no printed objective behind it
    _, c, _ = critique(Q, PROG, "27 units at 35 each.\n\n\\boxed{945}")
    assert c.verdicts == [True, False] and "computed by hand" in c.reasons[1]
    _, c, _ = critique(Q, PROG, storm(PROG, boxed="946"))
    assert c.verdicts == [True, True, False] and "not the objective the program printed" in c.reasons[2]


def test_titled_layout_checks_by_title():
    bodies = {"Objective Function": "minimize 35 x + 35 y", "Python Code": f"```python\n{PROG}```"}
    sol = "".join(
        f"<step>\nStep {k}: {t}\n{bodies.get(t, 'as stated')}\n</step>\n"
        for k, t in enumerate(STEP_TITLES, 1)
    )
    sol += "\\boxed{945}"
    assert format_problems(sol) == []
    steps = segment_steps(sol)
    assert len(steps) == 9 and steps[3].title == "Objective Function"
    ex = {"status": "ok", "answer": 945.0}
    _, c, _ = critique(Q, PROG, sol, execution=ex)
    assert c.ok and all(c.verdicts), c.reasons
    bad = sol.replace("pyo.minimize", "pyo.maximize")
    _, c, _ = critique(Q, PROG, bad, execution=ex)
    wrong = [k for k, v in enumerate(c.verdicts, 1) if not v]
    assert wrong == [4, 9], c.reasons  # Objective Function and Python Code


def test_terse_style_same_verdicts_short_reasons():
    cases = {
        "gold": (PROG, "ok"),
        "sense": (PROG.replace("pyo.minimize", "pyo.maximize"), "wrong sense"),
        "integrality": (PROG.replace("NonNegativeReals", "NonNegativeIntegers"), "wrong integrality"),
        "dropped": (PROG.replace("m.c2 = pyo.Constraint(expr=m.x + m.y >= 27)\n", ""), "missing constraint"),
        "wrong number": (PROG.replace(">= 27", ">= 72"), "missing constraint"),  # the step's first issue
    }
    for name, (prog, reason) in cases.items():
        full_text, full, _ = critique(Q, PROG, storm(prog))
        text, c, _ = critique(Q, PROG, storm(prog), style="terse")
        assert c.ok and c.verdicts == full.verdicts and c.final == full.final, name
        assert c.reasons[1] == reason and len(text) < len(full_text), (name, c.reasons)
    text, c, _ = critique(Q, PROG, "Let x, y >= 0.", style="terse")  # cut before its program
    assert text == "Checked every step.\n\nStep 1: incorrect — no program\nFinal: incorrect"
