"""`storm-jax evolve --config=steporlm_evolve:tiny`: 2 rounds end to end on CPU (tiny policy + tiny GenPRM,
bundled synthetic problems, the real pool); SIGKILL in the middle of round 2 and a rerun give the same round-2
outputs and metrics as the uninterrupted run. Slow (minutes)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROUND_FILES = ("samples.jsonl", "critiques.jsonl", "pairs.jsonl", "pair_stats.json", "dpo.json", "genprm_sft.json",
               "metrics.json", "policy/model.safetensors", "genprm/model.safetensors")  # fmt: skip


def _cmd(workdir):
    return [sys.executable, "-m", "storm_jax.cli", "evolve", "--config=steporlm_evolve:tiny",
            f"--config.workdir={workdir}"]  # fmt: skip


def _env():
    # The CLI as a user runs it: one CPU device (conftest forces 8 host devices for the in-process tests,
    # and the tiny batch of 2 does not split over 8).
    flags = " ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    )
    return {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": flags}


@pytest.mark.slow
def test_evolve_tiny_two_rounds_then_kill_and_resume_round_2(tmp_path):
    a = tmp_path / "a"
    t0 = time.perf_counter()
    p = subprocess.run(_cmd(a), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in open(a / "metrics.jsonl")]
    assert [m["round"] for m in rows] == [1, 2]
    for m in rows:
        assert m["samples"] == 24 and 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["parse_failure_rate"] <= 1.0
        assert m["critic_agreement"] is not None
    for d in (
        "warmup/policy",
        "warmup/genprm",
        "round_1/policy",
        "round_1/genprm",
        "round_2/policy",
        "round_2/genprm",
    ):
        assert (a / d / "model.safetensors").is_file(), d
    print(f"uninterrupted run: {wall:.0f} s", rows)

    # b: the finished warm-up and round 1 of a, then round 2 killed mid-way and rerun.
    b = tmp_path / "b"
    b.mkdir()
    for d in ("warmup", "round_1"):
        shutil.copytree(a / d, b / d)
    proc = subprocess.Popen(_cmd(b), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 1200
    while not (b / "round_2" / "critiques.done").exists():
        assert proc.poll() is None and time.time() < deadline, "round 2 did not get to its critiques"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the pool workers too
    proc.wait()
    assert not (b / "round_2" / "metrics.done").exists()
    done_before = sorted(x.name for x in (b / "round_2").glob("*.done"))
    p = subprocess.run(_cmd(b), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "== round 1:" not in p.stdout and "== round 2: samples ==" not in p.stdout, done_before
    for f in ROUND_FILES:
        assert (a / "round_2" / f).read_bytes() == (b / "round_2" / f).read_bytes(), f
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
