"""GenPRM critique parsing: well-formed critiques with hand-checked process scores, and hostile ones (each a
counted parse failure with its reason, never a score)."""

import pytest

from storm_jax.steporlm.genprm import build_critique_messages, format_critique, parse_critique, process_score
from storm_jax.steporlm.policy_format import segment_steps

GOOD = """The variables are right. Step 3's constraint flips the inequality, which matters.

Step 1: correct — variables defined
Step 2: correct — objective is right
Step 3: incorrect — the capacity constraint uses >= instead of <=
Step 4: correct - the program runs

Final: incorrect
"""


def test_well_formed_critique_and_hand_checked_score():
    c = parse_critique(GOOD, 4)
    assert c.ok, c.failure
    assert c.verdicts == [True, True, False, True]
    assert c.reasons[2] == "the capacity constraint uses >= instead of <="
    assert c.final is False
    assert process_score(c) == 0.75  # 3 of 4 steps correct, by hand


@pytest.mark.parametrize(
    "verdicts,score",
    [([True] * 9, 1.0), ([False] * 3, 0.0), ([True, False, False, False, True], 0.4), ([False, True], 0.5)],
)
def test_scores_of_formatted_critiques(verdicts, score):
    c = parse_critique(format_critique(verdicts, ["r"] * len(verdicts), "some thought"), len(verdicts))
    assert c.ok and process_score(c) == score and c.final is all(verdicts)


def _crit(*lines):
    return "reasoning first.\n" + "\n".join(lines) + "\n"


HOSTILE = {
    "missing": (
        _crit("Step 1: correct — a", "Step 3: correct — c", "Final: correct"),
        3,
        "out of order (missing step 2)",
    ),
    "missing_last": (
        _crit("Step 1: correct — a", "Step 2: correct — b", "Final: correct"),
        3,
        "missing step 3",
    ),
    "repeated": (
        _crit("Step 1: correct — a", "Step 1: correct — a", "Step 2: correct", "Final: correct"),
        2,
        "step 1 repeated",
    ),
    "out_of_order": (
        _crit("Step 2: correct — b", "Step 1: correct — a", "Final: correct"),
        2,
        "step 2 out of order",
    ),
    "out_of_range": (
        _crit("Step 1: correct — a", "Step 2: correct — b", "Step 3: correct", "Final: correct"),
        2,
        "step 3 is out of range 1..2",
    ),
    "step_zero": (_crit("Step 0: correct — a", "Final: correct"), 1, "step 0 is out of range"),
    "unknown_word": (
        _crit("Step 1: correct — a", "Step 2: partially — b", "Final: incorrect"),
        2,
        "unknown verdict word 'partially'",
    ),
    "capitalized_word": (_crit("Step 1: Correct — a", "Final: correct"), 1, "unknown verdict word 'Correct'"),
    "no_final": (_crit("Step 1: correct — a", "Step 2: correct — b"), 2, "no final line"),
    "bad_final": (_crit("Step 1: correct — a", "Final: maybe"), 1, "malformed final line"),
    "final_first": ("Final: correct\nStep 1: correct — a\n", 1, "final line before any verdict line"),
    "text_after_final": (
        _crit("Step 1: correct — a", "Final: correct", "Actually step 1 is wrong."),
        1,
        "text after the final line",
    ),
    "extra_text_in_block": (
        _crit("Step 1: correct — a", "hmm, let me reconsider", "Step 2: correct", "Final: correct"),
        2,
        "malformed verdict line",
    ),
    "no_verdicts": ("I think it is all fine.\nFinal: correct\n", 2, "final line before any verdict line"),
    "empty": ("", 2, "no verdict lines"),
    "in_code_block": (
        "Here is my verdict:\n```\nStep 1: correct — a\nFinal: correct\n```\n",
        1,
        "verdict line inside a code block",
    ),
    "fence_in_block": (
        _crit("Step 1: correct — a", "```", "Final: correct"),
        1,
        "code fence inside the verdict block",
    ),
    "cyrillic_e": (_crit("St\u0435p 1: correct — a", "Final: correct"), 1, "unicode look-alike"),
    "cyrillic_o_in_word": (_crit("Step 1: c\u043errect — a", "Final: correct"), 1, "unicode look-alike"),
    "fullwidth_digit": (_crit("Step \uff11: correct — a", "Final: correct"), 1, "unicode look-alike"),
    "greek_final": (_crit("Step 1: correct — a", "Fin\u0430l: correct"), 1, "unicode look-alike"),
    "no_colon": (_crit("Step 1 correct — a", "Final: correct"), 1, "final line before any verdict line"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_critiques_are_counted_failures(name):
    text, n, reason = HOSTILE[name]
    c = parse_critique(text, n)
    assert not c.ok and reason in c.failure, (name, c.failure)
    assert c.verdicts == [] and c.final is None
    with pytest.raises(ValueError, match="failed to parse"):
        process_score(c)


def test_reasoning_may_quote_code_and_mention_steps():
    text = "In step 2 the code\n```python\nx = 1  # fine\n```\nlooks right.\n" + format_critique(
        [True, True], ["a", "b"]
    )
    c = parse_critique(text, 2)
    assert c.ok and process_score(c) == 1.0


def test_critique_prompt_numbers_the_steps():
    sol = "Let x be tables.\n\nMaximize 3x.\n\n```python\nprint('OBJECTIVE: 3')\n```\n```output\nOBJECTIVE: 3\n```\n\n\\boxed{3}"
    steps = segment_steps(sol)
    assert [s.kind for s in steps] == ["text", "text", "code", "text"]
    msgs = build_critique_messages("Max 3x, x<=1.", steps)
    user = msgs[-1]["content"]
    assert user.startswith("Problem:\nMax 3x, x<=1.")
    assert "[Step 3]\n```python\nprint('OBJECTIVE: 3')\n```\n```output\nOBJECTIVE: 3\n```" in user
    assert "[Step 4]\n\\boxed{3}" in user and "Judge steps 1 to 4." in user
