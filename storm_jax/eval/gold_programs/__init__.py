"""Hand-written pyomo + HiGHS programs for real benchmark problems (a check of the scoring path).

Each `GoldProgram` models one benchmark row (our own formulation, written from the question text) and
prints its optimum with the OBJECTIVE convention of `storm_jax.execution.answers`. `Perturbation`s make
plausible modelling mistakes (a wrong coefficient, a dropped constraint, integer -> continuous); whether a
mistake changes the optimum is decided by solving, never assumed.

Rows left out because their label could not be reproduced or looked wrong:
``mamo_complexlp.orig-196`` (largest circle in an 11 x 10 polygon: label area 4.596 m^2 is far below
any inscribed circle of that field), ``industryor.sirl_fixedv2-69`` (cutting stock: "waste" is ambiguous
about over-production), the nonconvex ReSocratic calculus rows (need a global NLP solver).
"""

from __future__ import annotations

import dataclasses

HEADER = "import pyomo.environ as pyo\n\nm = pyo.ConcreteModel()\n"

FOOTER = """
result = pyo.SolverFactory("appsi_highs").solve(m, load_solutions=False)
tc = result.solver.termination_condition
if tc == pyo.TerminationCondition.optimal:
    m.solutions.load_from(result)
    value = pyo.value(m.obj)
    print("OBJECTIVE:", round(value, ROUND) if ROUND is not None else value)
elif tc == pyo.TerminationCondition.infeasible:
    print("OBJECTIVE: infeasible")
elif tc == pyo.TerminationCondition.unbounded:
    print("OBJECTIVE: unbounded")
else:
    print("solver status:", tc)
"""

INT = "within=pyo.NonNegativeIntegers"
REAL = "within=pyo.NonNegativeReals"


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A modelling mistake: replace `old` (which must occur exactly once) by `new`."""

    kind: str  # "coefficient" | "drop_constraint" | "relax_integrality"
    old: str
    new: str = ""

    def apply(self, code: str) -> str:
        if self.kind == "relax_integrality":
            if INT not in code:
                raise ValueError("relax_integrality: the program has no integer variables")
            return code.replace(INT, REAL)
        if code.count(self.old) != 1:
            raise ValueError(f"{self.kind}: {self.old!r} occurs {code.count(self.old)} times, expected once")
        return code.replace(self.old, self.new)


def coef(old: str, new: str) -> Perturbation:
    return Perturbation("coefficient", old, new)


def drop(line: str) -> Perturbation:
    return Perturbation("drop_constraint", line + "\n", "")


RELAX = Perturbation("relax_integrality", "")


@dataclasses.dataclass(frozen=True)
class GoldProgram:
    """A full program for benchmark row `problem_id`; `round_digits` when the question asks for rounding."""

    problem_id: str
    body: str
    perturbations: tuple[Perturbation, ...]
    round_digits: int | None = None

    @property
    def code(self) -> str:
        return HEADER + f"ROUND = {self.round_digits!r}\n" + self.body.strip("\n") + "\n" + FOOTER

    def perturbed(self, p: Perturbation) -> str:
        return p.apply(self.code)


def _g(pid: str, body: str, *perts: Perturbation, round_digits: int | None = None) -> GoldProgram:
    return GoldProgram(pid, body, tuple(perts), round_digits)


PROGRAMS: tuple[GoldProgram, ...] = (
    _g(
        "nl4opt.sirl-0",  # ducks by boat / canoe, minimise time
        f"""
m.boat = pyo.Var({INT})
m.canoe = pyo.Var({INT})
m.ducks = pyo.Constraint(expr=10 * m.boat + 8 * m.canoe >= 300)
m.max_boat = pyo.Constraint(expr=m.boat <= 12)
m.canoe_share = pyo.Constraint(expr=m.canoe >= 0.6 * (m.boat + m.canoe))
m.obj = pyo.Objective(expr=20 * m.boat + 40 * m.canoe, sense=pyo.minimize)
""",
        coef("10 * m.boat", "12 * m.boat"),
        drop("m.max_boat = pyo.Constraint(expr=m.boat <= 12)"),
        RELAX,
    ),
    _g(
        "nl4opt.sirl-1",  # large / small pills, minimise filler
        f"""
m.large = pyo.Var({INT})
m.small = pyo.Var({INT})
m.ingredients = pyo.Constraint(expr=3 * m.large + 2 * m.small <= 1000)
m.min_large = pyo.Constraint(expr=m.large >= 100)
m.small_share = pyo.Constraint(expr=m.small >= 0.6 * (m.large + m.small))
m.obj = pyo.Objective(expr=2 * m.large + m.small, sense=pyo.minimize)
""",
        coef("2 * m.large + m.small, sense", "3 * m.large + m.small, sense"),
        drop("m.min_large = pyo.Constraint(expr=m.large >= 100)"),
        RELAX,
    ),
    _g(
        "nl4opt.sirl-2",  # full / part time workers, minimise head count
        f"""
m.full = pyo.Var({INT})
m.part = pyo.Var({INT})
m.hours = pyo.Constraint(expr=8 * m.full + 4 * m.part >= 500)
m.budget = pyo.Constraint(expr=300 * m.full + 100 * m.part <= 15000)
m.obj = pyo.Objective(expr=m.full + m.part, sense=pyo.minimize)
""",
        coef("300 * m.full", "250 * m.full"),
        drop("m.budget = pyo.Constraint(expr=300 * m.full + 100 * m.part <= 15000)"),
        RELAX,
    ),
    _g(
        "nl4opt.sirl-3",  # ice cream machines
        f"""
m.counter = pyo.Var({INT})
m.fridge = pyo.Var({INT})
m.cones = pyo.Constraint(expr=80 * m.counter + 150 * m.fridge >= 1000)
m.heat = pyo.Constraint(expr=50 * m.counter + 70 * m.fridge <= 500)
m.obj = pyo.Objective(expr=m.counter + m.fridge, sense=pyo.minimize)
""",
        coef("150 * m.fridge >= 1000", "120 * m.fridge >= 1000"),
        RELAX,
    ),
    _g(
        "nl4opt.sirl-4",  # feed mix, continuous
        f"""
m.a = pyo.Var({REAL})
m.b = pyo.Var({REAL})
m.protein = pyo.Constraint(expr=10 * m.a + 7 * m.b >= 30)
m.fat = pyo.Constraint(expr=8 * m.a + 15 * m.b >= 50)
m.obj = pyo.Objective(expr=100 * m.a + 80 * m.b, sense=pyo.minimize)
""",
        coef("8 * m.a + 15 * m.b", "8 * m.a + 14 * m.b"),
        drop("m.protein = pyo.Constraint(expr=10 * m.a + 7 * m.b >= 30)"),
    ),
    _g(
        "nl4opt.sirl-5",  # hardwood / vinyl flooring
        f"""
m.hard = pyo.Var({REAL})
m.vinyl = pyo.Var({REAL})
m.demand_h = pyo.Constraint(expr=m.hard >= 20000)
m.demand_v = pyo.Constraint(expr=m.vinyl >= 10000)
m.ship = pyo.Constraint(expr=m.hard + m.vinyl >= 60000)
m.cap_h = pyo.Constraint(expr=m.hard <= 50000)
m.cap_v = pyo.Constraint(expr=m.vinyl <= 30000)
m.obj = pyo.Objective(expr=2.5 * m.hard + 3 * m.vinyl, sense=pyo.maximize)
""",
        coef("2.5 * m.hard", "2.4 * m.hard"),
        drop("m.cap_v = pyo.Constraint(expr=m.vinyl <= 30000)"),
    ),
    _g(
        "mamo_easylp.orig-0",
        f"""
m.x = pyo.Var({INT}, bounds=(0, 700))
m.y = pyo.Var({INT}, bounds=(0, 500))
m.total = pyo.Constraint(expr=m.x + m.y <= 1000)
m.excess = pyo.Constraint(expr=m.x - m.y >= 200)
m.obj = pyo.Objective(expr=50 * m.x + 30 * m.y, sense=pyo.minimize)
""",
        coef("m.x - m.y >= 200", "m.x - m.y >= 250"),
        drop("m.excess = pyo.Constraint(expr=m.x - m.y >= 200)"),
    ),
    _g(
        "mamo_easylp.orig-1",
        f"""
m.x = pyo.Var({INT})
m.y = pyo.Var({INT})
m.budget = pyo.Constraint(expr=m.x + m.y <= 2000)
m.reach = pyo.Constraint(expr=3 * m.x - 2 * m.y >= 500)
m.obj = pyo.Objective(expr=50 * m.x + 100 * m.y, sense=pyo.minimize)
""",
        coef("3 * m.x - 2 * m.y", "2 * m.x - 2 * m.y"),
        drop("m.reach = pyo.Constraint(expr=3 * m.x - 2 * m.y >= 500)"),
        RELAX,
    ),
    _g(
        "mamo_easylp.orig-3",
        f"""
m.x = pyo.Var({INT})
m.y = pyo.Var({INT})
m.total = pyo.Constraint(expr=m.x + m.y <= 1000)
m.ratio = pyo.Constraint(expr=m.x >= 2 * m.y + 300)
m.obj = pyo.Objective(expr=4 * m.x + 3 * m.y, sense=pyo.minimize)
""",
        coef("4 * m.x + 3 * m.y", "5 * m.x + 3 * m.y"),
        drop("m.ratio = pyo.Constraint(expr=m.x >= 2 * m.y + 300)"),
    ),
    _g(
        "mamo_easylp.orig-4",
        f"""
m.x = pyo.Var({INT})
m.y = pyo.Var({INT})
m.budget = pyo.Constraint(expr=m.x + m.y <= 5000)
m.effect = pyo.Constraint(expr=3 * m.x + 4 * m.y >= 12000)
m.balance = pyo.Constraint(expr=5 * m.x - 2 * m.y <= 10000)
m.obj = pyo.Objective(expr=200 * m.x + 150 * m.y, sense=pyo.minimize)
""",
        coef("3 * m.x + 4 * m.y >= 12000", "3 * m.x + 5 * m.y >= 12000"),
        drop("m.effect = pyo.Constraint(expr=3 * m.x + 4 * m.y >= 12000)"),
    ),
    _g(
        "mamo_easylp.orig-5",
        f"""
m.x = pyo.Var({INT})
m.y = pyo.Var({INT})
m.budget = pyo.Constraint(expr=m.x + m.y <= 1000)
m.effect = pyo.Constraint(expr=2 * m.x + 3 * m.y >= 2000)
m.obj = pyo.Objective(expr=10 * m.x + 20 * m.y, sense=pyo.minimize)
""",
        coef("10 * m.x + 20 * m.y", "10 * m.x + 14 * m.y"),
        drop("m.budget = pyo.Constraint(expr=m.x + m.y <= 1000)"),
    ),
    _g(
        "mamo_easylp.orig-6",
        f"""
m.x = pyo.Var({INT})
m.y = pyo.Var({INT})
m.effect = pyo.Constraint(expr=m.x + m.y >= 1000)
m.balance = pyo.Constraint(expr=m.x - 2 * m.y <= 500)
m.obj = pyo.Objective(expr=5 * m.x + 3 * m.y, sense=pyo.minimize)
""",
        coef("5 * m.x + 3 * m.y", "5 * m.x + 6 * m.y"),
        drop("m.effect = pyo.Constraint(expr=m.x + m.y >= 1000)"),
    ),
    _g(
        "mamo_easylp.orig-7",
        f"""
m.x = pyo.Var({INT})
m.y = pyo.Var({INT})
m.total = pyo.Constraint(expr=m.x + m.y <= 5000)
m.effect = pyo.Constraint(expr=2 * m.x + 3 * m.y >= 10000)
m.obj = pyo.Objective(expr=10 * m.x + 20 * m.y, sense=pyo.minimize)
""",
        coef("2 * m.x + 3 * m.y >= 10000", "2 * m.x + 3 * m.y >= 11000"),
        drop("m.total = pyo.Constraint(expr=m.x + m.y <= 5000)"),
    ),
    _g(
        "mamo_complexlp.orig-178",  # cyclic nurse schedule, LP relaxation, rounded
        """
d = [2, 4, 4, 3, 1, 2, 3]
m.D = pyo.RangeSet(0, 6)
m.start = pyo.Var(m.D, within=pyo.NonNegativeReals)
m.cover = pyo.Constraint(m.D, rule=lambda m, j: sum(m.start[(j - k) % 7] for k in range(5)) >= d[j])
m.obj = pyo.Objective(expr=sum(m.start[j] for j in m.D), sense=pyo.minimize)
""",
        coef("d = [2, 4, 4, 3, 1, 2, 3]", "d = [2, 4, 9, 3, 1, 2, 3]"),
        coef("for k in range(5)", "for k in range(6)"),
        round_digits=0,
    ),
    _g(
        "mamo_complexlp.orig-179",
        """
d = [5, 4, 7, 3, 8, 4, 3]
m.D = pyo.RangeSet(0, 6)
m.start = pyo.Var(m.D, within=pyo.NonNegativeReals)
m.cover = pyo.Constraint(m.D, rule=lambda m, j: sum(m.start[(j - k) % 7] for k in range(5)) >= d[j])
m.obj = pyo.Objective(expr=sum(m.start[j] for j in m.D), sense=pyo.minimize)
""",
        coef("d = [5, 4, 7, 3, 8, 4, 3]", "d = [5, 4, 7, 3, 12, 4, 3]"),
        coef("for k in range(5)", "for k in range(4)"),
        round_digits=0,
    ),
    _g(
        "mamo_complexlp.orig-181",  # landing times, maximise the minimum separation
        """
win = [(40, 67), (11, 87), (35, 94), (38, 96), (74, 105), (87, 137), (62, 121), (75, 143), (94, 172), (128, 151)]
n = len(win)
m.t = pyo.Var(range(n))
m.sep = pyo.Var()
m.window = pyo.ConstraintList()
for j, (a, b) in enumerate(win):
    m.window.add(m.t[j] >= a)
    m.window.add(m.t[j] <= b)
m.order = pyo.Constraint(range(n - 1), rule=lambda m, j: m.t[j + 1] - m.t[j] >= m.sep)
m.obj = pyo.Objective(expr=m.sep, sense=pyo.maximize)
""",
        coef("(128, 151)", "(128, 200)"),
        coef("(40, 67)", "(20, 67)"),
        round_digits=0,
    ),
    _g(
        "industryor.orlm-0",  # Zhang family trip, binary choice
        """
cost = {"Harry": 1200, "Hermione": 1650, "Ron": 750, "Fred": 800, "George": 800, "Ginny": 1500}
m.take = pyo.Var(list(cost), within=pyo.Binary)
m.max4 = pyo.Constraint(expr=sum(m.take[c] for c in cost) <= 4)
m.min3 = pyo.Constraint(expr=sum(m.take[c] for c in cost) >= 3)
m.ginny = pyo.Constraint(expr=m.take["Ginny"] == 1)
m.harry_fred = pyo.Constraint(expr=m.take["Harry"] + m.take["Fred"] <= 1)
m.harry_george = pyo.Constraint(expr=m.take["Harry"] + m.take["George"] <= 1)
m.george_fred = pyo.Constraint(expr=m.take["George"] <= m.take["Fred"])
m.george_hermione = pyo.Constraint(expr=m.take["George"] <= m.take["Hermione"])
m.obj = pyo.Objective(expr=sum(cost[c] * m.take[c] for c in cost), sense=pyo.minimize)
""",
        coef('"Ron": 750', '"Ron": 950'),
        drop('m.ginny = pyo.Constraint(expr=m.take["Ginny"] == 1)'),
    ),
    _g(
        "industryor.sirl_fixedv2-4",  # cows, sheep, chickens
        f"""
m.cow = pyo.Var({INT})
m.sheep = pyo.Var({INT})
m.chicken = pyo.Var({INT})
m.manure = pyo.Constraint(expr=10 * m.cow + 5 * m.sheep + 3 * m.chicken <= 800)
m.max_chicken = pyo.Constraint(expr=m.chicken <= 50)
m.min_cow = pyo.Constraint(expr=m.cow >= 10)
m.min_sheep = pyo.Constraint(expr=m.sheep >= 20)
m.total = pyo.Constraint(expr=m.cow + m.sheep + m.chicken <= 100)
m.obj = pyo.Objective(expr=(500 - 100) * m.cow + (200 - 80) * m.sheep + (8 - 5) * m.chicken, sense=pyo.maximize)
""",
        coef("10 * m.cow + 5 * m.sheep", "12 * m.cow + 5 * m.sheep"),
        drop("m.min_sheep = pyo.Constraint(expr=m.sheep >= 20)"),
        RELAX,
    ),
    _g(
        "industryor.sirl_fixedv2-9",  # Haus Toys with logical conditions
        f"""
M = 1000
m.truck = pyo.Var({INT})
m.plane = pyo.Var({INT})
m.boat = pyo.Var({INT})
m.train = pyo.Var({INT})
m.make_truck = pyo.Var(within=pyo.Binary)
m.make_boat = pyo.Var(within=pyo.Binary)
m.wood = pyo.Constraint(expr=12 * m.truck + 20 * m.plane + 15 * m.boat + 10 * m.train <= 890)
m.steel = pyo.Constraint(expr=6 * m.truck + 3 * m.plane + 5 * m.boat + 4 * m.train <= 500)
m.truck_on = pyo.Constraint(expr=m.truck <= M * m.make_truck)
m.no_train = pyo.Constraint(expr=m.train <= M * (1 - m.make_truck))
m.boat_on = pyo.Constraint(expr=m.boat <= M * m.make_boat)
m.boat_plane = pyo.Constraint(expr=m.plane >= m.make_boat)
m.boat_train = pyo.Constraint(expr=m.boat <= m.train)
m.obj = pyo.Objective(expr=5 * m.truck + 10 * m.plane + 8 * m.boat + 7 * m.train, sense=pyo.maximize)
""",
        coef("15 * m.boat + 10 * m.train <= 890", "15 * m.boat + 12 * m.train <= 890"),
        drop("m.boat_train = pyo.Constraint(expr=m.boat <= m.train)"),
        RELAX,
    ),
    _g(
        "nlp4lp.llm4or_clean-6",  # chairs and dressers
        f"""
m.chair = pyo.Var({INT})
m.dresser = pyo.Var({INT})
m.stain = pyo.Constraint(expr=1.4 * m.chair + 1.1 * m.dresser <= 17)
m.oak = pyo.Constraint(expr=2 * m.chair + 3 * m.dresser <= 11)
m.obj = pyo.Objective(expr=43 * m.chair + 52 * m.dresser, sense=pyo.maximize)
""",
        coef("43 * m.chair", "40 * m.chair"),
        drop("m.oak = pyo.Constraint(expr=2 * m.chair + 3 * m.dresser <= 11)"),
        RELAX,
    ),
    _g(
        "nlp4lp.llm4or_clean-165",  # jam jars
        f"""
m.small = pyo.Var({INT})
m.large = pyo.Var({INT})
m.jam = pyo.Constraint(expr=50 * m.small + 200 * m.large >= 100000)
m.pref = pyo.Constraint(expr=m.large <= m.small)
m.obj = pyo.Objective(expr=m.small + m.large, sense=pyo.minimize)
""",
        coef("200 * m.large >= 100000", "250 * m.large >= 100000"),
        drop("m.pref = pyo.Constraint(expr=m.large <= m.small)"),
    ),
    _g(
        "nlp4lp.llm4or_clean-167",  # bikes and cars
        f"""
m.bike = pyo.Var({INT})
m.car = pyo.Var({INT})
m.people = pyo.Constraint(expr=3 * m.bike + 5 * m.car >= 500)
m.car_share = pyo.Constraint(expr=m.car <= 0.4 * (m.bike + m.car))
m.obj = pyo.Objective(expr=m.bike, sense=pyo.minimize)
""",
        coef("m.car <= 0.4 *", "m.car <= 0.5 *"),
        drop("m.car_share = pyo.Constraint(expr=m.car <= 0.4 * (m.bike + m.car))"),
        RELAX,
    ),
    _g(
        "nlp4lp.llm4or_clean-155",  # large and small planes
        f"""
m.large = pyo.Var({INT})
m.small = pyo.Var({INT})
m.cars = pyo.Constraint(expr=30 * m.large + 10 * m.small >= 300)
m.fewer_large = pyo.Constraint(expr=m.large <= m.small - 1)
m.obj = pyo.Objective(expr=m.large + m.small, sense=pyo.minimize)
""",
        coef("30 * m.large", "40 * m.large"),
        drop("m.fewer_large = pyo.Constraint(expr=m.large <= m.small - 1)"),
        RELAX,
    ),
)

BY_ID: dict[str, GoldProgram] = {p.problem_id: p for p in PROGRAMS}
