"""CALM end to end on CPU: a tiny random reasoner teacher-forced through planted flaws, the programmatic
intervener, the real execution pool; hints are inserted at the flawed step, the trajectory continues from
the token-identical prefix, and golden rows carry the hint in context with no loss."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from storm_jax.calm.job import run_calm_job
from storm_jax.calm.loop import CalmLoop, judge
from storm_jax.calm.programmatic import ProgrammaticIntervener
from storm_jax.calm.steps import trajectory_steps
from storm_jax.calm.verdict import VerdictError, parse_verdict
from storm_jax.clients.scripted import ScriptedClient
from storm_jax.data.format import Segment, code_segment
from storm_jax.data.sft import parse_row
from storm_jax.jobs import read_problems
from storm_jax.models.qwen import ModelConfig, init_params
from storm_jax.sampling.rollout import RolloutConfig
from storm_jax.sampling.sampler import EngineConfig, Sampler, SamplingParams
from storm_jax.tokenizer import encode_segment, eos_ids, load_tokenizer

RES = (
    Path(__file__).resolve().parents[1]
    / "storm_jax"
    / "resources"
    / "tiny"
    / "arith"
    / "train.problems.jsonl"
)
P1, P3 = "synth-s0-000001-arith", "synth-s0-000003-arith"
CFG = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8)  # fmt: skip
ENGINE = EngineConfig(
    num_slots=2, max_len=1024, chunk_size=32, min_bucket=16, max_bucket=256, max_prefill_batch=2
)


def _program(gold: str, old: str = "", new: str = "") -> str:
    assert old in gold
    return gold.replace(old, new, 1) if old else gold


@pytest.fixture(scope="module")
def env():
    from storm_jax.execution.pool import ExecutionPool

    tok = load_tokenizer()
    params = init_params(CFG, jax.random.key(0), std=0.5)
    problems = {p["id"]: p for p in read_problems(RES)}
    with ExecutionPool(num_workers=2) as pool:
        yield tok, params, problems, pool


def _forced_fn(tok, problems):
    """Round-by-round teacher-forced reasoner outputs with planted flaws."""
    eos = eos_ids(tok)[0]
    g1, g3 = problems[P1]["meta"]["program"], problems[P3]["meta"]["program"]
    ids = lambda segs: [t for s in segs for t in encode_segment(tok, s)] + [eos]
    T = lambda s: Segment("text", s)
    script = {
        (P1, 0): [T("I write the model.\n\n"), code_segment(_program(g1, "4 * m.x >= 24", "4 * m.x >= 20")),
                  T("\n\nThe optimum is \\boxed{99}.")],  # a number copied wrongly
        (P1, 1): [code_segment(g1), T("\n\nThe optimum is \\boxed{111}.")],
        (P3, 0): [T("I reason about it.\n\n"), T("By inspection x = 0 and y = 2.5, so \\boxed{20}.")],  # by hand
        (P3, 1): [code_segment(_program(g3, "NonNegativeIntegers", "NonNegativeReals").replace(
                  "NonNegativeIntegers", "NonNegativeReals")), T("\n\nSo \\boxed{20}.")],  # integrality lost
        (P3, 2): [code_segment(g3), T("\n\nSo \\boxed{16}.")],
    }  # fmt: skip
    return lambda problem, rnd, prefix_text: ids(script[(problem["id"], rnd)])


def _loop(env, intervener=None, **kw):
    tok, params, problems, pool = env
    rc = RolloutConfig(sampling=SamplingParams(temperature=0.0, max_new_tokens=900, eos_ids=tuple(eos_ids(tok))),
                       exec_timeout_s=20.0)  # fmt: skip
    intervener = intervener or ProgrammaticIntervener(list(problems.values()), pool, timeout_s=20.0)
    return CalmLoop(params, CFG, tok, Sampler(params, CFG, ENGINE), pool, rc, intervener,
                    forced=_forced_fn(tok, problems), **kw)  # fmt: skip


def test_calm_end_to_end_hints_masked_and_prefix_identical(env, tmp_path):
    tok, params, problems, pool = env
    loop = _loop(env, judge_workers=2)  # both problems' verdicts asked at once
    results = {r.id: r for r in loop.run([problems[P1], problems[P3]])}
    r1, r3 = results[P1], results[P3]
    assert r1.golden and r3.golden
    assert [i["flaw"] for i in r1.interventions] == ["wrong_data"]
    assert [i["flaw"] for i in r3.interventions] == ["hand_calculation", "missing_integrality"]
    assert r1.correct_by_round == [False, True] and r3.correct_by_round == [False, False, True]
    assert "20" in r1.interventions[0]["hint"]  # it names the mistyped number
    for res in (r1, r3):
        for k, iv in enumerate(res.interventions):
            before, after = res.history[k], res.history[k + 1]
            cut, n_hint = iv["cut"], iv["hint_tokens"]
            # the continuation's prefix is token-identical to the original before the hint ...
            assert after.response_ids[:cut] == before.response_ids[:cut]
            assert after.kinds[:cut] == before.kinds[:cut]
            # ... followed by the hint ids, kind `hint`, no loss
            assert after.response_ids[cut : cut + n_hint] == loop.hint_ids(iv["hint"])
            assert set(after.kinds[cut : cut + n_hint]) == {"hint"}
            assert set(after.loss_mask[cut : cut + n_hint]) == {0}
        # the flagged step of round k starts at the cut
        steps = trajectory_steps(res.history[0].segments, res.history[0].response_ids, loop.decode)
        assert steps[res.interventions[0]["step"] - 1].start == res.interventions[0]["cut"]
        row = res.row
        assert row["response_ids"] == res.history[-1].response_ids
        n_hint = sum(k == "hint" for k in row["kinds"])
        assert n_hint == sum(i["hint_tokens"] for i in res.interventions) > 0
        assert all(m == (k == "model") for m, k in zip(row["loss_mask"], row["kinds"]))
        assert "Hint: " in loop.decode([t for t, k in zip(row["response_ids"], row["kinds"]) if k == "hint"])
        parsed = parse_row(row)  # the SFT reader takes the row as is: hint positions have weight 0
        P = len(row["prompt_ids"])
        assert list(parsed.token_mask[P:]) == row["loss_mask"]
        assert list(parsed.token_ids) == row["prompt_ids"] + row["response_ids"]
    # the kept executions of the prefix are part of the final trajectory (P3 kept none: its cut came first)
    assert [e.status for e in r1.history[-1].executions] == ["ok"]
    assert r1.history[-1].executions[0].answer == pytest.approx(111.0)


def test_calm_job_stats_and_resume_after_a_kill(env, tmp_path):
    tok, params, problems, pool = env
    probs = [problems[P1], problems[P3]]
    full = tmp_path / "full"
    stats = run_calm_job(_loop(env), probs, full, batch_size=2, progress=False)
    assert stats["golden"] == 2 and stats["golden_yield"] == 1.0
    assert (
        stats["flaw_distribution"]["wrong_data"] == 1 and stats["flaw_distribution"]["hand_calculation"] == 1
    )
    assert stats["flaw_distribution"]["missing_integrality"] == 1
    assert stats["flaw_categories"] == {"computation-driven": 1, "domain-knowledge": 2}
    assert [r["accuracy"] for r in stats["accuracy_per_round"][:3]] == [0.0, 0.5, 1.0]
    assert stats["interventions_per_trajectory"] == 1.5
    golden = [json.loads(ln) for ln in (full / "golden.jsonl").read_text().splitlines()]
    hint = sum(k == "hint" for g in golden for k in g["kinds"])
    assert stats["hint_token_share"] == pytest.approx(hint / sum(len(g["response_ids"]) for g in golden))

    # "kill": the intervener dies on its 5th call (P1 finished in round 1, P3 in round 2), and a torn line
    # is left behind
    inner = ProgrammaticIntervener(list(problems.values()), pool, timeout_s=20.0)
    calls = []

    def dying(messages, params):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return inner.complete(messages).text

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run_calm_job(_loop(env, ScriptedClient(responder=dying)), probs, part, batch_size=2, progress=False)
    assert len((part / "results.jsonl").read_text().splitlines()) == 1
    with (part / "results.jsonl").open("a") as f:
        f.write('{"id": "synth-s0-0000')
    run_calm_job(_loop(env), probs, part, batch_size=2, progress=False)
    for name in ("golden.jsonl", "results.jsonl", "stats.json"):
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    # a third run finds everything done: nothing is rolled out or judged
    idle = ScriptedClient([])
    run_calm_job(_loop(env, idle), probs, part, batch_size=2, progress=False)
    assert idle.calls == [] and (part / "golden.jsonl").read_bytes() == (full / "golden.jsonl").read_bytes()


def test_verdict_schema_and_one_retry():
    with pytest.raises(VerdictError, match="no JSON"):
        parse_verdict("looks fine", 3)
    with pytest.raises(VerdictError, match="out of range"):
        parse_verdict('{"flawless": false, "step": 9, "flaw": "code_error", "hint": "x"}', 3)
    with pytest.raises(VerdictError, match="not one of"):
        parse_verdict('{"flawless": false, "step": 1, "flaw": "typo", "hint": "x"}', 3)
    with pytest.raises(VerdictError, match="not a step the reasoner wrote"):
        parse_verdict('{"flawless": false, "step": 2, "flaw": "code_error", "hint": "x"}', 3, [1, 3])
    v = parse_verdict(
        'Sure.\n```json\n{"flawless": false, "step": 2, "flaw": "wrong_data", "hint": "a {b}"}\n```', 3
    )
    assert (v.step, v.flaw, v.hint) == (2, "wrong_data", "a {b}")
    from storm_jax.calm.steps import Step

    steps = [Step("text", "a", 0, 1), Step("code", "b", 1, 2)]
    ok = '{"flawless": true, "step": null, "flaw": null, "hint": ""}'
    j = judge(ScriptedClient(["nope", ok]), "q", steps)
    assert j.verdict.flawless and j.attempts == 2
    client = ScriptedClient(["nope", '{"flawless": false}'])
    j = judge(client, "q", steps)
    assert j.verdict is None and j.attempts == 2 and "step" in j.error
    assert "not a valid verdict" in client.calls[1][0][-1]["content"]


def test_no_room_for_the_hint_stops_the_problem(env):
    tok, params, problems, pool = env
    loop = _loop(env)
    loop.rollout_cfg = RolloutConfig(sampling=SamplingParams(temperature=0.0, max_new_tokens=30,
                                                             eos_ids=tuple(eos_ids(tok))))  # fmt: skip
    (res,) = loop.run([problems[P1]])
    assert res.outcome == "out_of_budget" and not res.golden and res.interventions == []
    assert len(res.history) == 1 and res.history[0].stop_reason == "max_tokens"
