"""Two JAX processes on localhost (4 fake CPU devices each, one global mesh of 8) against one process with 8.

SFT through the real CLI (`storm-jax train sft`, the toy config): the same per-step losses and final params,
only process 0 writes the run's files, and SIGKILL of both processes after a checkpoint, then a relaunch,
resumes and ends where the uninterrupted run ends. Each launch takes about a minute on two shared cores.
"""

import json
import os
import signal

import jax
import numpy as np
import pytest
from multihost_util import launch, written
from tolerances import logits_depth, reorder_atol

STEPS, SAVE_EVERY, BATCH, SEQ = 4, 2, 8, 64
ARGS = ["train", "sft", "--config=configs/tiny_cpu.py:toy", f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", f"--config.checkpoint.save_every={SAVE_EVERY}", "--config.checkpoint.keep=5",
        "--config.train.progress=false", f"--config.data.batch_size={BATCH}", "--config.optim.warmup_steps=1",
        "--config.optim.lr=1e-2"]  # fmt: skip

pytestmark = pytest.mark.slow


def run(workdir: str, nproc: int, *, fault_at: int | None = None) -> list[tuple[int, str]]:
    os.makedirs(workdir, exist_ok=True)
    env = {"STORM_JAX_FAULT_AT_STEP": str(fault_at)} if fault_at else None
    return launch([*ARGS, f"--config.workdir={workdir}"], num_processes=nproc, devices_per_process=8 // nproc,
                  record_dir=workdir + ".rec", timeout=420, env_extra=env)  # fmt: skip


def losses(workdir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["split"] == "train":
                out[r["step"]] = r["loss"]
    return out


def params_on(workdir: str, devices) -> tuple[int, list[np.ndarray]]:
    """The final params restored onto `devices` (another mesh shape than the run's: Orbax reshards)."""
    from storm_jax.train.sft import load_run_state

    _, _, state, step = load_run_state(workdir, devices=devices)
    return step, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def model_cfg():
    from storm_jax.config import load_config
    from storm_jax.train.setup import resolve_model_config

    return resolve_model_config(load_config("configs/tiny_cpu.py:toy", []))


def loss_atol(ref: float) -> float:
    # The loss is a mean over the batch's tokens of log-softmax terms: the logits' reduction depth plus the
    # vocabulary (log-sum-exp) and the batch*length token sum, the sums whose order the 2x4 split changes.
    cfg = model_cfg()
    return reorder_atol(ref, logits_depth(cfg, SEQ) + cfg.vocab_size + BATCH * SEQ)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("ref") / "run")
    ((rc, out),) = run(wd, 1)
    assert rc == 0, out
    return wd


def assert_matches(reference: str, workdir: str) -> None:
    lr, lm = losses(reference), losses(workdir)
    assert sorted(lr) == sorted(lm) == list(range(1, STEPS + 1))
    assert len(set(lr.values())) == STEPS  # real, changing losses
    for s in lr:
        assert abs(lm[s] - lr[s]) <= loss_atol(lr[s]), (s, lm[s], lr[s], loss_atol(lr[s]))
    devices = jax.devices()[:2]  # restore into a 2-device mesh: the runs used 8 (export/eval on fewer)
    (sr, pr), (sm, pm) = params_on(reference, devices), params_on(workdir, devices)
    assert sr == sm == STEPS
    # Adam divides each gradient by its running RMS, so a relative gradient error e moves a param by about
    # lr*e per step; summed over the steps this is bounded by the loss-path depth times the step count.
    cfg = model_cfg()
    depth = STEPS * (logits_depth(cfg, SEQ) + cfg.vocab_size + BATCH * SEQ)
    for a, b in zip(pm, pr):
        np.testing.assert_allclose(a, b, rtol=0, atol=reorder_atol(b, depth))


def test_two_processes_match_one_and_only_process_0_writes(reference, tmp_path):
    wd = str(tmp_path / "mp")
    res = run(wd, 2)
    for i, (rc, out) in enumerate(res):
        assert rc == 0, (i, out)
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in res[0][1]  # one global mesh of 8, not 4
    assert_matches(reference, wd)
    # One record per step: a second writer would have appended its own.
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert len([json.loads(x) for x in f]) == STEPS
    root = os.path.abspath(wd)
    mine = lambda i: [p for p in written(wd + ".rec", i) if p.startswith(root + os.sep)]
    p0, p1 = mine(0), mine(1)
    assert os.path.join(root, "metrics.jsonl") in p0
    assert any(p.startswith(os.path.join(root, "config.json")) for p in p0)
    assert any(p.startswith(os.path.join(root, "tb") + os.sep) for p in p0)
    # Process 1 writes checkpoint shards (Orbax's multi-process save) and nothing else of the run.
    ckpt = os.path.join(root, "checkpoints") + os.sep
    assert p1 and all(p.startswith(ckpt) for p in p1), p1
    assert any("process_1" in p for p in p1)


def test_sigkill_both_after_a_checkpoint_then_relaunch_resumes_and_matches(reference, tmp_path):
    wd = str(tmp_path / "crash")
    res = run(wd, 2, fault_at=SAVE_EVERY + 1)
    assert [rc for rc, _ in res] == [-signal.SIGKILL] * 2, res
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == [str(SAVE_EVERY)]
    res = run(wd, 2)
    for i, (rc, out) in enumerate(res):
        assert rc == 0, (i, out)
        assert f"resumed from {os.path.join(os.path.abspath(wd), 'checkpoints')} at step {SAVE_EVERY}" in out
    assert_matches(reference, wd)
