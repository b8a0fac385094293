"""The shared verifier: answer selection from recorded executions, verdicts and failure classes, and the
pipeline's evaluation scoring trajectories without running their code a second time.

References: hand-written expectations per case (which execution answers, which failure class), and a count of
the programs the executor was asked to run.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import pytest

from storm_jax import verify
from storm_jax.sampling.rollout import SegmentSpan


def _ex(status: str, answer):
    return SimpleNamespace(status=status, answer=answer)


def _traj(boxed, execs, n_code=None):
    n_code = len(execs) if n_code is None else n_code
    segs = [SegmentSpan("code", "", 0, 0) for _ in range(n_code)]
    return SimpleNamespace(answer=boxed, executions=[_ex(*e) for e in execs], segments=segs)


@pytest.mark.parametrize(
    "boxed, execs, answer_from, max_blocks, want",
    [
        (5.0, [("ok", 7.0)], "boxed", None, (5.0, "boxed", None)),
        (5.0, [("ok", 7.0)], "auto", None, (5.0, "boxed", None)),
        (5.0, [("ok", 7.0)], "execution", None, (7.0, "execution", 0)),
        (None, [("ok", 7.0)], "boxed", None, (None, None, None)),
        (None, [("ok", 7.0), ("error", None)], "auto", None, (7.0, "execution", 0)),  # last ok one wins
        (None, [("ok", 7.0), ("ok", 9.0)], "execution", None, (9.0, "execution", 1)),
        (
            None,
            [("ok", 7.0), ("error", None), ("ok", None)],
            "execution",
            2,
            (None, None, None),
        ),  # 2 back only
        (None, [("ok", 7.0), ("error", None), ("ok", None)], "execution", 3, (7.0, "execution", 0)),
        (None, [("ok", "infeasible")], "auto", None, ("infeasible", "execution", 0)),
    ],
)
def test_trajectory_answer_selection(boxed, execs, answer_from, max_blocks, want):
    assert verify.trajectory_answer(_traj(boxed, execs), answer_from, max_blocks) == want


@pytest.mark.parametrize(
    "boxed, execs, n_code, truth, status, want_correct, want_failure",
    [
        (10.0, [], 0, 10.0, None, True, None),
        (10.5, [], 0, 10.0, None, False, "wrong_objective"),
        (None, [], 0, 10.0, None, False, "no_code"),
        (None, [("error", None)], 1, 10.0, None, False, "code_error"),
        (None, [("timeout", None)], 1, 10.0, None, False, "timeout"),
        (None, [("ok", 10.0)], 1, 10.0, None, True, None),
        ("infeasible", [], 0, 10.0, None, False, "infeasible_answer"),
        ("infeasible", [], 0, None, "infeasible", True, None),
        (3.0, [], 0, None, "unknown", False, "unknown_truth"),
    ],
)
def test_verdicts_and_failure_classes(boxed, execs, n_code, truth, status, want_correct, want_failure):
    v = verify.verify_trajectory(
        _traj(boxed, execs, n_code), truth, status, protocol="storm", answer_from="auto"
    )
    assert (v.correct, v.failure) == (want_correct, want_failure)
    assert v.n_code_blocks == n_code


def test_problem_prompt_is_one_rendering(tmp_path):
    from storm_jax.tokenizer import encode_prompt, load_tokenizer

    tok = load_tokenizer()
    msgs = verify.problem_messages("Maximize x.", "Be brief.")
    assert msgs == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Maximize x."}]
    assert verify.problem_messages("Q") == [{"role": "user", "content": "Q"}]
    ids = verify.problem_prompt_ids(tok, "Maximize x.", system_prompt="Be brief.", enable_thinking=False)
    assert ids == encode_prompt(tok, msgs, enable_thinking=False)


PROGRAM = """import pyomo.environ as pyo
m = pyo.ConcreteModel()
m.x = pyo.Var(bounds=(0, {ub}))
m.obj = pyo.Objective(expr=m.x, sense=pyo.maximize)
pyo.SolverFactory("appsi_highs").solve(m)
print("OBJECTIVE:", pyo.value(m.obj))"""


class _CountingExecutor:
    """The real pool, with a count of what it was asked to run (rollout submits and scorer maps)."""

    def __init__(self, pool):
        self.pool, self.submitted, self.mapped = pool, 0, 0

    def submit(self, code, **kw):
        self.submitted += 1
        return self.pool.submit(code, **kw)

    def map(self, codes, **kw):
        self.mapped += len(codes)
        return self.pool.map(codes, **kw)


def test_pipeline_evaluate_runs_each_program_once(tmp_path, monkeypatch):
    """The model 'writes' (teacher-forced) a program per problem; the rollout executes it, and evaluation reads
    its recorded result: one execution per program in all, and the verdicts follow the programs' answers."""
    import storm_jax.sampling.rollout as R
    from storm_jax.config import load_config
    from storm_jax.data.format import Segment, code_segment
    from storm_jax.execution.pool import ExecutionPool
    from storm_jax.models.qwen import ModelConfig, init_params
    from storm_jax.pipeline import evaluate
    from storm_jax.tokenizer import encode_segment, eos_ids, load_tokenizer

    tok = load_tokenizer()
    problems = tmp_path / "p.jsonl"
    meta = {"benchmark": "toy", "variant": "test"}
    rows = [{"id": "a", "question": "Maximize x with x <= 4.", "answer": 4.0, **meta},
            {"id": "b", "question": "Maximize x with x <= 6.", "answer": 6.0, **meta}]  # fmt: skip
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ubs = {0: 4, 1: 5}  # problem b's program has the wrong bound: its answer (5) is wrong

    real = R.rollout

    def forced_rollout(params, cfg, tokenizer, requests, rcfg, executor, **kw):
        for i, r in enumerate(requests):
            segs = [Segment("text", "Model it.\n"), code_segment(PROGRAM.format(ub=ubs[i]))]
            r.forced = [t for s in segs for t in encode_segment(tokenizer, s)] + [eos_ids(tokenizer)[0]]
        return real(params, cfg, tokenizer, requests, rcfg, executor, **kw)

    monkeypatch.setattr(R, "rollout", forced_rollout)
    cfg = load_config("storm_tiny", [], num_devices=1)
    g = cfg.grpo
    g.answer_from, g.protocol, g.max_response_tokens, g.max_len = "auto", "storm", 200, 512
    mcfg = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=16)  # fmt: skip
    params = init_params(mcfg, jax.random.key(0))
    with ExecutionPool(num_workers=1) as pool:
        ex = _CountingExecutor(pool)
        out = evaluate(params, mcfg, tok, str(problems), g, ex)
    assert (ex.submitted, ex.mapped) == (2, 0)  # each program ran once, in the rollout; none re-run
    assert out["n"] == 2.0 and out["pass@1"] == pytest.approx(0.5)
    assert out["failures"] == {"wrong_objective": 1}
