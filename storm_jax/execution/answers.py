r"""Answer extraction: from a completion's final `\boxed{}` and from the output of executed code.

An *answer* is a ``float`` objective value, the string ``"infeasible"`` or ``"unbounded"``, or ``None``
(no answer could be read). Every scorer, reward and the execution pool go through this module.

Boxed answers (:func:`answer_from_text`)
    The **last** ``\boxed{...}`` (balanced braces) of the completion counts. ``\boxed`` inside code blocks
    (e.g. in a comment) or inside host-written ```` ```output ```` blocks is ignored: only what the model
    wrote as prose is an answer. Qwen3 thinking: when the completion contains ``</think>``, a boxed answer
    after the last ``</think>`` always wins over one inside the thinking part; the thinking part is used
    only when the final part has no ``\boxed`` at all (``think_fallback=True``, the default).
    The box content may carry ``$``, ``\$``, thousands commas (``1,234``, ``4{,}500``), digit groups
    separated by LaTeX or typographic spaces (``25\,000``, ``25\;000``, ``25\:000``, ``25~000``, thin space
    U+2009, narrow no-break space U+202F, no-break space U+00A0, or a plain space: ``38 000``; every group
    after the first has exactly three digits), units/words (``1200 dollars``), ``\text{...}``, a leading
    ``x =`` (the part after the last ``=``/``\approx`` counts), scientific notation (``1.5e3``,
    ``1.5 \times 10^{3}``), fractions (``\frac{7}{2}``, ``7/2``), percent (``25\%`` -> 25) and the words
    *infeasible* / *no feasible solution* / *unbounded*.
    A box holding more than one number (``3, 4``, ``12 5``: groups that are not three digits) is
    ambiguous and reads as no answer, never as its first number. Digits that belong to a name or unit
    (``x_2``, ``m^2``, ``CO2``) are not numbers.

Executed code (:func:`answer_from_output`) — **the OBJECTIVE convention**
    Programs written for this project (synthetic gold programs, our prompts) end by printing one line::

        OBJECTIVE: <value>            e.g.  OBJECTIVE: 1234.5   OBJECTIVE: -3e-07
        OBJECTIVE: infeasible
        OBJECTIVE: unbounded

    The last such line of stdout is the answer. Programs from other models rarely follow it, so when no
    ``OBJECTIVE:`` line is printed the extractor falls back, in this order, to
      1. the last line that names the objective (``Objective value: 12``, ``Optimal objective  1.2e+03``
         (Gurobi), ``Best objective 1.2e+03, best bound ...``, HiGHS ``Objective value     :  1.2e+03``,
         PuLP/CBC ``Objective value:    12.0``, ``obj = 12``, ``Optimal value: $1,200``) or reports an
         infeasible / unbounded status (``Model is infeasible``, ``Status: Infeasible``,
         ``termination condition: unbounded``) — whichever of these comes last;
      2. the last ``label: number`` / ``label = number`` line whose label names a cost, profit, total,
         minimum/maximum, revenue, value, result or answer (``Total cost = $1,234.00``);
      3. the last line that is a bare number (``print(model.obj())``).
    Lines that merely mention a quantity (``x = 3``) never count.

Several code blocks (:func:`select_ran_answer`): each block is executed on its own; the answer of the
completion is that of the last block that ran (status ``ok``) and printed an answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

Answer = float | str | None

INFEASIBLE = "infeasible"
UNBOUNDED = "unbounded"
OBJECTIVE_PREFIX = "OBJECTIVE:"

THINK_CLOSE = "</think>"


def format_objective_line(value: float | str) -> str:
    """The line a program of ours prints last (the OBJECTIVE convention, see module docstring)."""
    if isinstance(value, str):
        if value not in (INFEASIBLE, UNBOUNDED):
            raise ValueError(f"objective status must be {INFEASIBLE!r} or {UNBOUNDED!r}, got {value!r}")
        return f"{OBJECTIVE_PREFIX} {value}"
    return f"{OBJECTIVE_PREFIX} {float(value)!r}"


# ---------------------------------------------------------------------------------------------------------
# Parsing one answer string
# ---------------------------------------------------------------------------------------------------------

_INFEASIBLE_RE = re.compile(
    r"\binfeasible\b|\bno\s+(?:feasible|optimal)\s+solution|\bnot\s+feasible\b|\bno\s+best\s+solution\b"
    r"|\binfeasibility\s+detected\b",
    re.IGNORECASE,
)
_UNBOUNDED_RE = re.compile(r"\bunbounded\b", re.IGNORECASE)

_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)"
_SIGNED_NUM_RE = re.compile(
    rf"(?P<sign>[-+\u2212]?)\s*(?P<num>{_NUM})"
    r"(?:\s*(?P<e>[eE][-+]?\d+)|\s*(?:\\times|\\cdot|\u00d7|\*|x)\s*10\s*\^\s*\{?\s*(?P<p>[-+\u2212]?\d+)\s*\}?)?"
)
_FRAC_RE = re.compile(
    r"(?P<sign>[-+\u2212]?)\s*\\[dt]?frac\s*\{\s*(?P<a>[^{}]+?)\s*\}\s*\{\s*(?P<b>[^{}]+?)\s*\}"
)
_SLASH_RE = re.compile(rf"^(?P<sign>[-+\u2212]?)\s*(?P<a>{_NUM})\s*/\s*(?P<b>{_NUM})(?![\d.])")

# Separators that group the digits of one number: LaTeX spaces (\, \; \: \! and "\ "), a tie (~), and
# the thin (U+2009), hair (U+200A), punctuation (U+2008), figure (U+2007), narrow no-break (U+202F) and
# no-break (U+00A0) spaces. Each becomes a plain space; `_SPACE_GROUPED_RE` then joins the digit groups.
_GROUP_SEP_RE = re.compile(
    r"\\(?:[,;:! ]|(?:thinspace|medspace|thickspace|nobreakspace)(?![A-Za-z]))|~"
    r"|[\u2007\u2008\u2009\u200a\u202f\u00a0]"
)
# "25 000", "1 234 567.5": a head of 1-3 digits, then groups of exactly three digits. A head glued to a
# digit, a point or a comma ("0.5 000", "1,234 567") is not grouping, so those stay separate numbers.
_SPACE_GROUPED_RE = re.compile(r"(?<![\d.,])(\d{1,3})((?: +\d{3})+)(?!\d)")

# LaTeX decorations that never change a value.
_LATEX_DROP = re.compile(
    r"\\(?:left|right|displaystyle|mathrm|mathbf|textbf|text|textrm|mbox|operatorname|quad|qquad)"
)
# A number right after a letter (x2, CO2) or after `_` / `^` (x_2, m^2) is part of a name or a unit.
_NAME_TAIL_RE = re.compile(r"(?:[A-Za-z]|[_^]\s*)\Z")


def _join_digit_groups(s: str) -> str:
    s = _GROUP_SEP_RE.sub(" ", s)
    return _SPACE_GROUPED_RE.sub(lambda m: m.group(1) + m.group(2).replace(" ", ""), s)


def _clean(text: str) -> str:
    s = text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    s = _join_digit_groups(s)
    s = _LATEX_DROP.sub(" ", s)
    s = s.replace("$", " ").replace("{", " ").replace("}", " ") if "frac" not in s else s.replace("$", " ")
    return s


def _to_float(sign: str, num: str, exp: str | None = None, pow10: str | None = None) -> float:
    value = float(num.replace(",", ""))
    if exp:
        value *= 10.0 ** int(exp[1:])
    if pow10:
        value *= 10.0 ** int(pow10.replace("\u2212", "-"))
    return -value if sign in ("-", "\u2212") else value


def _numbers(s: str) -> list[re.Match[str]]:
    """The numbers of a cleaned string (scientific notation is one number; digits of names are none)."""
    return [m for m in _SIGNED_NUM_RE.finditer(s) if not _NAME_TAIL_RE.search(s, 0, m.start("num"))]


def parse_number(text: str) -> float | None:
    """The one number in `text` (commas, digit groups, $, units, scientific notation, fractions), else None.

    None also when `text` holds several numbers: which one is meant is ambiguous.
    """
    s = _clean(text).strip()
    m = _FRAC_RE.search(s)
    if m is not None:
        a, b = parse_number(m.group("a")), parse_number(m.group("b"))
        # Only trust the fraction if it is the only numeric thing in the string.
        if (
            a is not None
            and b not in (None, 0.0)
            and not _numbers(s[: m.start()])
            and not _numbers(s[m.end() :])
        ):
            value = a / b
            return -value if m.group("sign") in ("-", "\u2212") else value
    m = _SLASH_RE.search(s)
    if m is not None:
        a, b = _to_float("", m.group("a")), _to_float("", m.group("b"))
        if b != 0.0 and not _numbers(s[m.end() :]):
            return -(a / b) if m.group("sign") in ("-", "\u2212") else a / b
    found = _numbers(s)
    if len(found) != 1:
        return None
    m = found[0]
    value = _to_float(m.group("sign"), m.group("num"), m.group("e"), m.group("p"))
    return value if math.isfinite(value) else None


def parse_answer(text: str) -> Answer:
    """An answer string -> float, "infeasible", "unbounded" or None.

    When the text holds an equation (``x = 3, cost = 1,200``) the part after the last ``=`` (or
    ``\\approx``) counts, so a leading variable name or formula never becomes the answer.
    """
    if text is None:
        return None
    if _INFEASIBLE_RE.search(text):
        return INFEASIBLE
    if _UNBOUNDED_RE.search(text):
        return UNBOUNDED
    s = re.sub(r"\\approx|\\simeq|\u2248|\\sim\b|:=", "=", text)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    return parse_number(s)


# ---------------------------------------------------------------------------------------------------------
# Boxed answers in a completion
# ---------------------------------------------------------------------------------------------------------

_CODE_OR_OUTPUT_RE = re.compile(r"```[A-Za-z0-9_+-]*[^\n]*\n.*?```", re.DOTALL)
_UNCLOSED_FENCE_RE = re.compile(r"```[A-Za-z0-9_+-]*[^\n]*\n.*\Z", re.DOTALL)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def strip_code(text: str) -> str:
    """`text` without fenced blocks (code, output), including an unclosed final block."""
    s = _CODE_OR_OUTPUT_RE.sub(" ", text)
    return _UNCLOSED_FENCE_RE.sub(" ", s)


def boxed_contents(text: str) -> list[str]:
    r"""The contents of every ``\boxed{...}`` in `text`, in order (balanced braces; unclosed ones skipped)."""
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def last_boxed(text: str, think_fallback: bool = True) -> str | None:
    r"""The content of the final ``\boxed{}`` of a completion, with the Qwen3 thinking rule (module doc)."""
    if THINK_CLOSE in text:
        thinking, final = text.rsplit(THINK_CLOSE, 1)
        boxes = boxed_contents(strip_code(final))
        if boxes:
            return boxes[-1]
        if not think_fallback:
            return None
        text = thinking
    boxes = boxed_contents(strip_code(text))
    return boxes[-1] if boxes else None


def answer_from_text(completion: str, think_fallback: bool = True) -> Answer:
    r"""The answer of a completion's final ``\boxed{}`` (None when there is none or it holds no number)."""
    box = last_boxed(completion, think_fallback=think_fallback)
    return None if box is None else parse_answer(box)


# ---------------------------------------------------------------------------------------------------------
# Objective printed by executed code
# ---------------------------------------------------------------------------------------------------------

_OBJECTIVE_LINE_RE = re.compile(r"^\s*OBJECTIVE:\s*(?P<v>.*?)\s*$", re.MULTILINE)

# Tier 1: a line that names the objective; the first number after the keyword is its value.
_OBJ_KEY_RE = re.compile(
    r"\b(?:objective(?:\s+function)?(?:\s+value)?|obj(?:val|_?value)?|optimal\s+(?:value|cost|profit|solution\s+value)"
    r"|optimum(?:\s+value)?|primal\s+bound)\b",
    re.IGNORECASE,
)
# Status lines (same tier): infeasible / unbounded, not "infeasibility" counts in solver logs.
_STATUS_INF_RE = re.compile(
    r"(?<!primal )(?<!dual )\binfeasible\b(?!\s*(?:=|:)\s*\d)|\bno\s+feasible\s+solution|\bnot\s+feasible\b"
    r"|\bno\s+optimal\s+solution",
    re.IGNORECASE,
)
_STATUS_UNB_RE = re.compile(r"\bunbounded\b|\bdual\s+infeasible\b", re.IGNORECASE)

# Tier 2: `label: number` / `label = number` where the label names an objective-like quantity.
_LABEL_RE = re.compile(
    r"^(?P<label>[^:=\n]*\b(?:cost|costs|profit|profits|total|minimum|maximum|minimal|maximal|min|max|revenue"
    r"|value|result|answer|optimal|income|expense|expenses|time|distance|earnings)\b[^:=\n]*?)\s*(?:[:=]|is)\s*"
    r"(?P<rest>.*)$",
    re.IGNORECASE,
)
_BARE_NUMBER_RE = re.compile(
    r"^\s*[-+]?\s*\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?\s*$",
)


def _number_after(line: str, pos: int) -> float | None:
    m = _SIGNED_NUM_RE.search(line.replace("$", " "), pos)
    if m is None:
        return None
    value = _to_float(m.group("sign"), m.group("num"), m.group("e"), m.group("p"))
    return value if math.isfinite(value) else None


def _tier1(line: str) -> Answer:
    """An objective value or status named on this line, else None."""
    key = _OBJ_KEY_RE.search(line)
    if key is not None:
        value = _number_after(line, key.end())
        if value is not None:
            return value
    # A status word is only a status when no objective value is on the line.
    # "infeasible or unbounded" reads as infeasible, the benchmarks' label for both.
    if _STATUS_INF_RE.search(line):
        return INFEASIBLE
    if _STATUS_UNB_RE.search(line):
        return UNBOUNDED
    return None


def answer_from_output(stdout: str) -> Answer:
    """The objective (float), "infeasible"/"unbounded", or None, printed by an executed program.

    See the module docstring for the OBJECTIVE convention and the fallback order.
    """
    if not stdout:
        return None
    marked = _OBJECTIVE_LINE_RE.findall(stdout)
    for value in reversed(marked):
        answer = parse_answer(value)
        if answer is not None:
            return answer
    lines = stdout.splitlines()
    for line in reversed(lines):
        answer = _tier1(line)
        if answer is not None:
            return answer
    for line in reversed(lines):
        m = _LABEL_RE.match(line.strip())
        if m is not None:
            rest = m.group("rest").strip()
            # `Minimum cost: x = 3` names a variable, not a value: the value must come first.
            if rest and not re.match(r"[A-Za-z]", rest.lstrip("$ ")):
                value = _number_after(rest, 0)
                if value is not None:
                    return value
    for line in reversed(lines):
        if line.strip() and _BARE_NUMBER_RE.match(line) and re.search(r"\d", line):
            return _number_after(line, 0)
    return None


# ---------------------------------------------------------------------------------------------------------
# Code blocks of a completion
# ---------------------------------------------------------------------------------------------------------

_PY_BLOCK_RE = re.compile(r"```(?:python3?|py)[ \t]*\n(?P<code>.*?)```", re.DOTALL | re.IGNORECASE)


def python_blocks(completion: str) -> list[str]:
    """Source of every closed ```python block of a completion, in order (an unclosed last block is dropped)."""
    return [m.group("code").rstrip("\n") for m in _PY_BLOCK_RE.finditer(completion)]


class _RanResult(Protocol):
    status: str
    answer: Answer


def select_ran_answer(results: Sequence[_RanResult] | Iterable[_RanResult]) -> Answer:
    """The answer of the last block that ran (status "ok") and printed an answer, else None."""
    chosen: Answer = None
    for r in results:
        if r.status == "ok" and r.answer is not None:
            chosen = r.answer
    return chosen
