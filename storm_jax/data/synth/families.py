"""The family registry, plus `arith`: very short two-variable LPs and one-variable knapsacks whose gold
trajectories stay under ~200 tokens, so a tiny randomly initialised model can learn to imitate them."""

from __future__ import annotations

import random

from storm_jax.data.synth.core import LinearForm, fmt, lin_expr
from storm_jax.data.synth.families_demo import Cart
from storm_jax.data.synth.families_flow import MinCostFlow, Portfolio, Transportation
from storm_jax.data.synth.families_ip import ALL_IP
from storm_jax.data.synth.families_lp import Blending, Diet, Production
from storm_jax.data.synth.family import Family


class Arith(Family):
    name = "arith"
    scalable = ("c",)
    max_size = 1

    def sample(self, rng, size, infeasible):
        if rng.random() < 0.3:  # one-variable knapsack: how many boxes fit
            w, cap, v = rng.randint(2, 15), rng.randint(15, 120), rng.randint(2, 20)
            item = rng.choice(["boxes", "bags", "crates", "sacks", "barrels", "cases", "bundles", "trays"])
            return dict(kind="boxes", w=w, cap=cap, v=v, item=item)
        sense = rng.choice(["max", "min"])
        n_con = 2 + (size if size <= 1 else 1)
        c = [rng.randint(1, 9), rng.randint(1, 9)]
        rows = []
        for k in range(n_con):
            a = [rng.randint(0, 5), rng.randint(0, 5)]
            if k == 0 or a == [0, 0]:
                a = [rng.randint(1, 5), rng.randint(1, 5)]
            rows.append([a[0], a[1], rng.randint(4, 30)])
        return dict(kind="lp", sense=sense, c=c, rows=rows, integer=rng.random() < 0.3)

    def currency_of(self, p):
        return None

    def statement(self, p, rng):
        if p["kind"] == "boxes":
            return rng.choice(
                [
                    f"Each of the {p['item']} weighs {p['w']} kg and earns {p['v']} dollars. A cart holds at most {p['cap']} kg. "
                    f"How many whole {p['item']} should go on the cart to earn the most, and what is the largest total earning?",
                    f"A cart can carry {p['cap']} kg. One of the {p['item']} weighs {p['w']} kg and pays {p['v']} dollars. "
                    f"Only whole {p['item']} can be loaded. What is the maximum total pay?",
                    f"How much can a cart with a {p['cap']} kg limit earn at most, if {p['item']} weigh {p['w']} kg "
                    f"each, earn {p['v']} dollars each and cannot be split?",
                ]
            )
        rel = "<=" if p["sense"] == "max" else ">="
        cons = [f"{lin_expr([(a, 'x'), (b, 'y')])} {rel} {r}" for a, b, r in p["rows"]]
        goal = "Maximize" if p["sense"] == "max" else "Minimize"
        dom = "x, y >= 0 integers" if p["integer"] else "x, y >= 0"
        obj = lin_expr([(p["c"][0], "x"), (p["c"][1], "y")])
        return rng.choice(
            [
                f"{goal} {obj} subject to {', '.join(cons)}, {dom}. What is the optimal value?",
                f"Find the optimal value: {goal.lower()} {obj} with {' and '.join(cons)}, where {dom}.",
            ]
        )

    def program(self, p):
        if p["kind"] == "boxes":
            return (
                "import pyomo.environ as pyo\n"
                "m = pyo.ConcreteModel()\n"
                "m.n = pyo.Var(within=pyo.NonNegativeIntegers)\n"
                f"m.obj = pyo.Objective(expr={p['v']} * m.n, sense=pyo.maximize)\n"
                f"m.cap = pyo.Constraint(expr={p['w']} * m.n <= {p['cap']})\n"
                f'pyo.SolverFactory("appsi_highs").solve(m)\n'
                'print("OBJECTIVE:", round(pyo.value(m.obj), 6))\n'
            )
        dom = "NonNegativeIntegers" if p["integer"] else "NonNegativeReals"
        rel = "<=" if p["sense"] == "max" else ">="
        lines = [
            "import pyomo.environ as pyo",
            "m = pyo.ConcreteModel()",
            f"m.x = pyo.Var(within=pyo.{dom})",
            f"m.y = pyo.Var(within=pyo.{dom})",
            f"m.obj = pyo.Objective(expr={_code_expr(p['c'][0], p['c'][1])}, sense=pyo.{'maximize' if p['sense'] == 'max' else 'minimize'})",
        ]
        for k, (a, b, r) in enumerate(p["rows"]):
            lines.append(f"m.c{k + 1} = pyo.Constraint(expr={_code_expr(a, b)} {rel} {r})")
        lines += [
            'pyo.SolverFactory("appsi_highs").solve(m)',
            'print("OBJECTIVE:", round(pyo.value(m.obj), 6))',
        ]
        return "\n".join(lines) + "\n"

    def form(self, p):
        if p["kind"] == "boxes":
            f = LinearForm("max")
            n = f.var("n", 0, p["cap"], True, p["v"])
            f.le({n: p["w"]}, p["cap"], "cap")
            return f
        f = LinearForm(p["sense"])
        x = f.var("x", 0, 60, p["integer"], p["c"][0])
        y = f.var("y", 0, 60, p["integer"], p["c"][1])
        for a, b, r in p["rows"]:
            (f.le if p["sense"] == "max" else f.ge)({x: a, y: b}, r)
        return f

    def reasoning(self, p, f):
        # deliberately terse: the model restates nothing the code already says (keeps trajectories ~150 tokens)
        if p["kind"] == "boxes":
            return f"Let n be the whole number of {p['item']}; maximize {p['v']} n with {p['w']} n <= {p['cap']}."
        dom = " integers" if p["integer"] else ""
        goal = "maximize" if p["sense"] == "max" else "minimize"
        return f"Let x, y >= 0{dom}; {goal} the objective under the {len(p['rows'])} constraints."

    def words(self, p):
        return ""


def _code_expr(a: int, b: int) -> str:
    terms = [f"{a} * m.x" if a != 1 else "m.x"] if a else []
    if b:
        terms.append(f"{b} * m.y" if b != 1 else "m.y")
    return " + ".join(terms) or "0"


_ = (random, fmt)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [Production(), Diet(), Blending(), Transportation(), Portfolio(), MinCostFlow()]
    + [cls() for cls in ALL_IP]
    + [Arith(), Cart()]
}

#: What `--families all` means: every family but the CPU demo's `cart` (adding it would change every set
#: generated with "all", e.g. the bundled `mixed` one).
ALL_FAMILIES: tuple[str, ...] = tuple(n for n in FAMILIES if n != "cart")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown synth family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
