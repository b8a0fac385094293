"""GRPO learning signal on CPU, with real code execution.

Task: "What is A times B?". A tiny Qwen3 (real vocabulary and chat template) is first SFT'd on trajectories
that write `print(A*B)` or `print(A+B)` equally often for every question, so it writes well-formed code but
picks the operator by a coin flip (pass rate ~0.5). The reward is 1 when the program's executed output equals
the true answer (real execution pool, storm protocol). GRPO must learn to write the product; the control run
permutes the rewards across trajectories, which removes the information and must not learn. Pass rates are
measured by sampling the policy (temperature 1) before and after.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from storm_jax.config import load_config
from storm_jax.data.format import Segment, code_segment, output_segment
from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
from storm_jax.pipeline import evaluate
from storm_jax.tokenizer import load_tokenizer
from storm_jax.train.grpo import train_grpo
from storm_jax.train.sft import train_sft

PROBLEMS = [(7, 8, "times"), (9, 6, "times"), (5, 4, "times"), (3, 9, "times")]


def _write_task(d):
    sft_rows, problems = [], []
    for i, (a, b, word) in enumerate(PROBLEMS):
        q = f"What is {a} {word} {b}?"
        truth = a * b if word == "times" else a + b
        problems.append(
            {"id": f"ops-{i}", "benchmark": "toy", "variant": "ops", "question": q, "answer": float(truth)}
        )
        for op in ("*", "+"):
            val = a * b if op == "*" else a + b
            segs = [
                code_segment(f"print({a}{op}{b})"),
                output_segment(str(val)),
                Segment("text", f"\\boxed{{{val}}}"),
            ]
            for _ in range(4):
                sft_rows.append(
                    {"messages": [{"role": "user", "content": q}], "segments": [s.to_json() for s in segs]}
                )
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    (d / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("ops_task")
    _write_task(d)
    sft_cfg = load_config(
        "configs/tiny_cpu.py",
        [f"workdir={d}/sft", f"data.path={d}/sft.jsonl", "data.eval_path=", "train.eval_every=0", "data.seq_len=64",
         "data.batch_size=8", "data.pack=False", "train.steps=100", "optim.lr=1e-2", "train.logprob_chunk=0",
         "data.enable_thinking=False", "train.progress=False", "train.log_every=50", "checkpoint.save_every=100"],
    )  # fmt: skip
    sft = train_sft(sft_cfg, echo=lambda s: None)
    tok = load_tokenizer()
    pool = ExecutionPool(2, ExecutionConfig(wall_s=5.0, cpu_s=5.0))
    yield d, sft, tok, pool
    pool.close()


def _grpo_cfg(d, name, shuffle):
    cfg = load_config(
        "configs/storm_grpo.py:tiny",
        [f"workdir={d}/{name}", f"grpo.problems_path={d}/problems.jsonl", "grpo.max_response_tokens=24",
         "grpo.max_len=64", "grpo.seq_bucket=32", "grpo.problems_per_step=4", "grpo.group_size=8", "grpo.steps=10",
         "grpo.answer_from=execution", f"grpo.shuffle_rewards={shuffle}", "optim.lr=1e-3", "train.progress=False",
         "checkpoint.save_every=100"],
    )  # fmt: skip
    return cfg


def _pass_rate(params, d, sft, tok, pool, g):
    ev = evaluate(
        params, sft["run"].model_cfg, tok, str(d / "problems.jsonl"), g, pool, samples=32, seed=4242
    )
    return ev


def _run(task, name, shuffle):
    d, sft, tok, pool = task
    cfg = _grpo_cfg(d, name, shuffle)
    before = _pass_rate(sft["state"].params, d, sft, tok, pool, cfg.grpo)
    out = train_grpo(
        cfg, model_cfg=sft["run"].model_cfg, params=sft["state"].params, mesh_rules=sft["run"].mesh_rules,
        tokenizer=tok, executor=pool, echo=lambda s: None,
    )  # fmt: skip
    after = _pass_rate(out["params"], d, sft, tok, pool, cfg.grpo)
    return before, after, out


@pytest.mark.slow
def test_grpo_raises_reward_and_shuffled_rewards_do_not(task):
    before, after, out = _run(task, "grpo", False)
    print("real rewards: before", before["pass@1"], "after", after["pass@1"], "curve", out["pass_curve"])
    # The SFT policy writes runnable code but chooses the operator at random.
    assert before["code_blocks"] > 0.9
    assert 0.2 < before["pass@1"] < 0.8
    assert after["pass@1"] >= before["pass@1"] + 0.15
    assert np.mean(out["pass_curve"][-3:]) > np.mean(out["pass_curve"][:2])

    c_before, c_after, c_out = _run(task, "grpo_shuffled", True)
    print(
        "shuffled rewards: before",
        c_before["pass@1"],
        "after",
        c_after["pass@1"],
        "curve",
        c_out["pass_curve"],
    )
    assert c_before["pass@1"] == pytest.approx(before["pass@1"])  # same SFT policy, same evaluation seeds
    assert c_after["pass@1"] < before["pass@1"] + 0.15
    assert after["pass@1"] - c_after["pass@1"] >= 0.2


@pytest.mark.slow
def test_grpo_resume_after_kill_is_exact(task, tmp_path):
    """A GRPO run SIGKILLed after step 2 and started again ends bit-identical to an uninterrupted run: same
    per-step rewards, losses and rollout statistics (so the same problems were drawn), same final params."""
    import os
    import subprocess
    import sys

    import jax

    from storm_jax.train.export_cli import export
    from storm_jax.train.grpo import FAULT_ENV
    from storm_jax.train.sft import load_run_state

    d, _sft, _tok, _pool = task
    hf = tmp_path / "sft_hf"
    export(str(d / "sft"), str(hf))
    overrides = [f"grpo.problems_path={d}/problems.jsonl", "grpo.max_response_tokens=24", "grpo.max_len=64",
                 "grpo.seq_bucket=32", "grpo.problems_per_step=4", "grpo.group_size=8", "grpo.steps=4",
                 "grpo.answer_from=execution", "optim.lr=1e-3", "train.progress=False", "checkpoint.save_every=1",
                 f"init_from_hf={hf}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def run(work, fault=0):
        cmd = [sys.executable, "-m", "storm_jax.cli", "train", "grpo", "--config=configs/storm_grpo.py:tiny",
               f"--config.workdir={work}"] + [f"--config.{o}" for o in overrides]  # fmt: skip
        e = {**env, FAULT_ENV: str(fault)} if fault else env
        return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=1200)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    p = run(straight)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run(resumed, fault=2)
    assert p.returncode == -9, (p.returncode, p.stderr[-3000:])  # SIGKILL right after the step-2 checkpoint
    p = run(resumed)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed" in p.stdout + p.stderr

    def per_step(work):
        rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
        keys = ("reward_mean", "pass_rate", "loss", "response_len", "model_tokens", "code_blocks")
        return {r["step"]: {k: r.get(k) for k in keys} for r in rows if "reward_mean" in r}

    a, b = per_step(straight), per_step(resumed)
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
    assert a == b
    assert len({v["loss"] for v in a.values()}) > 1  # updates happened (else the comparison proves little)
    _, _, sa, step_a = load_run_state(str(straight))
    _, _, sb, step_b = load_run_state(str(resumed))
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
