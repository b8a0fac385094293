"""Gold pyomo programs for real benchmark rows score correct under `strict`; broken ones score wrong.

Programs run through the execution pool when it is available (else a plain subprocess per program).
"""

from __future__ import annotations

import collections
import importlib.util
import os
from pathlib import Path

import pytest

from storm_jax.data import benchmarks as bm
from storm_jax.eval import score as sc
from storm_jax.eval.gold_programs import PROGRAMS, Perturbation

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get(bm.ENV_VAR) or REPO.parent / "shared" / "benchmarks")
pytestmark = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR} (set {bm.ENV_VAR})"
)


@pytest.fixture(scope="module")
def executor():
    if importlib.util.find_spec("storm_jax.execution.pool") is not None:
        from storm_jax.execution.pool import ExecutionPool

        ex = ExecutionPool(num_workers=2)
    else:
        from test_score import LocalExecutor

        ex = LocalExecutor(timeout_s=30.0)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def rows():
    out = {}
    for p in PROGRAMS:
        ds = p.problem_id.rsplit("-", 1)[0]
        out.update({r.id: r for r in bm.load_dataset(ds, DATA_DIR)})
    return out


def _completion(code: str) -> str:
    return f"We model the problem.\n```python\n{code}\n```\nThe solver prints the optimum."


def test_coverage_of_gold_set():
    datasets = {p.problem_id.rsplit("-", 1)[0] for p in PROGRAMS}
    benchmarks = {d.split(".")[0] for d in datasets}
    assert len(PROGRAMS) >= 20 and len(set(p.problem_id for p in PROGRAMS)) == len(PROGRAMS)
    assert len(benchmarks) >= 5  # nl4opt, mamo_easylp, mamo_complexlp, industryor, nlp4lp
    kinds = collections.Counter(q.kind for p in PROGRAMS for q in p.perturbations)
    assert set(kinds) == {"coefficient", "drop_constraint", "relax_integrality"}


def test_gold_programs_score_correct_and_perturbations_wrong(executor, rows):
    items = [(rows[p.problem_id], sc.Completion(p.problem_id, _completion(p.code), 0)) for p in PROGRAMS]
    gold = sc.score_samples(items, "strict", "execution", executor)
    for p, r in zip(PROGRAMS, gold):
        assert r.exec_status == "ok" and r.correct, (p.problem_id, r, rows[p.problem_id].answer)

    # Solve every perturbed program; the scorer must call it wrong exactly where the optimum moved.
    perturbed: list[tuple[str, Perturbation, str]] = []
    for p in PROGRAMS:
        for q in p.perturbations:
            code = p.perturbed(q)
            assert code != p.code
            perturbed.append((p.problem_id, q, code))
    scored = sc.score_samples(
        [(rows[pid], sc.Completion(pid, _completion(code), 1)) for pid, _, code in perturbed],
        "strict",
        "execution",
        executor,
    )
    changed_by_kind: collections.Counter[str] = collections.Counter()
    changed_programs = set()
    for (pid, q, _), res in zip(perturbed, scored):
        assert res.exec_status == "ok" and res.answer is not None, (pid, q, res)
        truth = rows[pid].answer
        new = res.answer
        # independent check of "the optimum changed": a status, or a relative move above 1e-6
        moved = isinstance(new, str) or abs(new - truth) > 1e-6 * (1 + abs(truth))
        if moved:
            changed_by_kind[q.kind] += 1
            changed_programs.add(pid)
            assert not res.correct, (pid, q, new, truth)
            assert res.failure in ("wrong_objective", "infeasible_answer")
        else:
            assert res.correct, (pid, q, new, truth)  # same optimum: the scorer must not flag it
    assert changed_programs == {p.problem_id for p in PROGRAMS}  # every program has a mistake that matters
    assert changed_by_kind["coefficient"] >= 20
    assert changed_by_kind["drop_constraint"] >= 12
    assert changed_by_kind["relax_integrality"] >= 5
