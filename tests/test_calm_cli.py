"""`storm-jax calm` and `storm-jax warmup-data` as commands: help, one-line config errors, the tiny recipe
end to end (random reasoner + programmatic intervener + real pool), and the local chat client."""

from __future__ import annotations

import json

import jax
import pytest

from storm_jax import cli


@pytest.mark.parametrize("cmd", ["calm", "warmup-data"])
def test_help(cmd, capsys):
    assert cli.main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: storm-jax {cmd}")
    if cmd == "calm":
        assert "calm:tiny" in out


def test_config_errors_are_one_line(capsys, tmp_path):
    assert cli.main(["calm", "--config=calm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "reasoner.checkpoint" in err
    assert cli.main(["calm", "--config=calm:tiny", "--config.intervener.kind=oracle"]) == 2
    assert "intervener.kind" in capsys.readouterr().err
    assert cli.main(["calm", "--config=calm:tiny", "--config.no_such=1"]) == 2
    assert "no_such" in capsys.readouterr().err
    assert cli.main(["calm", "--config=calm:big"]) == 2
    assert "unknown variant" in capsys.readouterr().err
    # a model intervener whose key variable is unset: named, no traceback
    argv = ["calm", "--config=calm:tiny", "--config.intervener.kind=openai", f"--config.workdir={tmp_path}",
            "--config.intervener.base_url=http://127.0.0.1:9/v1", "--config.intervener.model=m",
            "--config.intervener.api_key_env=STORM_CALM_UNSET_KEY"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "STORM_CALM_UNSET_KEY" in capsys.readouterr().err
    assert cli.main(["warmup-data", "--problems", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "--problems" in capsys.readouterr().err


def test_calm_tiny_recipe_end_to_end(tmp_path, capsys):
    argv = ["calm", "--config=calm:tiny", "--config.num_problems=2", "--config.max_interventions=1",
            "--config.reasoner.max_response_tokens=96", f"--config.workdir={tmp_path}", "--config.progress=false"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["problems"] == 2
    stats = json.loads((tmp_path / "stats.json").read_text())
    records = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["synth-s0-000000-arith", "synth-s0-000001-arith"]
    # every rollout was judged: one more rollout than hints, and the last one ended the problem
    assert all(len(r["correct_by_round"]) == len(r["interventions"]) + 1 for r in records)
    assert all(
        r["outcome"] in ("max_interventions", "flawless_wrong", "golden", "out_of_budget") for r in records
    )
    # a hint (~34 tokens) is injected only where the kept steps + hint leave room to continue: 96 response
    # tokens leave a random reasoner's flawed step ~60 tokens of slack (48 left ~14, and a draw that put the
    # step later ended a problem out of budget instead)
    assert sum(stats["flaw_distribution"].values()) == sum(len(r["interventions"]) for r in records) >= 2
    assert (tmp_path / "golden.jsonl").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["intervener"]["kind"] == "programmatic" and saved["recipe"] == "calm"


def test_local_client_samples_through_the_shared_sampler():
    from storm_jax.clients.local import LocalClient
    from storm_jax.models.qwen import ModelConfig, init_params
    from storm_jax.sampling.sampler import EngineConfig
    from storm_jax.tokenizer import load_tokenizer

    cfg = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)  # fmt: skip
    params = init_params(cfg, jax.random.key(1), std=0.5)
    c = LocalClient(params, cfg, load_tokenizer(), engine=EngineConfig(num_slots=2, max_len=128, chunk_size=8,
                                                                       max_bucket=64))  # fmt: skip
    msgs = [{"role": "user", "content": "Say something."}]
    a = c.complete(msgs, max_tokens=12, temperature=0.0)
    b, d = c.complete_batch([msgs, [{"role": "user", "content": "Other."}]], max_tokens=12, temperature=0.0)
    assert a.text == b.text and a.usage.completion_tokens <= 12 and a.usage.prompt_tokens > 5
    assert c.stats.completions == 3 and c.stats.cost_usd == 0.0


@pytest.mark.slow  # two full CLI runs (~50-70 s on a shared 2-core machine)
def test_calm_with_an_http_intervener_pays_once(tmp_path, monkeypatch, capsys):
    """The intervener behind an OpenAI-protocol server (the programmatic one answers there): a rerun from
    scratch over the same cache sends nothing; the key is in no file."""
    from chat_server import ChatServer

    from storm_jax.calm.programmatic import ProgrammaticIntervener
    from storm_jax.execution.pool import ExecutionPool
    from storm_jax.jobs import read_problems

    key = "sk-calm-SECRET-777"
    monkeypatch.setenv("STORM_CALM_KEY", key)
    probs = read_problems(cli_res() / "arith" / "train.problems.jsonl", 1)
    with ExecutionPool(num_workers=1) as pool:
        oracle = ProgrammaticIntervener(probs, pool, timeout_s=20.0)
        with ChatServer(reply=lambda body: oracle.complete(body["messages"]).text) as srv:
            argv = ["calm", "--config=calm:tiny", "--config.num_problems=1", "--config.max_interventions=1",
                    "--config.reasoner.max_response_tokens=96", f"--config.workdir={tmp_path}",
                    "--config.progress=false", "--config.intervener.kind=openai",
                    f"--config.intervener.base_url={srv.url}", "--config.intervener.model=expert",
                    "--config.intervener.api_key_env=STORM_CALM_KEY"]  # fmt: skip
            assert cli.main(argv) == 0
            first = srv.requests
            assert first == 2  # 1 problem x 2 rounds (the random reasoner earns a hint, then stops)
            results = (tmp_path / "results.jsonl").read_bytes()
            (tmp_path / "results.jsonl").unlink()
            (tmp_path / "golden.jsonl").unlink()
            assert cli.main(argv) == 0
            assert srv.requests == first  # every verdict came from the cache
            assert (tmp_path / "results.jsonl").read_bytes() == results
    usage = json.loads((tmp_path / "last_run.json").read_text())["intervener"]
    assert usage["cache_hits"] == 2 and usage["requests"] == 0
    assert json.loads((tmp_path / "config.json").read_text())["intervener"]["api_key_env"] == "STORM_CALM_KEY"
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    capsys.readouterr()


def cli_res():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "storm_jax" / "resources" / "tiny"


@pytest.mark.slow
def test_calm_sigkill_and_rerun_gives_identical_files(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def start(workdir):
        cmd = [sys.executable, "-m", "storm_jax.cli", "calm", "--config=calm:tiny", "--config.num_problems=4",
               "--config.batch_size=1", "--config.max_interventions=1", "--config.reasoner.max_response_tokens=48",
               f"--config.workdir={workdir}", "--config.progress=false"]  # fmt: skip
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    full, part = tmp_path / "full", tmp_path / "part"
    proc = start(full)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    proc = start(part)
    results = part / "results.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 1 <= results.read_text().count("\n") < 4
    proc = start(part)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    for name in ("golden.jsonl", "results.jsonl", "stats.json"):
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    ids = [json.loads(ln)["id"] for ln in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 4
