"""Integer families: assignment, knapsack, multi-knapsack, set cover (and `ALL_IP`, every integer and
mixed-integer family in registry order; the scheduling/location ones are in families_mip.py)."""

from __future__ import annotations

import itertools
import random

from storm_jax.data.synth.core import (
    CURRENCIES,
    LinearForm,
    fmt,
    ident,
    join,
    money,
    pick,
    py,
    shuffled,
)
from storm_jax.data.synth.families_mip import CuttingStock, FacilityLocation, LotSizing, StaffScheduling
from storm_jax.data.synth.family import Family

PEOPLE = ["Ava", "Ben", "Chloe", "Dev", "Esme", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam"]


class Assignment(Family):
    name = "assignment"
    scalable = ("cost",)

    JOBS = [
        "the audit",
        "the website",
        "the survey",
        "the mural",
        "the inventory",
        "the training",
        "the report",
        "the migration",
    ]

    def sample(self, rng, size, infeasible):
        n = 3 + size
        extra = rng.choice([0, 0, 1])
        people, jobs = pick(rng, PEOPLE, n + extra), pick(rng, self.JOBS, n)
        cost = [[rng.randint(5, 60) for _ in jobs] for _ in people]
        return dict(
            people=people,
            jobs=jobs,
            cost=cost,
            currency=rng.choice(CURRENCIES)[0],
            what=rng.choice(["hours", "cost"]),
        )

    def statement(self, p, rng):
        hours = p["what"] == "hours"
        intro = rng.choice(
            [
                f"A manager must give each of {len(p['jobs'])} projects ({join(p['jobs'])}) to exactly one of {join(p['people'])}.",
                f"{join(p['people'])} are available for {len(p['jobs'])} tasks: {join(p['jobs'])}; every task needs exactly one person.",
            ]
        )
        rule = rng.choice(["Nobody can take more than one task.", "Each person handles at most one task."])
        clauses = []
        for i, who in enumerate(p["people"]):
            vals = [
                f"{fmt(p['cost'][i][j])} hours on {job}"
                if hours
                else f"{money(p['cost'][i][j], p['currency'])} for {job}"
                for j, job in enumerate(p["jobs"])
            ]
            clauses.append(
                f"{who} would need {join(vals)}." if hours else f"{who} would charge {join(vals)}."
            )
        ask = (
            "What is the smallest possible total number of hours?"
            if hours
            else f"What is the minimum total cost in {p['currency']}?"
        )
        return " ".join([intro, rule, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        cost = {(a, b): p["cost"][i][j] for i, a in enumerate(p["people"]) for j, b in enumerate(p["jobs"])}
        return "\n".join([f"people = {py(p['people'])}", f"tasks = {py(p['jobs'])}", f"cost = {py(cost)}"])

    def model_code(self, p):
        return (
            "m.x = pyo.Var(people, tasks, within=pyo.Binary)\n"
            "m.obj = pyo.Objective(expr=sum(cost[i, j] * m.x[i, j] for i in people for j in tasks), sense=pyo.minimize)\n"
            "m.task = pyo.ConstraintList()\n"
            "for j in tasks:\n"
            "    m.task.add(sum(m.x[i, j] for i in people) == 1)\n"
            "m.person = pyo.ConstraintList()\n"
            "for i in people:\n"
            "    m.person.add(sum(m.x[i, j] for j in tasks) <= 1)\n"
        )

    def form(self, p):
        f = LinearForm("min")
        x = [
            [f.var(f"x_{ident(a)}_{ident(b)}", 0, 1, True, p["cost"][i][j]) for j, b in enumerate(p["jobs"])]
            for i, a in enumerate(p["people"])
        ]
        for j in range(len(p["jobs"])):
            f.eq({row[j]: 1 for row in x}, 1, f"task {j + 1}")
        for i in range(len(p["people"])):
            f.le({v: 1 for v in x[i]}, 1, f"person {i + 1}")
        return f

    def words(self, p):
        return (
            "Let x_ij = 1 if person i takes task j. Every task gets exactly one person and every person at most one "
            "task; minimize the total."
        )

    def currency_of(self, p):
        return None if p["what"] == "hours" else p["currency"]

    def reference(self, p):
        """Brute force over all injective assignments of tasks to people."""
        n = len(p["jobs"])
        best = min(
            sum(p["cost"][perm[j]][j] for j in range(n))
            for perm in itertools.permutations(range(len(p["people"])), n)
        )
        return float(best) * p.get("answer_unit", {}).get("factor", 1.0)


class Knapsack(Family):
    name = "knapsack"
    supports_infeasible = True
    scalable = ("value",)

    ITEMS = [
        "tent",
        "stove",
        "camera",
        "drone",
        "laptop",
        "rope",
        "first-aid kit",
        "water filter",
        "telescope",
        "solar panel",
        "sleeping bag",
        "radio",
        "toolkit",
        "cooler",
    ]

    def sample(self, rng, size, infeasible):
        n = 5 + 2 * size
        items = pick(rng, self.ITEMS, n)
        weight = [rng.randint(2, 30) for _ in items]
        value = [rng.randint(10, 120) for _ in items]
        cap = max(max(weight), int(sum(weight) * rng.uniform(0.3, 0.6)))
        must = []
        if infeasible:
            order = sorted(range(n), key=lambda i: -weight[i])
            tot = 0
            for i in order:
                must.append(items[i])
                tot += weight[i]
                if tot > cap:
                    break
        elif rng.random() < 0.3:
            must = [items[rng.randrange(n)]]
        return dict(
            items=items, weight=weight, value=value, cap=cap, must=must, currency=rng.choice(CURRENCIES)[0]
        )

    def statement(self, p, rng):
        intro = rng.choice(
            [
                f"An expedition van can carry at most {p['cap']} kg of gear.",
                f"A courier has room for {p['cap']} kg and must choose which items to take.",
            ]
        )
        clauses = [
            f"The {it} weighs {w} kg and is worth {money(v, p['currency'])}."
            for it, w, v in zip(p["items"], p["weight"], p["value"])
        ]
        if p["must"]:
            clauses.append(f"The {join(p['must'])} must be taken.")
        rule = rng.choice(
            [
                "Each item is either taken whole or left behind.",
                "Items cannot be split and there is one of each.",
            ]
        )
        ask = rng.choice(
            [
                f"What is the greatest total value ({p['currency']}) that fits?",
                f"Maximize the total value taken; what is it in {p['currency']}?",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), rule, ask])

    def data_code(self, p):
        lines = [
            f"weight = {py(dict(zip(p['items'], p['weight'])))}  # kg",
            f"value = {py(dict(zip(p['items'], p['value'])))}",
            f"capacity = {p['cap']}  # kg",
        ]
        if p["must"]:
            lines.append(f"must_take = {py(p['must'])}")
        return "\n".join(lines)

    def model_code(self, p):
        code = (
            "m.take = pyo.Var(list(weight), within=pyo.Binary)\n"
            "m.obj = pyo.Objective(expr=sum(value[i] * m.take[i] for i in weight), sense=pyo.maximize)\n"
            "m.capacity = pyo.Constraint(expr=sum(weight[i] * m.take[i] for i in weight) <= capacity)\n"
        )
        if p["must"]:
            code += "m.must = pyo.ConstraintList()\nfor i in must_take:\n    m.must.add(m.take[i] == 1)\n"
        return code

    def form(self, p):
        f = LinearForm("max")
        xs = [f.var(f"y_{ident(i)}", 0, 1, True, v) for i, v in zip(p["items"], p["value"])]
        f.le({j: w for j, w in zip(xs, p["weight"])}, p["cap"], "capacity")
        for j, it in zip(xs, p["items"]):
            if it in p["must"]:
                f.eq({j: 1}, 1, "must take")
        return f

    def words(self, p):
        s = "Let y_i = 1 if item i is taken. The weights of the taken items must fit the capacity; maximize the total value."
        return s + (" Required items are fixed to 1." if p["must"] else "")


class MultiKnapsack(Family):
    name = "multi_knapsack"
    scalable = ("value",)

    def sample(self, rng, size, infeasible):
        n, k = 5 + size, 2 + size // 2
        items = [f"crate {c}" for c in "ABCDEFGHIJ"[:n]]
        trucks = pick(rng, ["north truck", "south truck", "blue van", "red van", "trailer"], k)
        weight = [rng.randint(3, 25) for _ in items]
        value = [rng.randint(20, 150) for _ in items]
        cap = [max(max(weight), int(sum(weight) * rng.uniform(0.15, 0.35))) for _ in trucks]
        return dict(
            items=items,
            trucks=trucks,
            weight=weight,
            value=value,
            cap=cap,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        intro = rng.choice(
            [
                f"A mover has {len(p['trucks'])} vehicles ({join(p['trucks'])}) and {len(p['items'])} crates waiting.",
                f"{len(p['items'])} crates may be loaded onto the {join(p['trucks'])}.",
            ]
        )
        clauses = [f"The {t} carries at most {c} kg." for t, c in zip(p["trucks"], p["cap"])]
        clauses += [
            f"{it.capitalize()} weighs {w} kg and earns {money(v, p['currency'])} if delivered."
            for it, w, v in zip(p["items"], p["weight"], p["value"])
        ]
        rule = "A crate goes on at most one vehicle and cannot be split; crates left behind earn nothing."
        ask = rng.choice(
            [
                f"What is the maximum total earnings in {p['currency']}?",
                f"Load the vehicles to earn as much as possible; how much ({p['currency']})?",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), rule, ask])

    def data_code(self, p):
        return "\n".join(
            [
                f"weight = {py(dict(zip(p['items'], p['weight'])))}  # kg",
                f"value = {py(dict(zip(p['items'], p['value'])))}",
                f"capacity = {py(dict(zip(p['trucks'], p['cap'])))}  # kg",
            ]
        )

    def model_code(self, p):
        return (
            "m.x = pyo.Var(list(weight), list(capacity), within=pyo.Binary)\n"
            "m.obj = pyo.Objective(expr=sum(value[i] * m.x[i, t] for i in weight for t in capacity), sense=pyo.maximize)\n"
            "m.once = pyo.ConstraintList()\n"
            "for i in weight:\n"
            "    m.once.add(sum(m.x[i, t] for t in capacity) <= 1)\n"
            "m.loading = pyo.ConstraintList()\n"
            "for t in capacity:\n"
            "    m.loading.add(sum(weight[i] * m.x[i, t] for i in weight) <= capacity[t])\n"
        )

    def form(self, p):
        f = LinearForm("max")
        x = [
            [f.var(f"x_{ident(i)}_{ident(t)}", 0, 1, True, v) for t in p["trucks"]]
            for i, v in zip(p["items"], p["value"])
        ]
        for row in x:
            f.le({j: 1 for j in row}, 1, "once")
        for k, c in enumerate(p["cap"]):
            f.le({row[k]: w for row, w in zip(x, p["weight"])}, c, "load")
        return f

    def words(self, p):
        return (
            "Let x_it = 1 if crate i rides on vehicle t. Each crate rides at most once, each vehicle's load fits its "
            "capacity; maximize the earnings of the loaded crates."
        )


class SetCover(Family):
    name = "set_cover"
    supports_infeasible = True
    scalable = ("cost",)

    def sample(self, rng, size, infeasible):
        n_el, n_sets = 5 + 2 * size, 4 + 2 * size
        areas = [f"district {k + 1}" for k in range(n_el)]
        sites = pick(
            rng,
            [
                "Oak Hill",
                "Mill Road",
                "Station Square",
                "Lakeside",
                "Old Quarry",
                "Harbor Point",
                "Chapel Green",
                "Fox Lane",
                "Kings Park",
                "Upper Town",
                "West Gate",
                "Beacon Rise",
            ],
            n_sets,
        )
        covers = [sorted(rng.sample(range(n_el), rng.randint(2, max(2, n_el // 2)))) for _ in sites]
        for e in range(n_el):
            if not any(e in c for c in covers):
                covers[rng.randrange(n_sets)].append(e)
        covers = [sorted(set(c)) for c in covers]
        cost = [rng.randint(10, 90) for _ in sites]
        p = dict(
            areas=areas,
            sites=sites,
            covers=covers,
            cost=cost,
            currency=rng.choice(CURRENCIES)[0],
            what=rng.choice(["ambulance post", "wifi mast", "fire station"]),
            budget=None,
        )
        if infeasible:  # a budget just below the cheapest cover (the label still comes from the solver)
            best = self.form(p).solve_scipy()
            p["budget"] = int(best) - 1000 * rng.randint(1, 5)
        elif rng.random() < 0.3:
            p["budget"] = 1000 * sum(cost)
        return p

    def statement(self, p, rng):
        cur, what = p["currency"], p["what"]
        k = len(p["areas"])
        intro = rng.choice(
            [
                f"A town split into districts 1 to {k} wants every district served by at least one {what}.",
                f"The council must choose sites for {what}s so that each of its {k} districts (numbered 1 to {k}) is covered.",
            ]
        )
        clauses = [
            f"A {what} at {s} costs {money(c * 1000, cur)} and covers districts {join([str(e + 1) for e in cov])}."
            for s, c, cov in zip(p["sites"], p["cost"], p["covers"])
        ]
        if p["budget"] is not None:
            clauses.append(f"The total budget is {money(p['budget'], cur)}.")
        ask = rng.choice(
            [
                f"What is the minimum total cost in {cur}?",
                f"Find the cheapest set of sites; give the total cost in {cur}.",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        return "\n".join(
            [
                f"districts = list(range(1, {len(p['areas'])} + 1))",
                f"cost = {py({s: c * 1000 for s, c in zip(p['sites'], p['cost'])})}",
                f"covers = {py({s: [e + 1 for e in cov] for s, cov in zip(p['sites'], p['covers'])})}",
            ]
            + ([f"budget = {p['budget']}"] if p["budget"] is not None else [])
        )

    def model_code(self, p):
        return (
            "m.build = pyo.Var(list(cost), within=pyo.Binary)\n"
            "m.obj = pyo.Objective(expr=sum(cost[s] * m.build[s] for s in cost), sense=pyo.minimize)\n"
            "m.cover = pyo.ConstraintList()\n"
            "for d in districts:\n"
            "    m.cover.add(sum(m.build[s] for s in cost if d in covers[s]) >= 1)\n"
        ) + (
            "m.budget = pyo.Constraint(expr=sum(cost[s] * m.build[s] for s in cost) <= budget)\n"
            if p["budget"] is not None
            else ""
        )

    def form(self, p):
        f = LinearForm("min")
        xs = [f.var(f"y_{ident(s)}", 0, 1, True, c * 1000) for s, c in zip(p["sites"], p["cost"])]
        for e in range(len(p["areas"])):
            f.ge({j: 1 for j, cov in zip(xs, p["covers"]) if e in cov}, 1, f"district {e + 1}")
        if p.get("budget") is not None:
            f.le({j: c * 1000 for j, c in zip(xs, p["cost"])}, p["budget"], "budget")
        return f

    def words(self, p):
        return "Let y_s = 1 if a site s is built. Every district needs at least one built site covering it; minimize cost."


ALL_IP: list[type[Family]] = [
    Assignment,
    Knapsack,
    MultiKnapsack,
    SetCover,
    CuttingStock,
    StaffScheduling,
    FacilityLocation,
    LotSizing,
]

_ = random  # typing aid for subclasses' rng parameters
