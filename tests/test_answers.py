"""Answer extraction: boxed answers, the OBJECTIVE convention, solver print styles, and the traps."""

from __future__ import annotations

import dataclasses

import pytest

from storm_jax.data import format as fmt
from storm_jax.execution.answers import (
    INFEASIBLE,
    UNBOUNDED,
    answer_from_output,
    answer_from_text,
    boxed_contents,
    format_objective_line,
    last_boxed,
    parse_answer,
    python_blocks,
    select_ran_answer,
)

BOXED_CASES = [
    (r"The answer is \boxed{42}.", 42.0),
    (r"\boxed{1,234}", 1234.0),
    (r"\boxed{1,234,567.25}", 1234567.25),
    (r"\boxed{\$1,200}", 1200.0),
    (r"\boxed{$1200$}", 1200.0),
    (r"\boxed{1200 \text{ dollars}}", 1200.0),
    (r"\boxed{1200\ \mathrm{kg}}", 1200.0),
    (r"\boxed{-3.5}", -3.5),
    (r"\boxed{\u2212 7}".replace(r"\u2212", "\u2212"), -7.0),
    (r"\boxed{-\$15}", -15.0),
    (r"\boxed{1.5e3}", 1500.0),
    (r"\boxed{2.5E-4}", 2.5e-4),
    (r"\boxed{1.5 \times 10^{3}}", 1500.0),
    (r"\boxed{3 \cdot 10^{-2}}", 0.03),
    (r"\boxed{\frac{7}{2}}", 3.5),
    (r"\boxed{-\dfrac{1}{4}}", -0.25),
    (r"\boxed{7/2}", 3.5),
    (r"\boxed{25\%}", 25.0),
    (r"\boxed{x = 12}", 12.0),
    (r"\boxed{\text{Total cost} = 4{,}500}", 4500.0),
    (r"\boxed{\approx 12.57}", 12.57),
    (r"\boxed{.5}", 0.5),
    (r"\boxed{0}", 0.0),
    (r"\boxed{\text{Infeasible}}", INFEASIBLE),
    (r"\boxed{\text{The problem is infeasible}}", INFEASIBLE),
    (r"\boxed{No feasible solution}", INFEASIBLE),
    (r"\boxed{unbounded}", UNBOUNDED),
    (r"\boxed{\text{none}}", None),
    (r"no box at all: 42", None),
    (r"\boxed{12", None),  # unclosed
]


@pytest.mark.parametrize("text,expected", BOXED_CASES)
def test_boxed_formats(text, expected):
    got = answer_from_text(text)
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-12)
    else:
        assert got == expected


def test_last_boxed_counts_and_nested_braces():
    text = r"First \boxed{1}, then a better one \boxed{\frac{10}{4}} and finally \boxed{{2}}."
    assert boxed_contents(text) == ["1", r"\frac{10}{4}", "{2}"]
    assert answer_from_text(text) == 2.0


def test_thinking_box_never_wins_over_final():
    text = r"<think>maybe \boxed{100}; recheck: \boxed{120}</think>The optimum is \boxed{130}."
    assert answer_from_text(text) == 130.0
    # the final part comes first in the string order of a weird completion: still the final part wins
    text2 = r"<think>\boxed{5}</think>\boxed{6}<think>\boxed{7}</think>Final: \boxed{8}"
    assert answer_from_text(text2) == 8.0
    # no box after </think>: the thinking box is a fallback, unless disabled
    text3 = r"<think>computed \boxed{77}</think>The cost is seventy-seven."
    assert answer_from_text(text3) == 77.0
    assert answer_from_text(text3, think_fallback=False) is None
    # a truncated thinking (no </think>) has only its own boxes
    assert answer_from_text(r"<think>\boxed{3} and then") == 3.0


def test_box_in_code_comment_or_output_is_ignored():
    text = (
        "Let me solve it.\n"
        + fmt.render(
            [
                fmt.code_segment("x = 3\n# final answer \\boxed{999}\nprint('\\\\boxed{555}')"),
                fmt.output_segment("\\boxed{555}"),
            ]
        )
        + "So the answer is \\boxed{3}."
    )
    assert answer_from_text(text) == 3.0
    only_code = "```python\n# \\boxed{999}\nprint(1)\n```\n```output\n\\boxed{555}\n```\n"
    assert answer_from_text(only_code) is None


def test_parse_answer_equation_takes_last_side():
    assert parse_answer("x = 3, y = 4, cost = 1,250") == 1250.0
    assert parse_answer("about 3") == 3.0
    assert parse_answer("") is None


OUTPUT_CASES = [
    # our convention
    ("x = 3\nOBJECTIVE: 1234.5\n", 1234.5),
    ("OBJECTIVE: -3e-07", -3e-07),
    ("OBJECTIVE: infeasible", INFEASIBLE),
    ("OBJECTIVE: unbounded\n", UNBOUNDED),
    # several prints: the last objective print counts, variable prints after it do not
    ("Objective value: 10\nObjective value: 20\nx = 5\ny = 7\n", 20.0),
    # OBJECTIVE line beats a later informal print
    ("OBJECTIVE: 3.5\nTotal cost: 7\n", 3.5),
    # pyomo user prints
    ("Optimal solution found\nx = 2.0\nObjective value = 1160.0\n", 1160.0),
    ("Optimal value: $1,200.50\n", 1200.5),
    ("obj = 42\n", 42.0),
    # HiGHS log
    (
        "Running HiGHS 1.15.0\nModel status        : Optimal\nSimplex   iterations: 3\n"
        "Objective value     :  1.2340000000e+03\nHiGHS run time      :          0.00\n",
        1234.0,
    ),
    # gurobipy log + user print
    ("Solved in 3 iterations and 0.01 seconds\nOptimal objective  1.160000000e+03\n", 1160.0),
    (
        "Explored 1 nodes\nBest objective 3.050000000000e+03, best bound 3.050000000000e+03, gap 0.0000%\n",
        3050.0,
    ),
    ("Obj: 350\n", 350.0),
    # coptpy
    ("Best objective: 2.5000000000e+01\n", 25.0),
    # PuLP / CBC
    ("Result - Optimal solution found\n\nObjective value:                350.00000000\n", 350.0),
    ("Status: Optimal\nTotal Cost = 1160.0\nBoats = 12.0\nCanoes = 22.0\n", 1160.0),
    # informal labels
    ("The maximum profit is 50 dollars\n", 50.0),
    ("Minimum cost: x = 3\n", None),
    # status lines
    ("Status: Infeasible\n", INFEASIBLE),
    ("Model is infeasible\n", INFEASIBLE),
    ("WARNING: termination condition: unbounded\n", UNBOUNDED),
    ("Model is infeasible or unbounded\n", INFEASIBLE),
    ("Problem is dual infeasible\n", UNBOUNDED),
    ("Max primal infeasibility 0\nObjective value: 5\n", 5.0),
    # bare number from print(model.obj())
    ("Solving...\n1160.0\n", 1160.0),
    ("x = 3\ny = 4\n", None),
    ("", None),
]


@pytest.mark.parametrize("stdout,expected", OUTPUT_CASES)
def test_output_formats(stdout, expected):
    got = answer_from_output(stdout)
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-12)
    else:
        assert got == expected


def test_objective_line_roundtrip():
    for v in [0.0, -1.5, 1e-9, 123456789.123, 1 / 3]:
        assert answer_from_output("noise 7\n" + format_objective_line(v) + "\n") == v
    assert answer_from_output(format_objective_line("infeasible")) == INFEASIBLE
    with pytest.raises(ValueError, match="objective status"):
        format_objective_line("optimal")


def test_python_blocks_and_last_that_ran():
    text = (
        "a\n```python\nprint('OBJECTIVE: 1')\n```\n```output\nOBJECTIVE: 1\n```\n"
        "b\n```py\nprint(2)\n```\nc\n```python\nraise SystemExit\n```\nd ```python\nunclosed"
    )
    assert python_blocks(text) == ["print('OBJECTIVE: 1')", "print(2)", "raise SystemExit"]

    @dataclasses.dataclass
    class R:
        status: str
        answer: object

    assert select_ran_answer([R("ok", 1.0), R("ok", 2.0), R("error", 9.0)]) == 2.0
    assert select_ran_answer([R("ok", 1.0), R("ok", None), R("timeout", None)]) == 1.0
    assert select_ran_answer([R("error", 5.0)]) is None


def test_last_boxed_returns_raw_content():
    assert last_boxed(r"\boxed{\$1,200}") == r"\$1,200"


# Digit grouping: every form below writes one number; the expected value is what the digits spell.
GROUPED_CASES = [
    (r"\boxed{25\,000}", 25000.0),
    (r"\boxed{25\;000}", 25000.0),
    (r"\boxed{25\:000}", 25000.0),
    (r"\boxed{25~000}", 25000.0),
    (r"\boxed{25\ 000}", 25000.0),
    ("\\boxed{25\u2009000}", 25000.0),  # thin space
    ("\\boxed{25\u202f000}", 25000.0),  # narrow no-break space
    ("\\boxed{25\u00a0000}", 25000.0),  # no-break space
    (r"\boxed{38 000}", 38000.0),
    (r"\boxed{1 234 567.25}", 1234567.25),
    (r"\boxed{1\,234\,567}", 1234567.0),
    (r"\boxed{-12\,500}", -12500.0),
    (r"\boxed{\$25\,000 \text{ dollars}}", 25000.0),
    (r"\boxed{x = 38\,000}", 38000.0),
    (r"\boxed{\frac{25\,000}{4}}", 6250.0),
    (r"The total cost is \boxed{$1\,050\,000$}.", 1050000.0),
]


@pytest.mark.parametrize("text,expected", GROUPED_CASES)
def test_digit_grouping_is_one_number(text, expected):
    assert answer_from_text(text) == expected


# Two numbers in one box: which one is the answer is unknowable, so no answer (not the first number).
AMBIGUOUS_CASES = [
    r"\boxed{3, 4}",
    r"\boxed{12 5}",  # "5" is not a three-digit group
    r"\boxed{1 23}",
    r"\boxed{12 5000}",  # a four-digit group is no group either
    r"\boxed{1234 567}",  # a head of four digits is not grouping
    r"\boxed{25\,00}",
    r"\boxed{(3, 4)}",
    r"\boxed{3 \text{ or } 4}",
    r"\boxed{3 + \frac{1}{2}}",
    r"\boxed{\frac{1}{2} + 3}",
    r"\boxed{7/2 + 1}",
    "\\boxed{12\u20095}",
]


@pytest.mark.parametrize("text", AMBIGUOUS_CASES)
def test_two_numbers_in_a_box_are_a_parse_failure(text):
    assert answer_from_text(text) is None


def test_digits_of_names_and_units_are_not_numbers():
    assert answer_from_text(r"\boxed{500 \text{ m}^2}") == 500.0
    assert answer_from_text(r"\boxed{120 \text{ tons of CO2}}") == 120.0
    assert answer_from_text(r"\boxed{3 x_1}") == 3.0
    assert answer_from_text(r"\boxed{1200\,kg}") == 1200.0  # \, before a unit is only a space
