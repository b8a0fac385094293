"""Continuous (and optionally integer) resource-allocation families: production, diet, blending,
transportation, portfolio, min-cost flow."""

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


# ---------------------------------------------------------------------------------------------------------


class Transportation(Family):
    name = "transportation"
    supports_infeasible = True
    scalable = ("cost", "supply", "demand")

    PLANTS = ["Ashford", "Bramley", "Corby", "Denholm", "Easton", "Fairhaven"]
    STORES = ["Galway", "Hexham", "Ilkley", "Jarrow", "Keswick", "Ludlow", "Malton", "Newark"]

    def sample(self, rng, size, infeasible):
        s, d = 2 + (size + 1) // 2, 2 + size
        plants, stores = pick(rng, self.PLANTS, s), pick(rng, self.STORES, d)
        demand = [rng.randint(10, 90) for _ in stores]
        supply = [rng.randint(20, 120) for _ in plants]
        gap = sum(demand) - sum(supply)
        if infeasible and gap <= 0:
            demand[0] += -gap + rng.randint(1, 20)
        elif not infeasible and gap > 0:
            supply[0] += gap + rng.randint(0, 30)
        cost = [[rng.randint(1, 20) for _ in stores] for _ in plants]
        return dict(
            plants=plants,
            stores=stores,
            supply=supply,
            demand=demand,
            cost=cost,
            currency=rng.choice(CURRENCIES)[0],
            good=rng.choice(["pallets", "crates", "tonnes of gravel"]),
        )

    def statement(self, p, rng):
        cur, good = p["currency"], p["good"]
        intro = rng.choice(
            [
                f"Depots in {join(p['plants'])} ship {good} to shops in {join(p['stores'])}.",
                f"A distributor moves {good} from its warehouses ({join(p['plants'])}) to customers in {join(p['stores'])}.",
            ]
        )
        clauses = [f"{pl} can send at most {s} {good}." for pl, s in zip(p["plants"], p["supply"])]
        clauses += [f"{st} needs at least {d} {good}." for st, d in zip(p["stores"], p["demand"])]
        for i, pl in enumerate(p["plants"]):
            parts = [f"{money(p['cost'][i][j], cur)} to {st}" for j, st in enumerate(p["stores"])]
            clauses.append(f"Shipping one unit from {pl} costs {join(parts)}.")
        ask = rng.choice(
            [
                f"What is the minimum total shipping cost in {cur}?",
                f"Find the cheapest shipping plan and give its cost in {cur}.",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        cost = {(a, b): p["cost"][i][j] for i, a in enumerate(p["plants"]) for j, b in enumerate(p["stores"])}
        return "\n".join(
            [
                f"sources = {py(p['plants'])}",
                f"sinks = {py(p['stores'])}",
                f"supply = {py(dict(zip(p['plants'], p['supply'])))}",
                f"demand = {py(dict(zip(p['stores'], p['demand'])))}",
                f"cost = {py(cost)}",
            ]
        )

    def model_code(self, p):
        return (
            "m.x = pyo.Var(sources, sinks, within=pyo.NonNegativeReals)\n"
            "m.obj = pyo.Objective(expr=sum(cost[i, j] * m.x[i, j] for i in sources for j in sinks), sense=pyo.minimize)\n"
            "m.supply = pyo.ConstraintList()\n"
            "for i in sources:\n"
            "    m.supply.add(sum(m.x[i, j] for j in sinks) <= supply[i])\n"
            "m.demand = pyo.ConstraintList()\n"
            "for j in sinks:\n"
            "    m.demand.add(sum(m.x[i, j] for i in sources) >= demand[j])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        x = [
            [f.var(f"x_{ident(a)}_{ident(b)}", cost=p["cost"][i][j]) for j, b in enumerate(p["stores"])]
            for i, a in enumerate(p["plants"])
        ]
        for i, a in enumerate(p["plants"]):
            f.le({j: 1 for j in x[i]}, p["supply"][i], f"supply {a}")
        for j, b in enumerate(p["stores"]):
            f.ge({row[j]: 1 for row in x}, p["demand"][j], f"demand {b}")
        return f

    def words(self, p):
        return (
            "Let x_ij be the units shipped from source i to destination j. Each source ships at most its supply, "
            "each destination receives at least its demand; minimize the total shipping cost."
        )


# ---------------------------------------------------------------------------------------------------------


class Portfolio(Family):
    name = "portfolio"
    supports_infeasible = True
    scalable = ("budget",)

    ASSETS = [
        ("a municipal bond fund", "safe"),
        ("treasury bills", "safe"),
        ("a savings account", "safe"),
        ("a dividend stock fund", "risky"),
        ("a tech index", "risky"),
        ("emerging-market shares", "risky"),
        ("a real-estate trust", "risky"),
        ("corporate bonds", "safe"),
    ]

    def sample(self, rng, size, infeasible):
        n = 3 + size
        assets = rng.sample(self.ASSETS, n)
        if all(k == "safe" for _, k in assets) or all(k == "risky" for _, k in assets):
            assets[0] = ("a tech index", "risky") if assets[0][1] == "safe" else ("treasury bills", "safe")
            if len({a for a, _ in assets}) < n:
                assets[0] = (
                    ("a gold fund", "risky") if assets[0][1] == "risky" else ("a bank deposit", "safe")
                )
        ret = [
            round(rng.uniform(1.0, 4.0), 1) if k == "safe" else round(rng.uniform(4.0, 12.0), 1)
            for _, k in assets
        ]
        budget = rng.choice([10000, 20000, 50000, 100000, 250000])
        cap_pct = rng.choice([30, 40, 50, 60])
        if cap_pct * n < 100:
            cap_pct = 100 // n + 10
        min_safe = rng.randint(20, 60)
        n_safe = sum(k == "safe" for _, k in assets)
        if infeasible:
            min_safe = min(100, n_safe * cap_pct + rng.randint(5, 20))
            if min_safe <= n_safe * cap_pct:
                infeasible = False
        else:
            min_safe = min(min_safe, n_safe * cap_pct)
        return dict(
            assets=[a for a, _ in assets],
            kind=[k for _, k in assets],
            ret=ret,
            budget=budget,
            cap_pct=cap_pct,
            min_safe=min_safe,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        cur = p["currency"]
        intro = rng.choice(
            [
                f"An investor has {money(p['budget'], cur)} to place in {join(p['assets'])}.",
                f"A family trust will invest {money(p['budget'], cur)} across {len(p['assets'])} options: {join(p['assets'])}.",
            ]
        )
        clauses = [
            f"{a[0].upper() + a[1:]} is expected to return {fmt(r)}% per year and counts as {'low-risk' if k == 'safe' else 'high-risk'}."
            for a, r, k in zip(p["assets"], p["ret"], p["kind"])
        ]
        clauses.append(f"No single option may receive more than {p['cap_pct']}% of the money.")
        clauses.append(f"At least {p['min_safe']}% of the money must go to low-risk options.")
        clauses.append("The whole amount does not have to be invested.")
        ask = rng.choice(
            [
                f"What is the largest expected yearly return in {cur}?",
                f"How much return ({cur} per year) can the best allocation expect?",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        return "\n".join(
            [
                f"assets = {py(p['assets'])}",
                f"expected_return = {py(dict(zip(p['assets'], p['ret'])))}  # percent per year",
                f"low_risk = {py([a for a, k in zip(p['assets'], p['kind']) if k == 'safe'])}",
                f"budget = {p['budget']}",
                f"max_share = {p['cap_pct']}  # percent of the budget per option",
                f"min_low_risk = {p['min_safe']}  # percent of the budget",
            ]
        )

    def model_code(self, p):
        return (
            "m.x = pyo.Var(assets, bounds=(0, max_share / 100 * budget))\n"
            "m.obj = pyo.Objective(expr=sum(expected_return[a] / 100 * m.x[a] for a in assets), sense=pyo.maximize)\n"
            "m.budget = pyo.Constraint(expr=sum(m.x[a] for a in assets) <= budget)\n"
            "m.low_risk = pyo.Constraint(expr=sum(m.x[a] for a in low_risk) >= min_low_risk / 100 * budget)\n"
        )

    def form(self, p):
        f = LinearForm("max")
        cap = p["budget"] * p["cap_pct"] / 100
        xs = [f.var(f"x{k + 1}", 0, cap, cost=r / 100) for k, r in enumerate(p["ret"])]
        f.le({j: 1 for j in xs}, p["budget"], "budget")
        f.ge(
            {j: 1 for j, k in zip(xs, p["kind"]) if k == "safe"},
            p["budget"] * p["min_safe"] / 100,
            "low risk",
        )
        return f

    def words(self, p):
        return (
            "Let x_a be the money placed in option a (x1, x2, ... in the order listed), capped at the maximum "
            "share of the budget. The total is at most the budget and the low-risk options get at least their "
            "required share. Maximize the expected return sum (r_a / 100) x_a."
        )

    def unit_factors(self, p):
        return (100,)


# ---------------------------------------------------------------------------------------------------------


class MinCostFlow(Family):
    name = "min_cost_flow"
    supports_infeasible = True
    scalable = ("cost",)

    def sample(self, rng, size, infeasible):
        # layered network: supply nodes -> hubs -> demand nodes, plus a few hub-to-hub arcs
        ns, nh, nd = 1 + size // 2, 2 + (size + 1) // 2, 2 + size // 2
        s_names = [f"S{k + 1}" for k in range(ns)]
        h_names = [f"H{k + 1}" for k in range(nh)]
        d_names = [f"D{k + 1}" for k in range(nd)]
        arcs = []
        for a in s_names:
            for b in h_names:
                if rng.random() < 0.8:
                    arcs.append([a, b, rng.randint(1, 12), rng.randint(20, 80)])
        for k in range(nh - 1):
            if rng.random() < 0.5:
                arcs.append([h_names[k], h_names[k + 1], rng.randint(1, 5), rng.randint(10, 50)])
        for a in h_names:
            for b in d_names:
                if rng.random() < 0.7:
                    arcs.append([a, b, rng.randint(1, 12), rng.randint(20, 80)])
        for b in d_names:  # every demand node reachable
            if not any(arc[1] == b for arc in arcs):
                arcs.append([rng.choice(h_names), b, rng.randint(1, 12), rng.randint(20, 80)])
        for h in h_names:  # every hub has a way in and a way out (no empty balance rows)
            if not any(arc[1] == h for arc in arcs):
                arcs.append([rng.choice(s_names), h, rng.randint(1, 12), rng.randint(20, 80)])
            if not any(arc[0] == h for arc in arcs):
                arcs.append([h, rng.choice(d_names), rng.randint(1, 12), rng.randint(20, 80)])
        for a in s_names:
            if not any(arc[0] == a for arc in arcs):
                arcs.append([a, rng.choice(h_names), rng.randint(1, 12), rng.randint(20, 80)])
        demand = [rng.randint(10, 40) for _ in d_names]
        supply = [rng.randint(30, 90) for _ in s_names]
        if sum(supply) < sum(demand):
            supply[0] += sum(demand) - sum(supply) + 5
        if infeasible:
            b = d_names[0]
            inflow = sum(arc[3] for arc in arcs if arc[1] == b)
            demand[0] = inflow + rng.randint(1, 20)
            if sum(supply) < sum(demand):
                supply[0] += sum(demand) - sum(supply)
        return dict(
            sources=s_names,
            hubs=h_names,
            sinks=d_names,
            arcs=arcs,
            supply=supply,
            demand=demand,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        cur = p["currency"]
        intro = rng.choice(
            [
                f"A courier network has supply points {join(p['sources'])}, transfer hubs {join(p['hubs'])} and delivery points {join(p['sinks'])}.",
                f"Parcels travel through a network of depots ({join(p['sources'])}), hubs ({join(p['hubs'])}) and customer sites ({join(p['sinks'])}).",
            ]
        )
        clauses = [f"{a} can send out at most {s} parcels." for a, s in zip(p["sources"], p["supply"])]
        clauses += [f"{b} must receive exactly {d} parcels." for b, d in zip(p["sinks"], p["demand"])]
        clauses.append("Hubs neither create nor keep parcels.")
        lanes = [f"{a}->{b} (cost {money(c, cur)} per parcel, capacity {u})" for a, b, c, u in p["arcs"]]
        clauses.append("The available one-way lanes are " + join(shuffled(rng, lanes)) + ".")
        ask = rng.choice(
            [
                f"What is the minimum total routing cost in {cur}?",
                f"Route the parcels as cheaply as possible; what is the cost in {cur}?",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        arcs = {(a, b): (c, u) for a, b, c, u in p["arcs"]}
        return "\n".join(
            [
                f"supply = {py(dict(zip(p['sources'], p['supply'])))}  # max outflow",
                f"demand = {py(dict(zip(p['sinks'], p['demand'])))}  # exact inflow",
                f"hubs = {py(p['hubs'])}",
                f"arcs = {py(arcs)}  # (cost per parcel, capacity)",
            ]
        )

    def model_code(self, p):
        return (
            "m.f = pyo.Var(list(arcs), within=pyo.NonNegativeReals)\n"
            "m.obj = pyo.Objective(expr=sum(arcs[a][0] * m.f[a] for a in arcs), sense=pyo.minimize)\n"
            "m.cap = pyo.ConstraintList()\n"
            "for a in arcs:\n"
            "    m.cap.add(m.f[a] <= arcs[a][1])\n"
            "def net_out(n):\n"
            "    return sum(m.f[a] for a in arcs if a[0] == n) - sum(m.f[a] for a in arcs if a[1] == n)\n"
            "m.balance = pyo.ConstraintList()\n"
            "for n in supply:\n"
            "    m.balance.add(net_out(n) <= supply[n])\n"
            "for n in hubs:\n"
            "    m.balance.add(net_out(n) == 0)\n"
            "for n in demand:\n"
            "    m.balance.add(net_out(n) == -demand[n])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        idx = [f.var(f"f_{a}_{b}", 0, u, cost=c) for a, b, c, u in p["arcs"]]
        nodes = {n: [] for n in p["sources"] + p["hubs"] + p["sinks"]}
        for j, (a, b, _, _) in zip(idx, p["arcs"]):
            nodes[a].append((j, 1.0))
            nodes[b].append((j, -1.0))

        def coefs(n):
            out: dict[int, float] = {}
            for j, s in nodes[n]:
                out[j] = out.get(j, 0.0) + s
            return out

        for n, s in zip(p["sources"], p["supply"]):
            f.le(coefs(n), s, n)
        for n in p["hubs"]:
            f.eq(coefs(n), 0, n)
        for n, d in zip(p["sinks"], p["demand"]):
            f.eq(coefs(n), -d, n)
        return f

    def words(self, p):
        return (
            "Let f_ab be the parcels sent along lane a->b, between 0 and the lane capacity. Net outflow (out minus in) "
            "is at most the supply at a supply point, zero at a hub and minus the demand at a delivery point. "
            "Minimize the total routing cost."
        )
