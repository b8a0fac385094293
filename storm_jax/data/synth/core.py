"""Shared pieces of the synthetic problem generator: the instance record, an independent matrix form
with its own solvers (scipy `milp`, brute force), the common pyomo solve footer and text helpers.

A family writes three views of one parameter dict: the English statement, the gold pyomo program and a
`LinearForm` built from the parameters by separate code. The program is executed (HiGHS via pyomo) and
its printed optimum is accepted only when it agrees with the `LinearForm` solved by scipy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import numpy as np

INF = math.inf


# ---------------------------------------------------------------------------------------------------------
# Matrix form (independent reference)
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LinearForm:
    """min/max c·x + const  s.t.  lo <= A x <= hi, bounds, integrality — built without pyomo."""

    sense: str = "min"  # "min" | "max"
    names: list[str] = dataclasses.field(default_factory=list)
    lb: list[float] = dataclasses.field(default_factory=list)
    ub: list[float] = dataclasses.field(default_factory=list)
    integer: list[bool] = dataclasses.field(default_factory=list)
    c: list[float] = dataclasses.field(default_factory=list)
    rows: list[dict[int, float]] = dataclasses.field(default_factory=list)
    row_lo: list[float] = dataclasses.field(default_factory=list)
    row_hi: list[float] = dataclasses.field(default_factory=list)
    row_names: list[str] = dataclasses.field(default_factory=list)
    const: float = 0.0
    scale: float = 1.0  # the reported answer is scale * objective (unit conversion of the answer)

    def var(
        self, name: str, lb: float = 0.0, ub: float = INF, integer: bool = False, cost: float = 0.0
    ) -> int:
        self.names.append(name)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(integer)
        self.c.append(cost)
        return len(self.names) - 1

    def add(self, coefs: dict[int, float], lo: float = -INF, hi: float = INF, name: str = "") -> None:
        row: dict[int, float] = {}
        for j, a in coefs.items():
            row[j] = row.get(j, 0.0) + float(a)
        self.rows.append(row)
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        self.row_names.append(name)

    def le(self, coefs: dict[int, float], rhs: float, name: str = "") -> None:
        self.add(coefs, -INF, rhs, name)

    def ge(self, coefs: dict[int, float], rhs: float, name: str = "") -> None:
        self.add(coefs, rhs, INF, name)

    def eq(self, coefs: dict[int, float], rhs: float, name: str = "") -> None:
        self.add(coefs, rhs, rhs, name)

    @property
    def problem_type(self) -> str:
        if all(self.integer):
            return "IP"
        return "MILP" if any(self.integer) else "LP"

    def solve_scipy(self) -> float | str:
        """The reported answer (objective * scale) by scipy's `milp`, or "infeasible"/"unbounded"."""
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix

        n = len(self.names)
        sign = -1.0 if self.sense == "max" else 1.0
        cons = []
        if self.rows:
            a = lil_matrix((len(self.rows), n))
            for i, row in enumerate(self.rows):
                for j, v in row.items():
                    a[i, j] = v
            cons = [LinearConstraint(a.tocsr(), np.array(self.row_lo), np.array(self.row_hi))]
        res = milp(
            c=sign * np.array(self.c, dtype=float),
            integrality=np.array(self.integer, dtype=int),
            bounds=Bounds(np.array(self.lb, dtype=float), np.array(self.ub, dtype=float)),
            constraints=cons,
            options={"mip_rel_gap": 1e-9},
        )
        if res.status == 2:
            return "infeasible"
        if res.status == 3:
            return "unbounded"
        if res.status != 0:
            raise RuntimeError(f"scipy milp failed: {res.message}")
        return (sign * res.fun + self.const) * self.scale

    def brute_force(self, max_points: int = 300_000) -> float | str | None:
        """Exhaustive enumeration for small pure-integer bounded forms; None when not applicable."""
        n = len(self.names)
        if not all(self.integer) or any(math.isinf(u) or math.isinf(lo) for lo, u in zip(self.lb, self.ub)):
            return None
        sizes = [int(u) - int(lo) + 1 for lo, u in zip(self.lb, self.ub)]
        if math.prod(sizes) > max_points:
            return None
        grid = np.array(
            list(itertools.product(*[range(int(lo), int(u) + 1) for lo, u in zip(self.lb, self.ub)]))
        )
        grid = grid.reshape(-1, n).astype(float)
        ok = np.ones(len(grid), dtype=bool)
        for row, lo, hi in zip(self.rows, self.row_lo, self.row_hi):
            val = np.zeros(len(grid))
            for j, a in row.items():
                val += a * grid[:, j]
            ok &= (val >= lo - 1e-9) & (val <= hi + 1e-9)
        if not ok.any():
            return "infeasible"
        obj = grid[ok] @ np.array(self.c, dtype=float)
        best = obj.max() if self.sense == "max" else obj.min()
        return (float(best) + self.const) * self.scale

    # --- math rendering for the gold reasoning --------------------------------------------------------
    def expr(self, coefs: dict[int, float]) -> str:
        return lin_expr([(a, self.names[j]) for j, a in coefs.items()])

    def math_lines(self, max_rows: int = 12) -> list[str]:
        lines = []
        for k, (row, lo, hi, name) in enumerate(zip(self.rows, self.row_lo, self.row_hi, self.row_names)):
            if k == max_rows:
                lines.append(f"... and {len(self.rows) - max_rows} more constraints of the same kinds")
                break
            lhs = self.expr(row)
            if lo == hi:
                rel = f"{lhs} = {fmt(hi)}"
            elif math.isinf(lo):
                rel = f"{lhs} <= {fmt(hi)}"
            elif math.isinf(hi):
                rel = f"{lhs} >= {fmt(lo)}"
            else:
                rel = f"{fmt(lo)} <= {lhs} <= {fmt(hi)}"
            lines.append(f"{name}: {rel}" if name else rel)
        return lines


def lin_expr(terms: list[tuple[float, str]]) -> str:
    """'3 x_a + 2 x_b - x_c' from (coefficient, name) pairs; zero terms are dropped."""
    out = ""
    for a, name in terms:
        if a == 0:
            continue
        mag = abs(a)
        term = name if mag == 1 else f"{fmt(mag)} {name}"
        if not out:
            out = ("-" if a < 0 else "") + term
        else:
            out += (" - " if a < 0 else " + ") + term
    return out or "0"


# ---------------------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Instance:
    """One generated problem before execution: the three views of one parameter dict."""

    id: str
    family: str
    size: int
    params: dict[str, Any]
    question: str
    program: str
    form: LinearForm
    reasoning: str  # words + math: variables, constraints, objective
    augmentation: str = "none"
    unit_factors: tuple[float, ...] = ()  # conversion constants the program may use beyond the statement

    @property
    def problem_type(self) -> str:
        return self.form.problem_type


# ---------------------------------------------------------------------------------------------------------
# Program pieces
# ---------------------------------------------------------------------------------------------------------

SOLVER = "appsi_highs"

DATA_MARK = "# --- data ---"
MODEL_MARK = "# --- model ---"


def footer(obj: str = "m.obj", scale: float = 1.0, scale_note: str = "") -> str:
    """Solve with HiGHS, print the nonzero variables and the OBJECTIVE line (answers.py convention)."""
    value = f"pyo.value({obj})"
    if scale != 1.0:
        value = f"{value} * {fmt(scale)}" if scale >= 1 else f"{value} / {fmt(round(1 / scale))}"
    note = f"  # {scale_note}" if scale_note else ""
    return (
        f'result = pyo.SolverFactory("{SOLVER}").solve(m, load_solutions=False)\n'
        "if result.solver.termination_condition == pyo.TerminationCondition.optimal:\n"
        "    m.solutions.load_from(result)\n"
        "    for v in m.component_data_objects(pyo.Var):\n"
        "        if abs(v.value) > 1e-6:\n"
        "            print(v.name, '=', round(v.value, 4))\n"
        f'    print("OBJECTIVE:", round({value}, 6)){note}\n'
        "else:\n"
        '    print("OBJECTIVE: infeasible")\n'
    )


def py(x: Any) -> str:
    """A Python literal for data written into gold programs (ints stay ints)."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    if isinstance(x, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (list, tuple)) and not isinstance(x, str):
        inner = ", ".join(py(v) for v in x)
        return f"({inner})" if isinstance(x, tuple) else f"[{inner}]"
    return repr(x)


# ---------------------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------------------


def fmt(x: float) -> str:
    """A number as the statement writes it: integers without a point, others with up to 4 decimals."""
    if isinstance(x, int) or float(x).is_integer():
        return str(int(x))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def fmt_answer(x: float | str) -> str:
    """The final boxed answer: 'infeasible' or the number as printed (6 decimals at most)."""
    if isinstance(x, str):
        return x
    r = round(x, 6)
    if r == 0 or float(r).is_integer():
        return str(int(r))
    return f"{r:.6f}".rstrip("0").rstrip(".")


def plural(word: str) -> str:
    """English plural of the simple nouns used in statements."""
    if word.endswith("f"):
        return word[:-1] + "ves"
    if word.endswith(("ch", "sh", "s", "x")):
        return word + "es"
    return word + "s"


def join(items: list[str], conj: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {conj} {items[1]}"
    return ", ".join(items[:-1]) + f", {conj} {items[-1]}"


def pick(rng: random.Random, pool: list[str], k: int) -> list[str]:
    return rng.sample(pool, k)


def ident(name: str) -> str:
    """A safe Python/variable identifier fragment for a display name."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def shuffled(rng: random.Random, items: list) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


CURRENCIES = [("dollars", "$"), ("euros", "€"), ("pounds", "£")]


def money(amount: float, currency: str) -> str:
    sym = {"dollars": "$", "euros": "€", "pounds": "£"}[currency]
    return f"{sym}{fmt(amount)}"


COMPANIES = [
    "Alder Works",
    "Brightfield Co.",
    "Cobalt Foods",
    "Dunmore Textiles",
    "Elm Street Bakery",
    "Fenwick Metals",
    "Granite Labs",
    "Harbor Outfitters",
    "Ivy Lane Crafts",
    "Juniper Farms",
    "Kestrel Toys",
    "Larch Furniture",
    "Maple Ridge Dairy",
    "Northwind Supply",
    "Orchard Ceramics",
    "Pinecrest Paints",
    "Quarry Hill Stone",
    "Riverbend Brewing",
    "Saltmarsh Seafood",
    "Tamarack Tools",
    "Upland Electronics",
    "Vale Garden Center",
    "Willow Print Shop",
    "Yarrow Cosmetics",
    "Zephyr Bikes",
]
