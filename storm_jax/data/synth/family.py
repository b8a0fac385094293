"""The `Family` protocol: a parametric problem template and how an `Instance` is assembled from it."""

from __future__ import annotations

import random
from typing import Any

from storm_jax.data.synth.core import DATA_MARK, MODEL_MARK, Instance, LinearForm, footer


class Family:
    """Subclasses sample parameters and write the statement, the pyomo program and the matrix form.

    Parameters are a JSON-serializable dict; every number the program uses is stated in the text.
    `size` (0..3) is the difficulty knob: more products/nodes/periods.
    """

    name: str = ""
    supports_infeasible: bool = False
    scalable: tuple[str, ...] = ()  # parameter keys that parameter scaling may multiply
    max_size: int = 3

    def sample(self, rng: random.Random, size: int, infeasible: bool) -> dict[str, Any]:
        raise NotImplementedError

    def statement(self, p: dict[str, Any], rng: random.Random) -> str:
        raise NotImplementedError

    def data_code(self, p: dict[str, Any]) -> str:
        """The data section of the gold program (literals only)."""
        raise NotImplementedError

    def model_code(self, p: dict[str, Any]) -> str:
        """The model section of the gold program (`m`, with objective `m.obj`)."""
        raise NotImplementedError

    def form(self, p: dict[str, Any]) -> LinearForm:
        """The same problem as a matrix form, built independently of the program."""
        raise NotImplementedError

    def words(self, p: dict[str, Any]) -> str:
        """The modelling reasoning in words (variables, constraints, objective)."""
        raise NotImplementedError

    def currency_of(self, p: dict[str, Any]) -> str | None:
        """The currency the objective is stated in (None: not money, no answer-unit conversion)."""
        return p.get("currency")

    def unit_factors(self, p: dict[str, Any]) -> tuple[float, ...]:
        """Conversion constants the program uses that the statement does not state (e.g. 60 min/h)."""
        return ()

    # ------------------------------------------------------------------------------------------------
    def program(self, p: dict[str, Any]) -> str:
        scale = p.get("answer_unit", {}).get("factor", 1.0)
        note = p.get("answer_unit", {}).get("note", "")
        return (
            "import pyomo.environ as pyo\n\n"
            f"{DATA_MARK}\n{self.data_code(p).strip()}\n\n"
            f"{MODEL_MARK}\nm = pyo.ConcreteModel()\n{self.model_code(p).strip()}\n\n"
            f"{footer(scale=scale, scale_note=note)}"
        )

    def full_form(self, p: dict[str, Any]) -> LinearForm:
        f = self.form(p)
        f.scale = p.get("answer_unit", {}).get("factor", 1.0)
        return f

    def reasoning(self, p: dict[str, Any], f: LinearForm) -> str:
        kinds = {(True,): "integer", (False,): "continuous"}
        ints = sorted({kinds[(b,)] for b in f.integer})
        dom = " and ".join(ints)
        goal = "maximize" if f.sense == "max" else "minimize"
        obj = f.expr({j: c for j, c in enumerate(f.c) if c})
        if f.const:
            obj += f" + {f.const:g}"
        lines = [
            self.words(p).strip(),
            "",
            f"Model ({len(f.names)} {dom} variables, all >= 0):",
            f"{goal} {obj}",
            "subject to",
            *[f"  {ln}" for ln in f.math_lines()],
        ]
        unit = p.get("answer_unit")
        if unit:
            lines += ["", unit["reason"]]
        return "\n".join(lines)

    def build(self, rng: random.Random, size: int, infeasible: bool, id: str) -> Instance:
        p = self.sample(rng, size, infeasible)
        return self.instance(p, rng, id, size)

    def instance(
        self, p: dict[str, Any], rng: random.Random, id: str, size: int, augmentation: str = "none"
    ) -> Instance:
        question = self.statement(p, rng)
        unit = p.get("answer_unit")
        if unit:
            question = question.rstrip() + " " + unit["ask"]
        f = self.full_form(p)
        return Instance(
            id=id,
            family=self.name,
            size=size,
            params=p,
            question=question,
            program=self.program(p),
            form=f,
            reasoning=self.reasoning(p, f),
            augmentation=augmentation,
            unit_factors=tuple(self.unit_factors(p)) + ((unit["factor"],) if unit else ()),
        )
