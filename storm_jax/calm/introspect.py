"""What a pyomo program built, read back name-independently, so a candidate model can be compared with
the gold one without matching variable names.

`with_probe(code)` appends a probe to a program: after the program has run, it finds the last
`pyo.ConcreteModel` among the program's globals and prints one line `@@STORM_MODEL@@{json}` with
the objective sense, the objective's linear coefficients and constant, the variable count, how many
variables are integer/binary, and every linear row (constraints and finite variable bounds other than
0 <= x). `ModelShape.from_stdout` parses it. Rows are normalised so that equal constraints written
differently compare equal: coefficients are divided by the largest |coefficient|, listed sorted, a
`>=` row is turned into `<=` by negation, and numbers are rounded to 9 significant digits.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

MARK = "@@STORM_MODEL@@"

PROBE = r"""

# --- storm_jax model probe (appended by the intervener) ---
def _storm_probe():
    import json as _json
    import pyomo.environ as _pyo
    from pyomo.repn import generate_standard_repn as _repn
    models = [v for v in list(globals().values()) if isinstance(v, _pyo.ConcreteModel)]
    if not models:
        print("@@STORM_MODEL@@" + _json.dumps({"error": "no ConcreteModel"}))
        return
    m = models[-1]
    objs = list(m.component_data_objects(_pyo.Objective, active=True))
    out = {"vars": 0, "int_vars": 0, "rows": [], "sense": None, "obj": [], "obj_const": 0.0}
    if objs:
        r = _repn(objs[0].expr, compute_values=True)
        out["sense"] = "max" if objs[0].sense == _pyo.maximize else "min"
        out["obj"] = [float(c) for c in r.linear_coefs if c]
        out["obj_const"] = float(r.constant or 0.0)
        out["nonlinear_obj"] = r.nonlinear_expr is not None
    for v in m.component_data_objects(_pyo.Var, active=True):
        out["vars"] += 1
        if v.is_integer() or v.is_binary():
            out["int_vars"] += 1
        lb, ub = v.lb, v.ub
        if v.is_binary():
            lb, ub = 0, 1
        if ub is not None:
            out["rows"].append([[1.0], None, float(ub)])
        if lb is not None and lb != 0:
            out["rows"].append([[1.0], float(lb), None])
    for c in m.component_data_objects(_pyo.Constraint, active=True):
        r = _repn(c.body, compute_values=True)
        k = float(r.constant or 0.0)
        lo = None if c.lower is None else float(_pyo.value(c.lower)) - k
        hi = None if c.upper is None else float(_pyo.value(c.upper)) - k
        out["rows"].append([[float(a) for a in r.linear_coefs if a], lo, hi])
    print("@@STORM_MODEL@@" + _json.dumps(out))

_storm_probe()
"""


def with_probe(code: str) -> str:
    """The program followed by the model probe."""
    return code.rstrip("\n") + "\n" + PROBE


def _r(x: float) -> float:
    return float(f"{x:.9g}")


def _row_key(coefs: list[float], lo: float | None, hi: float | None) -> tuple:
    """Canonical form of lo <= sum coefs * x <= hi (see module docstring)."""
    if not coefs:
        return ((), lo, hi)
    s = max(abs(a) for a in coefs)
    a = [c / s for c in coefs]
    lo = None if lo is None else lo / s
    hi = None if hi is None else hi / s
    if hi is None and lo is not None:  # a >= row as a <= row
        a, lo, hi = [-c for c in a], None, -lo
    forms = [
        (tuple(sorted(_r(c) for c in a)), None if lo is None else _r(lo), None if hi is None else _r(hi))
    ]
    if lo is not None and hi is not None and math.isclose(lo, hi):  # equality: either sign
        forms.append((tuple(sorted(_r(-c) for c in a)), _r(-hi), _r(-lo)))
    return min(forms, key=repr)


@dataclasses.dataclass
class ModelShape:
    """A probed model: sense, objective coefficients (sorted), integer-variable count and canonical rows."""

    sense: str | None
    obj: tuple[float, ...]
    obj_const: float
    vars: int
    int_vars: int
    rows: Counter

    @staticmethod
    def from_stdout(stdout: str) -> ModelShape | None:
        """The shape printed by the probe, or None when the probe did not run (the program failed first)."""
        line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(MARK)), None)
        if line is None:
            return None
        d = json.loads(line[len(MARK) :])
        if "error" in d:
            return None
        rows = Counter(_row_key(*row) for row in d["rows"])
        return ModelShape(d["sense"], tuple(sorted(_r(c) for c in d["obj"])), _r(d["obj_const"]),
                          d["vars"], d["int_vars"], rows)  # fmt: skip
