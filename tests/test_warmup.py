"""StepORLM warm-up generation: a scripted teacher that fails first (bad code, then a wrong answer) and
succeeds on retry; augmentation and dedup; and a SIGKILL mid-run through the real HTTP client: the rerun
re-sends no cached request and writes the same files as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chat_server import ChatServer

from storm_jax.clients.scripted import ScriptedClient
from storm_jax.data.sft import parse_row
from storm_jax.jobs import read_problems
from storm_jax.steporlm.format import STEP_TITLES, final_program, format_problems, segment_steps
from storm_jax.steporlm.warmup import WarmupGenerator
from storm_jax.steporlm.warmup_cli import run_warmup_job

REPO = Path(__file__).resolve().parents[1]
RES = REPO / "storm_jax" / "resources" / "tiny" / "arith" / "train.problems.jsonl"
P1 = "synth-s0-000001-arith"


def solution(question: str, program: str, boxed: str) -> str:
    """A solution in the nine-step layout around `program`."""
    bodies = [question, "x, y: the two quantities.", "x, y >= 0.", "As stated.", "As stated.",
              "As in the program.", "None: the model is linear.", "As in the program.",
              f"```python\n{program.strip()}\n```"]  # fmt: skip
    steps = "\n".join(
        f"<step>\nStep {k}: {t}\n{b}\n</step>" for k, (t, b) in enumerate(zip(STEP_TITLES, bodies), 1)
    )
    return f"{steps}\n\\boxed{{{boxed}}}"


@pytest.fixture(scope="module")
def problems():
    return {p["id"]: p for p in read_problems(RES)}


@pytest.fixture(scope="module")
def pool():
    from storm_jax.execution.pool import ExecutionPool

    with ExecutionPool(num_workers=2) as p:
        yield p


def test_step_format_segmentation():
    text = solution("Q", "print('OBJECTIVE: 1')", "1")
    steps = segment_steps(text)
    assert [s.title for s in steps] == list(STEP_TITLES) and [s.number for s in steps] == list(range(1, 10))
    assert format_problems(text) == [] and final_program(text) == "print('OBJECTIVE: 1')"
    broken = text.replace("Step 4: Objective Function", "Step 4: Objective").replace("\\boxed{1}", "")
    assert format_problems(broken) == ["step 4 should start with 'Step 4: Objective Function'",
                                       "no \\boxed{} answer after the last step"]  # fmt: skip
    assert len(segment_steps("<step>\nStep 1: A\nx</step> junk <step>\nStep 2: B\nunclosed")) == 2


def test_teacher_fails_twice_then_verifies(problems, pool, tmp_path):
    p = problems[P1]
    gold = p["meta"]["program"]
    bad_code = gold.replace("import pyomo.environ as pyo\n", "")  # NameError: pyo
    wrong = gold.replace("4 * m.x >= 24", "4 * m.x >= 20")  # optimum 99, truth 111
    teacher = ScriptedClient([solution(p["question"], bad_code, "111"), solution(p["question"], wrong, "99"),
                              solution(p["question"], gold, "111")])  # fmt: skip
    gen = WarmupGenerator(teacher, pool, max_retries=2, exec_timeout_s=20.0)
    stats = run_warmup_job(gen, [p], tmp_path, progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "warmup.sft.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == P1 and rows[0]["answer"] == pytest.approx(111.0)
    assert rows[0]["messages"][-1]["content"] == solution(p["question"], gold, "111")
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]  # the clean prompt
    assert rows[0]["meta"]["attempts"] == 3
    parse_row(rows[0])  # storm_jax.data.sft reads it
    assert stats["retries"] == 2 and stats["rows"] == 1
    assert stats["failure_reasons"] == {"exec_error": 1, "wrong_answer": 1}
    # the teacher was told what went wrong, never the truth
    second, third = teacher.calls[1][0][-1]["content"], teacher.calls[2][0][-1]["content"]
    assert "NameError" in second and "printed 99" in third
    assert all(
        "111" not in m["content"]
        for m in teacher.calls[2][0]
        if m["role"] == "user" and "failed" in m["content"]
    )


def test_retry_budget_dedup_and_augmentation(problems, pool, tmp_path):
    p = problems[P1]
    gold = p["meta"]["program"]
    scaled_q = p["question"].replace("15 x", "30 x")
    scaled = gold.replace("15 * m.x", "30 * m.x")

    def teacher(messages, params):
        user = messages[-1]["content"]
        if "<problem>" in user:  # augmentation requests
            return (
                f"<problem>{p['question']}</problem>"
                if "different words" in user
                else f"<problem>{scaled_q}</problem>"
            )
        if messages[1]["content"].startswith(scaled_q):
            return solution(scaled_q, scaled, "201")  # 30*6 + 3*7
        return solution(p["question"], gold, "111")

    gen = WarmupGenerator(ScriptedClient(responder=teacher), pool, exec_timeout_s=20.0)
    stats = run_warmup_job(gen, [p], tmp_path, augment=["paraphrase", "scale"], progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "warmup.sft.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [P1, f"{P1}~scale"]  # the "paraphrase" repeated the question: dropped
    assert rows[1]["answer"] == pytest.approx(201.0) and rows[1]["meta"]["augmentation"] == "scale"
    assert stats["duplicates"] == 1 and stats["rows"] == 2
    # a teacher that never gets it right within R = 1: no row, the failure is recorded
    always_wrong = ScriptedClient(responder=lambda m, q: solution(p["question"], gold, "110"))
    out2 = tmp_path / "fail"
    stats = run_warmup_job(WarmupGenerator(always_wrong, pool, max_retries=1), [p], out2, progress=False)
    assert stats["rows"] == 0 and stats["failed"] == 1 and stats["failure_reasons"] == {"boxed_mismatch": 2}
    assert (out2 / "warmup.sft.jsonl").read_text() == "" and len(always_wrong.calls) == 2


def _cli(url, out, n):
    env = {**os.environ, "STORM_TEST_TEACHER_KEY": "sk-warmup-SECRET-42", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "storm_jax.cli", "warmup-data", "--problems", str(RES), "--out", str(out),
           "--limit", str(n), "--base-url", url, "--model", "teacher-1", "--api-key-env", "STORM_TEST_TEACHER_KEY",
           "--workers", "1", "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_run_then_rerun_is_identical_and_sends_no_cached_request(problems, tmp_path):
    by_q = {" ".join(p["question"].split()): p for p in problems.values()}

    def reply(body):
        user = body["messages"][1]["content"]
        p = next(v for q, v in by_q.items() if " ".join(user.split()).startswith(q))
        return solution(p["question"], p["meta"]["program"], str(p["answer"]))

    n = 6
    with ChatServer([("ok", 0.4)] * 1000, reply=reply) as srv:
        full, part = tmp_path / "full", tmp_path / "part"
        proc = _cli(srv.url, full, n)
        assert proc.wait(timeout=240) == 0, proc.stderr.read()[-2000:]
        uninterrupted = srv.requests
        assert uninterrupted == n
        srv.requests = 0
        proc = _cli(srv.url, part, n)
        deadline = time.monotonic() + 200
        results = part / "results.jsonl"
        while time.monotonic() < deadline:
            if results.exists() and len(results.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done = len(results.read_text().splitlines())
        assert 2 <= done < n
        cached = len(list((part / "cache" / "teacher").glob("*/*.json")))
        before = srv.requests
        proc = _cli(srv.url, part, n)
        assert proc.wait(timeout=240) == 0, proc.stderr.read()[-2000:]
        assert srv.requests - before == n - cached  # nothing answered before the kill is asked again
    for name in ("warmup.sft.jsonl", "results.jsonl", "stats.json"):
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    ids = [json.loads(ln)["id"] for ln in (part / "warmup.sft.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == n
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert b"sk-warmup-SECRET-42" not in f.read_bytes(), f
