"""`cart`: the embedded CPU demo's family, a one-variable knapsack built so that each stage of the recipe has
something a ~10M-parameter model can learn in minutes.

- SFT has to teach copying: the program's only varying parts are three numbers from the question (one digit,
  one digit, two digits, in the order the question states them), each right after tokens of its own
  (`expr=V`, `m.n * W`, `<= CAP`), and the answer is the printed optimum verbatim (a whole number).
- GRPO has something left to fix: every gold program is correct, but when the capacity is a multiple of the
  weight the teacher declares the count continuous (the relaxation has the same optimum there, so the
  solver-verified answer is still right). A model cannot tell from imitation when dropping integrality is
  safe, so after SFT it mostly drops it; on the other problems that gives a fractional, wrong optimum, and
  only the outcome reward says so.
"""

from __future__ import annotations

from storm_jax.data.synth.core import LinearForm
from storm_jax.data.synth.family import Family

#: Share of problems whose capacity is a multiple of the weight (the teacher relaxes exactly those).
DIVISIBLE_SHARE = 0.6


class Cart(Family):
    name = "cart"
    scalable = ()
    max_size = 0

    def sample(self, rng, size, infeasible):
        w, v = rng.randint(2, 9), rng.randint(2, 9)
        if rng.random() < DIVISIBLE_SHARE:
            cap = w * rng.randint(-(-10 // w), 99 // w)
        else:
            cap = rng.choice([c for c in range(10, 100) if c % w])
        return dict(w=w, v=v, cap=cap)

    def currency_of(self, p):
        return None  # no unit-conversion augmentation: the demo keeps one template

    def statement(self, p, rng):
        return (
            f"Each box earns {p['v']} dollars and weighs {p['w']} kg. A cart holds at most {p['cap']} kg. "
            "What is the largest total earning from whole boxes?"
        )

    def program(self, p):
        dom = "NonNegativeReals" if p["cap"] % p["w"] == 0 else "NonNegativeIntegers"
        return (
            "import pyomo.environ as pyo\n"
            "m = pyo.ConcreteModel()\n"
            f"m.n = pyo.Var(within=pyo.{dom})\n"
            f"m.obj = pyo.Objective(expr={p['v']} * m.n, sense=pyo.maximize)\n"
            f"m.cap = pyo.Constraint(expr=m.n * {p['w']} <= {p['cap']})\n"
            'pyo.SolverFactory("appsi_highs").solve(m)\n'
            'print("OBJECTIVE:", round(pyo.value(m.obj)))\n'
        )

    def form(self, p):
        # the true model: whole boxes (the gold program's relaxation is verified against it)
        f = LinearForm("max")
        n = f.var("n", 0, p["cap"], True, p["v"])
        f.le({n: p["w"]}, p["cap"], "cap")
        return f

    def reference(self, p) -> float:
        """The optimum in closed form: as many whole boxes as fit."""
        return float(p["v"] * (p["cap"] // p["w"]))

    def reasoning(self, p, f):
        return "I write the model in pyomo."

    def words(self, p):
        return ""
