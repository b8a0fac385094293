"""The programmatic intervener, one planted flaw at a time (real pool, gold programs of bundled problems),
and its prompt round trip as a chat client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storm_jax.calm.programmatic import ProgrammaticIntervener, code_numbers, parse_prompt
from storm_jax.calm.verdict import FLAW_TYPES, intervener_messages, parse_verdict
from storm_jax.data.format import code_segment
from storm_jax.jobs import read_problems

RES = Path(__file__).resolve().parents[1] / "storm_jax" / "resources" / "tiny"
PROD = "synth-s0-000000-production"  # max profit, 3 capacity rows, truth 522.6
IP = "synth-s0-000003-arith"  # max 4x + 8y, integers, truth 16 (LP relaxation: 20)


@pytest.fixture(scope="module")
def iv():
    from storm_jax.execution.pool import ExecutionPool

    probs = read_problems(RES / "mixed" / "train.problems.jsonl", 1) + read_problems(
        RES / "arith" / "train.problems.jsonl"
    )
    with ExecutionPool(num_workers=2) as pool:
        yield ProgrammaticIntervener(probs, pool, timeout_s=20.0), {p["id"]: p for p in probs}


def _judge(iv, pid, code=None, answer="522.6", old="", new=""):
    inter, probs = iv
    p = probs[pid]
    steps = [("text", "I model the problem.\n\n")]
    if code is not None:
        src = code if code else p["meta"]["program"]
        assert old in src
        steps.append(
            ("code", code_segment(src.replace(old, new, 1) if old else src).text + "\n```output\n...\n```\n")
        )
    steps.append(("text", f"The answer is \\boxed{{{answer}}}."))
    return inter.judge(p, steps)


@pytest.mark.parametrize(
    "old,new,flaw,needle",
    [
        ("", "", None, ""),
        ("sense=pyo.maximize", "sense=pyo.minimize", "objective_error", "maximize"),
        ("'cutting': 67}", "'cutting': 76}", "wrong_data", "76"),
        ("'easel': 8,", "'easel': 20,", "objective_error", "objective"),
        ("resources = ['packing', 'painting', 'cutting']", "resources = ['packing', 'painting']", "constraint_error",
         "missing"),
        ("<= capacity[r]", ">= capacity[r]", "constraint_error", "wrong"),
        ("import pyomo.environ as pyo\n", "import pyomo.environ as pyo\nm = ", "code_error", "does not run"),
    ],
    ids=["flawless", "sense", "data", "objective", "missing-row", "wrong-row", "syntax"],
)  # fmt: skip
def test_planted_flaws_in_an_lp(iv, old, new, flaw, needle):
    v = _judge(iv, PROD, "", old=old, new=new)
    if flaw is None:
        assert v == {"flawless": True, "step": None, "flaw": None, "hint": ""}
        return
    assert v["flaw"] == flaw and v["step"] == 2 and needle in v["hint"], v
    assert "522.6" not in v["hint"]  # hints never give the answer away


def test_integrality_hand_calculation_and_misreport(iv):
    v = _judge(iv, IP, "", answer="20", old="NonNegativeIntegers", new="NonNegativeReals")
    assert v["flaw"] == "missing_integrality"  # one variable left continuous is enough
    v = _judge(iv, IP, None, answer="16")
    assert (v["flaw"], v["step"]) == ("hand_calculation", 2)
    v = _judge(iv, PROD, "", answer="500")
    assert (v["flaw"], v["step"]) == ("result_misreport", 3)
    assert FLAW_TYPES[v["flaw"]][0] == "computation-driven"


def test_as_a_chat_client_from_the_prompt(iv):
    inter, probs = iv
    p = probs[PROD]
    steps = [("text", "Model.\n\n"), ("hint", "\n\nHint: look again\n\n"),
             ("code", code_segment(p["meta"]["program"].replace("'cutting': 67}", "'cutting': 76}")).text)]  # fmt: skip
    msgs = intervener_messages(p["question"], [t for _, t in steps], [k for k, _ in steps])
    q, parsed = parse_prompt(msgs[-1]["content"])
    assert q.strip() == p["question"].strip() and [k for k, _ in parsed] == ["text", "hint", "code"]
    text = inter.complete(msgs).text
    v = parse_verdict(text, 3, [1, 3])
    assert (v.flawless, v.step, v.flaw) == (False, 3, "wrong_data")
    assert json.loads(text)["hint"].startswith("The number 76")


def test_code_numbers_skips_indices_and_digits():
    assert code_numbers("for i in range(3):\n    x = round(2.5 * y, 6) + 1 + 0.0001 + 40") == {2.5, 40.0}
