"""Exact resume: 2N steps straight == N steps, SIGKILL (real subprocess), resume, N more steps; and SIGTERM.

On random tokens (the toy config) and through the real JSONL pipeline (bundled rows, tokenizer, packing)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 4


TOY = "configs/tiny_cpu.py:toy"
#: The default config's real data path: bundled trajectories, the Qwen3 tokenizer, grain packing.
JSONL = ("--config.data.seq_len=256", "--config.data.eval_path=", "--config.train.eval_every=0")


def cli(workdir, *extra, fault_at=None, wait=True, config=TOY):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("STORM_JAX_FAULT_AT_STEP", None)
    if fault_at:
        env["STORM_JAX_FAULT_AT_STEP"] = str(fault_at)
    args = [sys.executable, "-m", "storm_jax.train.cli", "sft", f"--config={config}",
            f"--config.workdir={workdir}", f"--config.train.steps={2 * N}", "--config.train.log_every=1",
            f"--config.checkpoint.save_every={N}", "--config.checkpoint.keep=5", "--config.train.progress=false",
            "--config.data.batch_size=4", "--config.optim.warmup_steps=2", "--config.optim.lr=1e-2", *extra]  # fmt: skip
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def losses(workdir):
    """Per-step train loss; a step logged twice (before a crash and after resume) keeps the last record."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["split"] == "train":
                out[r["step"]] = r["loss"]
    return out


def final_params(workdir):
    from storm_jax.train.sft import load_run_state

    _, _, state, step = load_run_state(workdir, devices=jax.devices()[:2])
    return step, jax.device_get(state.params), int(state.step)


def test_sigkill_then_resume_is_exact(tmp_path):
    check_sigkill_then_resume_is_exact(tmp_path, TOY)


@pytest.mark.slow  # ~2.5 min: the real tokenizer, grain pipeline and packing in three subprocess runs
def test_sigkill_then_resume_is_exact_through_the_jsonl_pipeline(tmp_path):
    check_sigkill_then_resume_is_exact(tmp_path, "configs/tiny_cpu.py", *JSONL)


def check_sigkill_then_resume_is_exact(tmp_path, config, *extra):
    """Losses of every step and the final params of a killed-and-resumed run equal the uninterrupted run's."""
    ref, crash = str(tmp_path / "ref"), str(tmp_path / "crash")
    rc, out = cli(ref, *extra, config=config)
    assert rc == 0, out
    rc, out = cli(crash, *extra, fault_at=N + 2, config=config)
    assert rc == -signal.SIGKILL, out
    assert sorted(os.listdir(os.path.join(crash, "checkpoints"))) == [str(N)]  # steps N+1, N+2 were lost
    rc, out = cli(crash, *extra, config=config)
    assert rc == 0, out
    assert f"at step {N}" in out  # resumed from the step-N checkpoint

    lr, lc = losses(ref), losses(crash)
    assert sorted(lr) == list(range(1, 2 * N + 1)) == sorted(lc)
    for s in range(1, 2 * N + 1):
        assert lc[s] == lr[s], (s, lc[s], lr[s])  # bit-identical on CPU
    assert len(set(lr.values())) == 2 * N  # real, changing values
    step_r, pr, sr = final_params(ref)
    step_c, pc, sc = final_params(crash)
    assert step_r == step_c == sr == sc == 2 * N
    for a, b in zip(jax.tree.leaves(pr), jax.tree.leaves(pc)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
    wd = str(tmp_path / "term")
    p = cli(wd, "--config.train.steps=100000", "--config.checkpoint.save_every=100000", wait=False)
    deadline = time.time() + 300
    metrics = os.path.join(wd, "metrics.jsonl")
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "stopped by SIGTERM" in out
    steps = [int(s) for s in os.listdir(os.path.join(wd, "checkpoints"))]
    assert len(steps) == 1 and steps[0] >= 1
    assert max(losses(wd)) >= steps[0]
