"""Mixed-integer planning families: cutting stock, staff scheduling, facility location, lot sizing."""

from __future__ import annotations

from storm_jax.data.synth.core import (
    COMPANIES,
    CURRENCIES,
    LinearForm,
    ident,
    join,
    money,
    pick,
    py,
    shuffled,
)
from storm_jax.data.synth.family import Family


class CuttingStock(Family):
    name = "cutting_stock"
    scalable = ("demand",)

    def sample(self, rng, size, infeasible):
        width = rng.choice([100, 120, 150, 200, 250])
        k = 2 + (size + 1) // 2
        pieces = sorted(rng.sample(range(width // 8, width // 2), k), reverse=True)
        demand = [rng.randint(5, 40) for _ in pieces]
        pats: list[list[int]] = []
        for _ in range(3 + size * 2):
            left, pat = width, [0] * k
            for j in rng.sample(range(k), k):
                q = rng.randint(0, left // pieces[j])
                pat[j] = q
                left -= q * pieces[j]
            if any(pat) and pat not in pats:
                pats.append(pat)
        for j in range(k):  # every piece type appears in some pattern
            if not any(pt[j] for pt in pats):
                pats.append([width // pieces[j] if i == j else 0 for i in range(k)])
        return dict(width=width, pieces=pieces, demand=demand, patterns=pats, unit=rng.choice(["cm", "mm"]))

    def currency_of(self, p):
        return None

    def statement(self, p, rng):
        u = p["unit"]
        intro = rng.choice(
            [
                f"A paper mill cuts master rolls {p['width']} {u} wide into narrower rolls.",
                f"Steel coils {p['width']} {u} wide are slit into strips for customers.",
            ]
        )
        orders = [f"{d} pieces of width {w} {u}" for w, d in zip(p["pieces"], p["demand"])]
        clauses = ["Customers have ordered " + join(orders) + " (more pieces than ordered are fine)."]
        pats = []
        for k, pt in enumerate(p["patterns"]):
            parts = [f"{q} of width {w} {u}" for q, w in zip(pt, p["pieces"]) if q]
            pats.append(f"pattern {k + 1} gives {join(parts)}")
        clauses.append("The cutting machine is set up for these patterns per roll: " + "; ".join(pats) + ".")
        ask = rng.choice(
            ["What is the smallest number of master rolls that must be cut?", "How few master rolls suffice?"]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        pats = {k + 1: {w: q for q, w in zip(pt, p["pieces"]) if q} for k, pt in enumerate(p["patterns"])}
        return "\n".join(
            [
                f"demand = {py(dict(zip(p['pieces'], p['demand'])))}  # width -> pieces ordered",
                f"patterns = {py(pats)}  # pattern -> {{width: pieces per roll}}",
            ]
        )

    def model_code(self, p):
        return (
            "m.n = pyo.Var(list(patterns), within=pyo.NonNegativeIntegers)\n"
            "m.obj = pyo.Objective(expr=sum(m.n[k] for k in patterns), sense=pyo.minimize)\n"
            "m.demand = pyo.ConstraintList()\n"
            "for w in demand:\n"
            "    m.demand.add(sum(patterns[k].get(w, 0) * m.n[k] for k in patterns) >= demand[w])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        xs = [f.var(f"n_{k + 1}", 0, max(p["demand"]), True, 1) for k in range(len(p["patterns"]))]
        for j, d in enumerate(p["demand"]):
            f.ge({x: pt[j] for x, pt in zip(xs, p["patterns"]) if pt[j]}, d, f"width {p['pieces'][j]}")
        return f

    def words(self, p):
        return (
            "Let n_k be the number of master rolls cut with pattern k (a whole number). For each ordered width, "
            "the pieces produced must cover the order; minimize the number of rolls."
        )


class StaffScheduling(Family):
    name = "staff_scheduling"
    supports_infeasible = True
    scalable = ("need",)

    def sample(self, rng, size, infeasible):
        blocks = 4 + size  # cyclic day split into blocks; a shift covers two consecutive blocks
        need = [rng.randint(2, 15) for _ in range(blocks)]
        wage = [rng.randint(80, 160) for _ in range(blocks)]
        max_staff = None
        if infeasible:
            max_staff = max(need) - rng.randint(1, 2)  # the busiest block alone needs max(need) people
        elif rng.random() < 0.3:
            max_staff = sum(need)
        return dict(
            need=need,
            wage=wage,
            max_staff=max_staff,
            hours=24 // blocks if 24 % blocks == 0 else 3,
            place=rng.choice(["call center", "hospital ward", "parking garage", "help desk"]),
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        b = len(p["need"])
        intro = rng.choice(
            [
                f"A {p['place']} divides its operating cycle into {b} consecutive blocks, numbered 1 to {b}; after block {b} comes block 1 again.",
                f"The {p['place']} plans staffing over {b} time blocks (1 to {b}) that repeat in a loop.",
            ]
        )
        rule = rng.choice(
            [
                "Every worker works a shift of two consecutive blocks, starting at the beginning of any block.",
                "A shift lasts exactly two consecutive blocks and may start at any block.",
            ]
        )
        needs = [f"{n} in block {k + 1}" for k, n in enumerate(p["need"])]
        clauses = ["The minimum number of staff on duty is " + join(needs) + "."]
        wages = [
            f"{money(w, p['currency'])} for a shift starting in block {k + 1}"
            for k, w in enumerate(p["wage"])
        ]
        clauses.append("Pay per worker is " + join(wages) + ".")
        if p["max_staff"] is not None:
            clauses.append(f"At most {p['max_staff']} workers can be hired in total.")
        ask = rng.choice(
            [
                f"What is the minimum total pay in {p['currency']}?",
                f"Find the cheapest roster; what does it cost ({p['currency']})?",
            ]
        )
        return " ".join([intro, rule, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        lines = [
            f"blocks = list(range(1, {len(p['need'])} + 1))",
            f"need = {py({k + 1: n for k, n in enumerate(p['need'])})}",
            f"pay = {py({k + 1: w for k, w in enumerate(p['wage'])})}  # per worker starting in block",
        ]
        if p["max_staff"] is not None:
            lines.append(f"max_staff = {p['max_staff']}")
        return "\n".join(lines)

    def model_code(self, p):
        code = (
            "m.start = pyo.Var(blocks, within=pyo.NonNegativeIntegers)\n"
            "m.obj = pyo.Objective(expr=sum(pay[b] * m.start[b] for b in blocks), sense=pyo.minimize)\n"
            "m.cover = pyo.ConstraintList()\n"
            "for b in blocks:\n"
            "    prev = b - 1 if b > 1 else len(blocks)  # the cycle wraps around\n"
            "    m.cover.add(m.start[b] + m.start[prev] >= need[b])\n"
        )
        if p["max_staff"] is not None:
            code += "m.staff = pyo.Constraint(expr=sum(m.start[b] for b in blocks) <= max_staff)\n"
        return code

    def form(self, p):
        f = LinearForm("min")
        b = len(p["need"])
        xs = [f.var(f"s_{k + 1}", 0, max(p["need"]), True, w) for k, w in enumerate(p["wage"])]
        for k in range(b):
            f.ge({xs[k]: 1, xs[(k - 1) % b]: 1}, p["need"][k], f"block {k + 1}")
        if p["max_staff"] is not None:
            f.le({x: 1 for x in xs}, p["max_staff"], "staff")
        return f

    def words(self, p):
        return (
            "Let s_b be the number of workers whose shift starts in block b (a whole number). Block b is covered by "
            "shifts starting in b and in the block before it (block 1 follows the last block); minimize total pay."
        )


class FacilityLocation(Family):
    name = "facility_location"
    supports_infeasible = True
    scalable = ("open_cost", "ship")

    def sample(self, rng, size, infeasible):
        nf, nc = 2 + (size + 1) // 2, 3 + size
        sites = pick(rng, ["Arden", "Belmont", "Crestview", "Dover", "Elmwood", "Fulton"], nf)
        custs = pick(rng, ["Hale", "Irvine", "Jasper", "Kent", "Lorne", "Marlow", "Nash", "Otley"], nc)
        demand = [rng.randint(10, 60) for _ in custs]
        cap = [rng.randint(40, 140) for _ in sites]
        if infeasible:
            cap = [max(5, int(c * 0.9 * sum(demand) / sum(cap))) for c in cap]
            if sum(cap) >= sum(demand):
                cap[0] = max(1, cap[0] - (sum(cap) - sum(demand)) - 1)
        elif sum(cap) < sum(demand):
            cap[0] += sum(demand) - sum(cap) + 10
        open_cost = [rng.randint(100, 600) for _ in sites]
        ship = [[rng.randint(1, 15) for _ in custs] for _ in sites]
        return dict(
            sites=sites,
            custs=custs,
            demand=demand,
            cap=cap,
            open_cost=open_cost,
            ship=ship,
            currency=rng.choice(CURRENCIES)[0],
        )

    def statement(self, p, rng):
        cur = p["currency"]
        intro = rng.choice(
            [
                f"A retailer can open warehouses in {join(p['sites'])} to serve stores in {join(p['custs'])}.",
                f"Candidate depot sites are {join(p['sites'])}; the customers are {join(p['custs'])}.",
            ]
        )
        clauses = [
            f"Opening {s} costs {money(o, cur)} and lets it ship up to {c} units."
            for s, o, c in zip(p["sites"], p["open_cost"], p["cap"])
        ]
        clauses += [f"{c} orders {d} units." for c, d in zip(p["custs"], p["demand"])]
        for i, s in enumerate(p["sites"]):
            parts = [f"{money(p['ship'][i][j], cur)} to {c}" for j, c in enumerate(p["custs"])]
            clauses.append(f"Each unit sent from {s} costs {join(parts)}.")
        clauses.append("Only opened sites can ship, and a customer's order may be split between sites.")
        ask = rng.choice(
            [
                f"What is the minimum total of opening and shipping costs in {cur}?",
                f"Which sites should open? Report the minimum total cost in {cur}.",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        ship = {(a, b): p["ship"][i][j] for i, a in enumerate(p["sites"]) for j, b in enumerate(p["custs"])}
        return "\n".join(
            [
                f"open_cost = {py(dict(zip(p['sites'], p['open_cost'])))}",
                f"capacity = {py(dict(zip(p['sites'], p['cap'])))}",
                f"demand = {py(dict(zip(p['custs'], p['demand'])))}",
                f"ship_cost = {py(ship)}",
            ]
        )

    def model_code(self, p):
        return (
            "sites, customers = list(open_cost), list(demand)\n"
            "m.open = pyo.Var(sites, within=pyo.Binary)\n"
            "m.x = pyo.Var(sites, customers, within=pyo.NonNegativeReals)\n"
            "m.obj = pyo.Objective(\n"
            "    expr=sum(open_cost[i] * m.open[i] for i in sites)\n"
            "    + sum(ship_cost[i, j] * m.x[i, j] for i in sites for j in customers),\n"
            "    sense=pyo.minimize,\n"
            ")\n"
            "m.demand = pyo.ConstraintList()\n"
            "for j in customers:\n"
            "    m.demand.add(sum(m.x[i, j] for i in sites) == demand[j])\n"
            "m.capacity = pyo.ConstraintList()\n"
            "for i in sites:\n"
            "    m.capacity.add(sum(m.x[i, j] for j in customers) <= capacity[i] * m.open[i])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        y = [f.var(f"open_{ident(s)}", 0, 1, True, o) for s, o in zip(p["sites"], p["open_cost"])]
        x = [
            [f.var(f"x_{ident(a)}_{ident(b)}", cost=p["ship"][i][j]) for j, b in enumerate(p["custs"])]
            for i, a in enumerate(p["sites"])
        ]
        for j, d in enumerate(p["demand"]):
            f.eq({row[j]: 1 for row in x}, d, f"demand {p['custs'][j]}")
        for i, c in enumerate(p["cap"]):
            f.le({**{v: 1 for v in x[i]}, y[i]: -c}, 0, f"capacity {p['sites'][i]}")
        return f

    def words(self, p):
        return (
            "Let open_i = 1 if site i opens and x_ij >= 0 the units it ships to customer j. Each customer receives "
            "its order; a site ships at most its capacity times open_i (nothing if closed). Minimize opening plus "
            "shipping costs."
        )


class LotSizing(Family):
    name = "lot_sizing"
    supports_infeasible = True
    scalable = ("setup", "demand")

    def sample(self, rng, size, infeasible):
        t = 3 + size
        demand = [rng.randint(10, 80) for _ in range(t)]
        cap = rng.randint(max(demand), max(demand) + 60)
        if infeasible:
            cap = max(1, max(1, sum(demand[:2]) // 2 - rng.randint(1, 5)))
        setup = rng.randint(50, 400)
        unit = rng.randint(2, 12)
        hold = rng.randint(1, 5)
        return dict(
            demand=demand,
            cap=cap,
            setup=setup,
            unit=unit,
            hold=hold,
            product=rng.choice(["bicycle frames", "batches of jam", "pump housings", "garden benches"]),
            currency=rng.choice(CURRENCIES)[0],
            period=rng.choice(["month", "week"]),
            company=rng.choice(COMPANIES),
        )

    def statement(self, p, rng):
        cur, per, prod = p["currency"], p["period"], p["product"]
        t = len(p["demand"])
        intro = rng.choice(
            [
                f"{p['company']} plans production of {prod} for the next {t} {per}s.",
                f"Over a {t}-{per} horizon, {p['company']} must meet orders for {prod}.",
            ]
        )
        dem = [f"{d} in {per} {k + 1}" for k, d in enumerate(p["demand"])]
        clauses = [
            "Orders that must be met on time are " + join(dem) + ".",
            f"Any {per} in which production runs costs a setup fee of {money(p['setup'], cur)}, plus {money(p['unit'], cur)} per unit made.",
            f"At most {p['cap']} units can be made in a {per}.",
            f"Units kept in stock at the end of a {per} cost {money(p['hold'], cur)} each to hold.",
            "There is no starting stock and backorders are not allowed.",
        ]
        ask = rng.choice(
            [
                f"What is the minimum total cost in {cur}?",
                f"Find the cheapest production plan; report its cost in {cur}.",
            ]
        )
        return " ".join([intro, *shuffled(rng, clauses), ask])

    def data_code(self, p):
        return "\n".join(
            [
                f"demand = {py({k + 1: d for k, d in enumerate(p['demand'])})}",
                f"setup_cost = {p['setup']}",
                f"unit_cost = {p['unit']}",
                f"holding_cost = {p['hold']}",
                f"capacity = {p['cap']}",
            ]
        )

    def model_code(self, p):
        return (
            "periods = list(demand)\n"
            "m.make = pyo.Var(periods, within=pyo.NonNegativeReals)\n"
            "m.stock = pyo.Var(periods, within=pyo.NonNegativeReals)\n"
            "m.run = pyo.Var(periods, within=pyo.Binary)\n"
            "m.obj = pyo.Objective(\n"
            "    expr=sum(setup_cost * m.run[t] + unit_cost * m.make[t] + holding_cost * m.stock[t] for t in periods),\n"
            "    sense=pyo.minimize,\n"
            ")\n"
            "m.balance = pyo.ConstraintList()\n"
            "m.setup = pyo.ConstraintList()\n"
            "for t in periods:\n"
            "    before = m.stock[t - 1] if t > 1 else 0\n"
            "    m.balance.add(before + m.make[t] - demand[t] == m.stock[t])\n"
            "    m.setup.add(m.make[t] <= capacity * m.run[t])\n"
        )

    def form(self, p):
        f = LinearForm("min")
        t = len(p["demand"])
        x = [f.var(f"make_{k + 1}", cost=p["unit"]) for k in range(t)]
        s = [f.var(f"stock_{k + 1}", cost=p["hold"]) for k in range(t)]
        y = [f.var(f"run_{k + 1}", 0, 1, True, p["setup"]) for k in range(t)]
        for k in range(t):
            row = {x[k]: 1, s[k]: -1}
            if k:
                row[s[k - 1]] = 1
            f.eq(row, p["demand"][k], f"balance {k + 1}")
            f.le({x[k]: 1, y[k]: -p["cap"]}, 0, f"setup {k + 1}")
        return f

    def words(self, p):
        return (
            "Let make_t be the units made in period t, stock_t the stock at its end and run_t = 1 if production "
            "runs in t. Stock carried in plus production minus demand equals stock carried out; production is at "
            "most capacity times run_t. Minimize setup, production and holding costs."
        )
