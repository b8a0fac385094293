"""Continuous network and allocation families: transportation, portfolio, min-cost flow."""

from __future__ import annotations

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
from storm_jax.data.synth.family import Family

# ---------------------------------------------------------------------------------------------------------


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
