"""`storm-jax tpu` against a recording fake gcloud on PATH: exact command sequences (snapshots), preemption.

Snapshots live in tests/snapshots/tpu/<name>.txt; STORM_UPDATE_SNAPSHOTS=1 rewrites them (review the diff).
"""

import json
import os
import stat
import sys

import pytest

from storm_jax import tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOTS = os.path.join(ROOT, "tests", "snapshots", "tpu")
SLICE = ["--name=storm1", "--zone=us-east5-a", "--project=proj", "--poll-s=0"]
JOB = ["--", "storm-jax", "train", "sft", "--config=storm_sft", "--config.workdir=gs://bucket/runs/sft1"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A `gcloud` on PATH that records its calls; returns (set_scenario, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "gcloud"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT}/tests/fake_gcloud.py "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log, scenario = tmp_path / "calls.jsonl", tmp_path / "scenario.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
    monkeypatch.setenv("FAKE_GCLOUD_SCENARIO", str(scenario))

    def set_scenario(**kw):
        scenario.write_text(json.dumps(kw))

    def calls():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return set_scenario, calls


def launch(capsys, tmp_path, *argv) -> tuple[int, list[str]]:
    """Run `storm-jax tpu ...`; (exit status, printed lines with the temp dir and repo path normalized)."""
    rc = tpu.main([argv[0], f"--stage={tmp_path}", f"--src={ROOT}", *argv[1:]])  # options before `--`
    out = capsys.readouterr().out
    lines = [x.replace(str(tmp_path), "<STAGE>").replace(ROOT, "<SRC>") for x in out.splitlines()]
    return rc, lines


def check_snapshot(name: str, lines: list[str]) -> None:
    path = os.path.join(SNAPSHOTS, f"{name}.txt")
    text = "\n".join(lines) + "\n"
    if os.environ.get("STORM_UPDATE_SNAPSHOTS") == "1":
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{name}: the commands changed (STORM_UPDATE_SNAPSHOTS=1 rewrites {path})"


def gcloud_lines(lines: list[str]) -> list[str]:
    return [x[2:] for x in lines if x.startswith("+ gcloud ")]


def assert_recorded(calls, lines, tmp_path) -> None:
    """What the fake received is exactly what the launcher printed, in order."""
    import shlex

    got = [shlex.join(["gcloud", *c]).replace(str(tmp_path), "<STAGE>").replace(ROOT, "<SRC>") for c in calls]
    assert got == gcloud_lines(lines)


def test_create_queues_a_spot_v5p_slice_and_waits_until_active(fake, capsys, tmp_path):
    set_scenario, calls = fake
    set_scenario(qr_states=["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])
    rc, lines = launch(capsys, tmp_path, "create", *SLICE, "--type=v5p-32", "--spot")
    assert rc == 0
    check_snapshot("create", lines)
    assert_recorded(calls(), lines, tmp_path)
    assert sum("queued-resources describe" in x for x in lines) == 3  # polled until ACTIVE


@pytest.mark.parametrize(
    "kind, runtime", [("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-64", "v2-alpha-tpuv6e")]
)
def test_create_on_demand_v5e_and_v6e_pick_their_runtime(fake, capsys, tmp_path, kind, runtime):
    set_scenario, calls = fake
    rc, lines = launch(capsys, tmp_path, "create", *SLICE, f"--type={kind}", "--on-demand")
    assert rc == 0
    create = calls()[0]
    assert f"--accelerator-type={kind}" in create and f"--runtime-version={runtime}" in create
    assert "--spot" not in create


def test_unknown_accelerator_type_is_refused_before_any_command(fake, capsys, tmp_path):
    _, calls = fake
    rc = tpu.main(["create", *SLICE, "--type=v4-32"])
    assert rc == 1 and calls() == []
    assert "v5litepod-N (v5e)" in capsys.readouterr().err


def test_setup_and_sync_reach_every_worker(fake, capsys, tmp_path):
    _, calls = fake
    rc, setup = launch(capsys, tmp_path, "setup", *SLICE)
    assert rc == 0
    rc, sync = launch(capsys, tmp_path, "sync", *SLICE)
    assert rc == 0
    check_snapshot("setup_sync", setup + sync)
    assert_recorded(calls(), setup + sync, tmp_path)
    assert all("--worker=all" in c for c in calls())
    assert (tmp_path / "storm1-storm_jax.tar.gz").stat().st_size > 10_000  # git archive really ran


def test_run_starts_all_workers_and_streams_worker_0(fake, capsys, tmp_path):
    _, calls = fake
    rc, lines = launch(capsys, tmp_path, "run", *SLICE, *JOB)
    assert rc == 0
    check_snapshot("run", lines)
    assert_recorded(calls(), lines, tmp_path)
    start, stream = calls()
    assert "--worker=all" in start and "--worker=0" in stream


def test_a_preempted_run_recreates_the_slice_and_runs_the_same_command_again(fake, capsys, tmp_path):
    set_scenario, calls = fake
    # The log stream drops (255) and the node reports PREEMPTED; after the recreate the rerun finishes.
    set_scenario(worker0_rc=[255, 0], node_states=["PREEMPTED", "READY"])
    rc, lines = launch(capsys, tmp_path, "run", *SLICE, "--type=v5p-32", "--spot", *JOB)
    assert rc == 0
    check_snapshot("preemption_resume", lines)
    assert_recorded(calls(), lines, tmp_path)
    starts = [c for c in calls() if c[3] == "ssh" and "--worker=all" in c and "nohup" in c[-1]]
    assert len(starts) == 2 and starts[0] == starts[1]  # the same job: the trainer resumes its checkpoint
    ops = [" ".join(c[2:4]) for c in calls()]
    assert ops.index("queued-resources delete") < ops.index("queued-resources create")
    assert "was preempted; recreating it (restart 1/3)" in "\n".join(lines)


def test_resume_recreates_a_preempted_slice_before_running(fake, capsys, tmp_path):
    set_scenario, calls = fake
    set_scenario(node_states=["PREEMPTED", "READY"])
    rc, lines = launch(capsys, tmp_path, "resume", *SLICE, "--type=v6e-16", *JOB)
    assert rc == 0
    ops = [" ".join(c[2:4]) for c in calls()]
    assert ops[:4] == ["tpu-vm describe", "queued-resources delete", "queued-resources create",
                       "queued-resources describe"]  # fmt: skip
    assert ops[-2:] == ["tpu-vm ssh", "tpu-vm ssh"]


def test_a_failing_job_on_a_healthy_slice_is_not_restarted(fake, capsys, tmp_path):
    set_scenario, calls = fake
    set_scenario(worker0_rc=[1])
    rc, lines = launch(capsys, tmp_path, "run", *SLICE, *JOB)
    assert rc == 1
    assert not any("create" in c for c in calls())
    assert "slice is healthy: not restarting" in "\n".join(lines)


def test_preempted_more_often_than_allowed_gives_up(fake, capsys, tmp_path):
    set_scenario, calls = fake
    set_scenario(worker0_rc=[255], node_states=["PREEMPTED"])
    rc, _ = launch(capsys, tmp_path, "run", *SLICE, "--type=v5p-32", "--max-restarts=1", *JOB)
    assert rc == 1
    assert sum(c[2:4] == ["queued-resources", "create"] for c in calls()) == 1


def test_stop_and_delete(fake, capsys, tmp_path):
    _, calls = fake
    rc, stop = launch(capsys, tmp_path, "stop", *SLICE)
    assert rc == 0
    rc, delete = launch(capsys, tmp_path, "delete", *SLICE)
    assert rc == 0
    check_snapshot("stop_delete", stop + delete)
    assert_recorded(calls(), stop + delete, tmp_path)


def test_dry_run_prints_every_command_and_runs_none(fake, capsys, tmp_path):
    _, calls = fake
    rc, lines = launch(capsys, tmp_path, "resume", *SLICE, "--type=v5p-32", "--dry-run", *JOB)
    assert rc == 0 and calls() == []
    assert not (tmp_path / "storm1-storm_jax.tar.gz").exists()
    check_snapshot("dry_run_resume", lines)


def test_the_launch_tpu_scripts_drive_the_same_tool(fake, tmp_path):
    """launch_tpu/run.sh is `storm-jax tpu run`: with DRY_RUN it prints the commands and calls nothing."""
    import subprocess

    _, calls = fake
    env = dict(
        os.environ, TPU_NAME="storm1", ZONE="us-east5-a", PROJECT="proj", DRY_RUN="1", PYTHON=sys.executable
    )
    p = subprocess.run(
        ["bash", os.path.join(ROOT, "launch_tpu", "run.sh"), "storm-jax", "train", "sft", "--config=storm_sft"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert calls() == []
    lines = gcloud_lines(p.stdout.splitlines())
    assert (
        len(lines) == 2
        and "--worker=all" in lines[0]
        and "storm-jax train sft --config=storm_sft" in lines[0]
    )
    assert "--worker=0" in lines[1]
