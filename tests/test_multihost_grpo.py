"""GRPO on two JAX processes (4 fake CPU devices each) against one process with 8, through the real CLI.

The policy is a tiny Qwen3 SFT-trained to write runnable code with a random operator (the task of
test_grpo_learning), so rewards vary within groups. Two steps: the problems of a step are split across the
processes, each rolls out its half on its own devices with its own execution pool, rewards are gathered;
the per-trajectory rewards and advantages (rollouts.jsonl) equal the single-process run's and the losses agree
within the reordering bound. Only process 0 writes the run's files.
"""

import json
import os

import numpy as np
import pytest
from multihost_util import launch, spawned, written
from tolerances import logits_depth, reorder_atol

pytestmark = pytest.mark.slow

STEPS, P, G, MAX_LEN, EXEC_WORKERS = 2, 4, 8, 64, 2
OVERRIDES = [f"grpo.problems_per_step={P}", f"grpo.group_size={G}", f"grpo.steps={STEPS}",
             "grpo.max_response_tokens=24", f"grpo.max_len={MAX_LEN}", "grpo.seq_bucket=32",
             "grpo.answer_from=execution", "optim.lr=1e-3", "train.progress=False", "checkpoint.save_every=1",
             f"grpo.exec_workers={EXEC_WORKERS}"]  # fmt: skip


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """(problems path, HF checkpoint dir) of an SFT policy that gets some problems right, some wrong."""
    from test_grpo_learning import _write_task

    from storm_jax.config import load_config
    from storm_jax.train.export_cli import export
    from storm_jax.train.sft import train_sft

    d = tmp_path_factory.mktemp("grpo_task")
    _write_task(d)
    cfg = load_config(
        "configs/tiny_cpu.py",
        [f"workdir={d}/sft", f"data.path={d}/sft.jsonl", "data.eval_path=", "train.eval_every=0", "data.seq_len=64",
         "data.batch_size=8", "data.pack=False", "train.steps=100", "optim.lr=1e-2", "train.logprob_chunk=0",
         "data.enable_thinking=False", "train.progress=False", "train.log_every=50", "checkpoint.save_every=100"],
    )  # fmt: skip
    train_sft(cfg, echo=lambda s: None)
    export(str(d / "sft"), str(d / "hf"))
    return str(d / "problems.jsonl"), str(d / "hf")


def run(workdir: str, nproc: int, policy) -> list[tuple[int, str]]:
    problems, hf = policy
    args = ["train", "grpo", "--config=configs/storm_grpo.py:tiny", f"--config.workdir={workdir}",
            f"--config.grpo.problems_path={problems}", f"--config.init_from_hf={hf}",
            *[f"--config.{o}" for o in OVERRIDES]]  # fmt: skip
    return launch(args, num_processes=nproc, devices_per_process=8 // nproc, record_dir=workdir + ".rec",
                  timeout=900)  # fmt: skip


def records(workdir: str, name: str, key: str) -> dict[int, dict]:
    out = {}
    with open(os.path.join(workdir, name)) as f:
        for line in f:
            r = json.loads(line)
            if key in r:
                out[r["step"]] = r
    return out


def test_grpo_two_processes_match_one(policy, tmp_path):
    ref, mp = str(tmp_path / "ref"), str(tmp_path / "mp")
    ((rc, out),) = run(ref, 1, policy)
    assert rc == 0, out
    res = run(mp, 2, policy)
    for i, (rc, out) in enumerate(res):
        assert rc == 0, (i, out)

    ra, rb = records(ref, "rollouts.jsonl", "rewards"), records(mp, "rollouts.jsonl", "rewards")
    assert sorted(ra) == sorted(rb) == list(range(1, STEPS + 1))
    for s in ra:
        assert rb[s]["problems"] == ra[s]["problems"]
        assert rb[s]["rewards"] == ra[s]["rewards"], s  # scored on two hosts, gathered in problem order
        assert rb[s]["advantages"] == ra[s]["advantages"], s  # group statistics over the gathered rewards
        assert len(ra[s]["rewards"]) == P * G
    rewards = np.array([ra[s]["rewards"] for s in ra])
    assert 0 < rewards.mean() < 1 and np.any(np.array([ra[s]["advantages"] for s in ra]) != 0)

    ma, mb = records(ref, "metrics.jsonl", "reward_mean"), records(mp, "metrics.jsonl", "reward_mean")
    from storm_jax.config import load_config
    from storm_jax.train.setup import resolve_model_config

    mc = resolve_model_config(load_config("configs/storm_grpo.py:tiny", [f"init_from_hf={policy[1]}"]))
    depth = logits_depth(mc, MAX_LEN) + mc.vocab_size + P * G * MAX_LEN
    for s in ma:
        assert mb[s]["reward_mean"] == ma[s]["reward_mean"]
        for k in ("response_len", "model_tokens", "code_blocks", "groups", "zero_variance_groups"):
            assert mb[s][k] == pytest.approx(ma[s][k], rel=1e-12), (s, k)
        # The surrogate is a token mean of -A * ratio terms (ratio ~ 1 on the first update), which cancel to
        # ~0 in a group-centred batch: its rounding is relative to the terms' magnitude, max|A|, not to itself.
        terms = float(np.max(np.abs(ra[s]["advantages"])))
        assert abs(mb[s]["loss"] - ma[s]["loss"]) <= reorder_atol(terms, depth), s
        for k in ("grad_norm", "entropy"):
            assert abs(mb[s][k] - ma[s][k]) <= reorder_atol(ma[s][k], depth), (s, k, mb[s][k], ma[s][k])

    # One execution pool per process: each started its own sandbox workers.
    for i in range(2):
        sandboxes = [x for x in spawned(mp + ".rec", i) if x.endswith("sandbox.py")]
        assert len(sandboxes) >= EXEC_WORKERS, (i, spawned(mp + ".rec", i))
    root = os.path.abspath(mp)
    p0 = [p for p in written(mp + ".rec", 0) if p.startswith(root + os.sep)]
    p1 = [p for p in written(mp + ".rec", 1) if p.startswith(root + os.sep)]
    for name in ("rollouts.jsonl", "metrics.jsonl", "reward_curve.json"):
        assert os.path.join(root, name) in p0
    ckpt = os.path.join(root, "checkpoints") + os.sep
    assert p1 and all(p.startswith(ckpt) for p in p1), p1
