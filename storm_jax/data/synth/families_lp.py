"""Continuous (and optionally integer) resource-allocation families: production, diet, blending.

Transportation, portfolio and min-cost flow are in families_flow.py."""

from __future__ import annotations

from storm_jax.data.synth.core import (
    COMPANIES,
    CURRENCIES,
    LinearForm,
    fmt,
    ident,
    join,
    money,
    pick,
    plural,
    py,
    shuffled,
)
from storm_jax.data.synth.family import Family

# ---------------------------------------------------------------------------------------------------------


class Production(Family):
    name = "production"
    supports_infeasible = True
    scalable = ("profit", "cap")

    PRODUCTS = [
        "desk",
        "bookshelf",
        "stool",
        "cabinet",
        "bench",
        "lamp",
        "wardrobe",
        "crate",
        "planter",
        "easel",
    ]
    RESOURCES = ["cutting", "assembly", "sanding", "painting", "packing", "inspection"]

    def sample(self, rng, size, infeasible):
        n, k = 2 + size, 2 + (size + 1) // 2
        prods, res = pick(rng, self.PRODUCTS, n), pick(rng, self.RESOURCES, k)
        minutes = rng.random() < 0.3
        use = [[rng.randint(10, 90) if minutes else rng.randint(1, 9) for _ in prods] for _ in res]
        cap = [rng.randint(40, 400) for _ in res]
        profit = [rng.randint(5, 80) for _ in prods]
        min_units = [0] * n
        if infeasible:
            j = rng.randrange(n)
            per_h = [(60 if minutes else 1) * cap[i] / use[i][j] for i in range(k)]
            min_units[j] = int(min(per_h)) + rng.randint(2, 10)
        elif rng.random() < 0.4:
            j = rng.randrange(n)
            min_units[j] = rng.randint(1, 5)
        return dict(
            company=rng.choice(COMPANIES),
            products=prods,
            resources=res,
            use=use,
            cap=cap,
            profit=profit,
            min_units=min_units,
            integer=rng.random() < 0.5,
            minutes=minutes,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        cur, unit = p["currency"], ("minutes" if p["minutes"] else "hours")
        prods = [plural(x) for x in p["products"]]
        intro = rng.choice(
            [
                f"{p['company']} builds {join(prods)}.",
                f"A workshop run by {p['company']} makes {len(prods)} kinds of items: {join(prods)}.",
                f"{p['company']} is planning next week's output of {join(prods)}.",
            ]
        )
        per_prod = rng.random() < 0.5
        clauses = []
        if per_prod:
            for j, prod in enumerate(p["products"]):
                parts = [f"{fmt(p['use'][i][j])} {unit} of {r}" for i, r in enumerate(p["resources"])]
                clauses.append(f"Each {prod} needs {join(parts)}.")
        else:
            for i, r in enumerate(p["resources"]):
                parts = [f"{fmt(p['use'][i][j])} {unit} per {prod}" for j, prod in enumerate(p["products"])]
                clauses.append(f"The {r} stage takes {join(parts)}.")
        caps = [f"{fmt(c)} hours of {r}" for c, r in zip(p["cap"], p["resources"])]
        clauses.append(
            rng.choice(["At most ", "The week offers at most ", "Available capacity is "]) + join(caps) + "."
        )
        profits = [f"{money(v, cur)} per {prod}" for v, prod in zip(p["profit"], p["products"])]
        clauses.append(
            rng.choice(["The profit is ", "Each unit sold earns a profit of "]) + join(profits) + "."
        )
        for prod, lo in zip(p["products"], p["min_units"]):
            if lo:
                clauses.append(f"A contract requires at least {lo} {plural(prod)} to be made.")
        clauses = shuffled(rng, clauses)
        whole = (
            rng.choice(["Only whole items can be made.", "Items must be produced in whole numbers."])
            if p["integer"]
            else rng.choice(
                [
                    "Fractional quantities are fine (they model an average week).",
                    "Quantities may be fractional.",
                ]
            )
        )
        ask = rng.choice(
            [
                f"What is the largest total profit (in {cur}) the plan can reach?",
                f"Find the production plan that maximizes total profit and report that profit in {cur}.",
            ]
        )
        return " ".join([intro, *clauses, whole, ask])

    def data_code(self, p):
        unit = "minutes" if p["minutes"] else "hours"
        use = {
            (r, x): p["use"][i][j] for i, r in enumerate(p["resources"]) for j, x in enumerate(p["products"])
        }
        lines = [
            f"products = {py(p['products'])}",
            f"resources = {py(p['resources'])}",
            f"profit = {py(dict(zip(p['products'], p['profit'])))}",
            f"use = {py(use)}  # {unit} of resource per unit of product",
            f"capacity = {py(dict(zip(p['resources'], p['cap'])))}  # hours available",
        ]
        if any(p["min_units"]):
            lines.append(f"min_units = {py({x: v for x, v in zip(p['products'], p['min_units']) if v})}")
        return "\n".join(lines)

    def model_code(self, p):
        dom = "NonNegativeIntegers" if p["integer"] else "NonNegativeReals"
        cap = "capacity[r] * 60" if p["minutes"] else "capacity[r]"
        code = (
            f"m.x = pyo.Var(products, within=pyo.{dom})\n"
            "m.obj = pyo.Objective(expr=sum(profit[p] * m.x[p] for p in products), sense=pyo.maximize)\n"
            "m.capacity = pyo.ConstraintList()\n"
            "for r in resources:\n"
            f"    m.capacity.add(sum(use[r, p] * m.x[p] for p in products) <= {cap})"
            + ("  # hours -> minutes\n" if p["minutes"] else "\n")
        )
        if any(p["min_units"]):
            code += "m.contract = pyo.ConstraintList()\nfor p, lo in min_units.items():\n    m.contract.add(m.x[p] >= lo)\n"
        return code

    def form(self, p):
        f = LinearForm("max")
        xs = [
            f.var(f"x_{ident(x)}", integer=p["integer"], cost=v) for x, v in zip(p["products"], p["profit"])
        ]
        for i, r in enumerate(p["resources"]):
            f.le({j: p["use"][i][k] for k, j in enumerate(xs)}, p["cap"][i] * (60 if p["minutes"] else 1), r)
        for j, lo in zip(xs, p["min_units"]):
            if lo:
                f.ge({j: 1}, lo, "contract")
        return f

    def words(self, p):
        s = (
            "Let x_p be the number of units of product p to make"
            + (" (a whole number)." if p["integer"] else ".")
            + " Each resource limits the total time the products use; the objective is total profit."
        )
        if p["minutes"]:
            s += " Times per unit are in minutes but capacities in hours, so capacities are multiplied by 60."
        if any(p["min_units"]):
            s += " Contract minimums become lower bounds on x."
        return s

    def unit_factors(self, p):
        return (60,) if p["minutes"] else ()


# ---------------------------------------------------------------------------------------------------------


class Diet(Family):
    name = "diet"
    supports_infeasible = True
    scalable = ("cost", "need")

    FOODS = [
        "oats",
        "lentils",
        "rice",
        "spinach",
        "eggs",
        "yogurt",
        "tofu",
        "peanuts",
        "apples",
        "sardines",
        "barley",
    ]
    NUTRIENTS = [("protein", "g"), ("fiber", "g"), ("iron", "mg"), ("calcium", "mg"), ("vitamin C", "mg")]

    def sample(self, rng, size, infeasible):
        n, k = 2 + size, 2 + min(size, 3)
        foods, nuts = pick(rng, self.FOODS, n), rng.sample(self.NUTRIENTS, k)
        content = [[rng.randint(0, 20) for _ in foods] for _ in nuts]
        for i in range(k):  # every nutrient is in some food
            content[i][rng.randrange(n)] = rng.randint(5, 25)
        cost = [round(rng.uniform(0.2, 3.0), 2) for _ in foods]
        max_serv = rng.randint(4, 10)
        need = []
        for i in range(k):
            best = max_serv * sum(content[i])
            need.append(
                int(best * rng.uniform(1.05, 1.5))
                if infeasible and i == 0
                else int(best * rng.uniform(0.15, 0.6)) + 1
            )
        return dict(
            foods=foods,
            nutrients=[a for a, _ in nuts],
            units=[b for _, b in nuts],
            content=content,
            cost=cost,
            need=need,
            max_serv=max_serv,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        cur = p["currency"]
        who = rng.choice(["A hospital kitchen", "A school canteen", "A hiker", "A care home dietitian"])
        intro = rng.choice(
            [
                f"{who} wants the cheapest daily menu built from {join(p['foods'])}.",
                f"{who} plans a low-cost daily diet using servings of {join(p['foods'])}.",
            ]
        )
        clauses = []
        for j, food in enumerate(p["foods"]):
            parts = [
                f"{fmt(p['content'][i][j])} {u} of {nut}"
                for i, (nut, u) in enumerate(zip(p["nutrients"], p["units"]))
            ]
            clauses.append(
                f"A serving of {food} costs {money(p['cost'][j], cur)} and contains {join(parts)}."
            )
        reqs = [f"{fmt(v)} {u} of {nut}" for v, nut, u in zip(p["need"], p["nutrients"], p["units"])]
        clauses.append(
            rng.choice(["The menu must provide at least ", "Daily intake must reach at least "])
            + join(reqs)
            + "."
        )
        clauses.append(
            f"No more than {p['max_serv']} servings of any single food are allowed, and servings may be fractional."
        )
        ask = rng.choice(
            [
                f"What is the minimum daily cost in {cur}?",
                f"Determine the lowest possible cost ({cur}) of such a menu.",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        content = {
            (n, f): p["content"][i][j] for i, n in enumerate(p["nutrients"]) for j, f in enumerate(p["foods"])
        }
        return "\n".join(
            [
                f"foods = {py(p['foods'])}",
                f"nutrients = {py(p['nutrients'])}",
                f"cost = {py(dict(zip(p['foods'], p['cost'])))}  # per serving",
                f"content = {py(content)}  # per serving",
                f"need = {py(dict(zip(p['nutrients'], p['need'])))}",
                f"max_servings = {p['max_serv']}",
            ]
        )

    def model_code(self, p):
        return (
            "m.x = pyo.Var(foods, bounds=(0, max_servings))\n"
            "m.obj = pyo.Objective(expr=sum(cost[f] * m.x[f] for f in foods), sense=pyo.minimize)\n"
            "m.need = pyo.ConstraintList()\n"
            "for n in nutrients:\n"
            "    m.need.add(sum(content[n, f] * m.x[f] for f in foods) >= need[n])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        xs = [f.var(f"x_{ident(x)}", 0, p["max_serv"], cost=c) for x, c in zip(p["foods"], p["cost"])]
        for i, n in enumerate(p["nutrients"]):
            f.ge({j: p["content"][i][k] for k, j in enumerate(xs)}, p["need"][i], ident(n))
        return f

    def words(self, p):
        return (
            f"Let x_f be the servings of food f, between 0 and {p['max_serv']}. Each nutrient's total must reach its "
            "requirement; minimize the total cost of the servings."
        )


# ---------------------------------------------------------------------------------------------------------


class Blending(Family):
    name = "blending"
    supports_infeasible = True
    scalable = ("cost",)

    INGREDIENTS = [
        "soy meal",
        "corn",
        "wheat bran",
        "fish meal",
        "barley",
        "sunflower cake",
        "alfalfa",
        "peas",
    ]

    def sample(self, rng, size, infeasible):
        n = 3 + size
        ings = pick(rng, self.INGREDIENTS, n)
        prot = [rng.randint(5, 50) for _ in ings]
        fat = [rng.randint(1, 15) for _ in ings]
        cost = [round(rng.uniform(0.1, 1.5), 2) for _ in ings]
        total = rng.choice([500, 800, 1000, 1200, 2000])
        avail = [rng.randint(total // 4, total) for _ in ings]
        if infeasible:
            avail = [max(1, int(a * (total * 0.9) / sum(avail))) for a in avail]
        elif sum(avail) < total:
            avail[0] += total
        lo, hi = sorted(prot)[n // 2], max(fat)
        min_prot = rng.randint(min(prot), max(min(prot), lo))
        max_fat = rng.randint(min(fat) + 1, hi) if hi > min(fat) + 1 else hi
        return dict(
            ingredients=ings,
            protein=prot,
            fat=fat,
            cost=cost,
            total=total,
            avail=avail,
            min_prot=min_prot,
            max_fat=max_fat,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        cur = p["currency"]
        intro = rng.choice(
            [
                f"A feed mill must blend exactly {p['total']} kg of animal feed from {join(p['ingredients'])}.",
                f"A farm cooperative mixes {join(p['ingredients'])} into one batch of {p['total']} kg of feed.",
            ]
        )
        clauses = [
            f"{ing.capitalize()} costs {money(c, cur)} per kg, is {pr}% protein and {fa}% fat, and at most {a} kg of it is in stock."
            for ing, c, pr, fa, a in zip(p["ingredients"], p["cost"], p["protein"], p["fat"], p["avail"])
        ]
        clauses.append(
            f"The finished feed must be at least {p['min_prot']}% protein and at most {p['max_fat']}% fat by weight."
        )
        ask = rng.choice(
            [
                f"What is the minimum cost of the batch in {cur}?",
                f"Find the cheapest blend; what does it cost ({cur})?",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        ing = p["ingredients"]
        return "\n".join(
            [
                f"ingredients = {py(ing)}",
                f"cost = {py(dict(zip(ing, p['cost'])))}  # per kg",
                f"protein = {py(dict(zip(ing, p['protein'])))}  # percent",
                f"fat = {py(dict(zip(ing, p['fat'])))}  # percent",
                f"stock = {py(dict(zip(ing, p['avail'])))}  # kg",
                f"total = {p['total']}  # kg",
                f"min_protein = {p['min_prot']}  # percent",
                f"max_fat = {p['max_fat']}  # percent",
            ]
        )

    def model_code(self, p):
        return (
            "m.x = pyo.Var(ingredients, within=pyo.NonNegativeReals)\n"
            "m.obj = pyo.Objective(expr=sum(cost[i] * m.x[i] for i in ingredients), sense=pyo.minimize)\n"
            "m.total = pyo.Constraint(expr=sum(m.x[i] for i in ingredients) == total)\n"
            "m.protein = pyo.Constraint(expr=sum(protein[i] / 100 * m.x[i] for i in ingredients) >= min_protein / 100 * total)\n"
            "m.fat = pyo.Constraint(expr=sum(fat[i] / 100 * m.x[i] for i in ingredients) <= max_fat / 100 * total)\n"
            "m.stock = pyo.ConstraintList()\n"
            "for i in ingredients:\n"
            "    m.stock.add(m.x[i] <= stock[i])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        xs = [
            f.var(f"x_{ident(i)}", 0, a, cost=c) for i, a, c in zip(p["ingredients"], p["avail"], p["cost"])
        ]
        f.eq({j: 1 for j in xs}, p["total"], "total")
        # percentages against the fixed total: sum (p_i - p_min) x_i >= 0 is the same constraint
        f.ge({j: pr - p["min_prot"] for j, pr in zip(xs, p["protein"])}, 0, "protein")
        f.le({j: fa - p["max_fat"] for j, fa in zip(xs, p["fat"])}, 0, "fat")
        return f

    def words(self, p):
        return (
            "Let x_i be the kilograms of ingredient i in the batch (at most its stock). The kilograms add up to the "
            "batch size; protein content (percent times kg) must reach the minimum share of the batch and fat must "
            "stay under its maximum share. Equivalently sum (protein_i - min) x_i >= 0 and sum (fat_i - max) x_i <= 0. "
            "Minimize the total ingredient cost."
        )

    def unit_factors(self, p):
        return (100,)
