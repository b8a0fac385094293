"""`storm-jax eval` end to end on a tiny random model over two benchmarks from STORM_DATA_DIR: the report and
plots; SIGKILL mid-run, rerun -> the summary of an uninterrupted run, nothing counted twice; two shards +
merge -> the same summary; `eval compare`; teacher-forced correct trajectories scored through the harness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest
from serve_util import wait_for

from storm_jax import cli
from storm_jax.data import benchmarks as bm
from storm_jax.data.format import Segment, code_segment
from storm_jax.eval import evalreport, harness

DATASETS = "nl4opt.optmath,complexor.llm4or_clean"
COMMON = ["--random-tiny", "--suite", DATASETS, "--preset", "greedy", "--limit", "3", "--n", "2",
          "--max-new-tokens", "48", "--slots", "2", "--chunk", "16", "--workers", "1", "--no-progress"]  # fmt: skip
TOTAL = 2 * 3 * 2  # datasets x problems x samples

pytestmark = pytest.mark.skipif(
    not os.environ.get(bm.ENV_VAR) or not os.path.isdir(os.environ[bm.ENV_VAR]), reason="no STORM_DATA_DIR"
)


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _lines(run, shard="0-of-1"):
    p = run / "shards" / shard / "completions.jsonl"
    return p.read_text().splitlines() if p.exists() else []


def test_eval_report_kill_resume_shards_and_compare(tmp_path, capsys):
    a, b, c, d = (tmp_path / x for x in "abcd")
    # 1. an uninterrupted run
    assert cli.main(["eval", *COMMON, "--out", str(a)]) == 0
    table = capsys.readouterr().out
    s = _summary(a)
    assert sorted(s["datasets"]) == sorted(DATASETS.split(",")) and s["protocol"] == "strict"
    for name, e in s["datasets"].items():
        assert e["n_problems"] == e["n_scored_problems"] == 3 and e["n_samples"] == 6
        assert e["pass@1"] == 0.0 and e["maj_accuracy"] == 0.0  # a random model solves nothing
        assert sum(e["failures"].values()) == 6 and e["tool_calls_per_sample"] == 0.0
        assert 0 < e["model_tokens_per_sample"] <= 48
        assert f"| {name} | 3 | 0.0 | 0.0 (k=2) | 0.0 |" in table
    for png in ("accuracy", "failures", "cost"):
        assert (a / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(x) for x in _lines(a)]
    assert len(rows) == TOTAL and len({(r["id"], r["sample_index"]) for r in rows}) == TOTAL

    # 2. the same run killed mid-way (SIGKILL), a torn line left behind, then rerun
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "storm_jax.cli", "eval", *COMMON, "--out", str(b)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(
            lambda: len(_lines(b)) >= 2 or proc.poll() is not None, 180, "the first finished samples", 0.01
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _lines(b)
    killed_at = len(before)
    assert 2 <= killed_at < TOTAL, killed_at  # killed mid-run
    with open(b / "shards" / "0-of-1" / "completions.jsonl", "a") as f:
        f.write('{"id": "nl4opt.optmath-0", "sample_ind')  # a write torn by the kill
    assert not (b / "summary.json").exists()
    assert cli.main(["eval", *COMMON, "--out", str(b)]) == 0
    assert _summary(b) == s
    rows_b = [json.loads(x) for x in _lines(b)]
    assert len(rows_b) == TOTAL and len({(r["id"], r["sample_index"]) for r in rows_b}) == TOTAL
    assert _lines(b)[:killed_at] == before  # the samples finished before the kill were kept, not regenerated
    assert sorted(rows_b, key=lambda r: (r["id"], r["sample_index"])) == sorted(
        rows, key=lambda r: (r["id"], r["sample_index"])
    )
    capsys.readouterr()

    # 3. two shards; the second to finish writes the report; `eval merge` gives it again
    assert cli.main(["eval", *COMMON, "--out", str(c), "--process-index", "0", "--process-count", "2"]) == 0
    assert not (c / "summary.json").exists() and len(_lines(c, "0-of-2")) == TOTAL // 2
    assert cli.main(["eval", *COMMON, "--out", str(c), "--process-index", "1", "--process-count", "2"]) == 0
    assert _summary(c) == s
    (c / "summary.json").unlink()
    assert cli.main(["eval", "merge", str(c)]) == 0
    assert _summary(c) == s

    # 4. compare: identical runs differ by 0; another preset is named
    capsys.readouterr()
    assert cli.main(["eval", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| nl4opt.optmath | 0.0 | 0.0 | +0.0 |" in out and "Settings that differ" not in out
    assert cli.main(["eval", *[x if x != "greedy" else "storm" for x in COMMON], "--out", str(d)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "compare", str(a), str(d)]) == 0
    out = capsys.readouterr().out
    assert "complexor.llm4or_clean" in out and "- preset: " in out and "greedy" in out and "storm" in out

    # 5. a rerun with other settings is refused, in one line
    assert cli.main(["eval", *COMMON[:-1], "--n", "3", "--out", str(a)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval.json" in err[0] and "'n'" in err[0]


def test_harness_scores_teacher_forced_trajectories(tmp_path):
    """Samples forced to run a program and box the true answer score as correct; a wrong box does not."""
    from storm_jax.execution.pool import ExecutionPool
    from storm_jax.models.qwen import ModelConfig, init_params
    from storm_jax.sampling.requests import SamplingParams
    from storm_jax.serve.engine import Engine, EngineOptions
    from storm_jax.serve.model import RANDOM_TINY
    from storm_jax.tokenizer import encode_segment, eos_ids, load_tokenizer

    tok = load_tokenizer()
    cfg = ModelConfig(**RANDOM_TINY)
    params = init_params(cfg, jax.random.key(0))
    problems = harness.select_problems(["nl4opt.optmath"], 3, None)

    def forced(p):
        value = p.answer if p.id != problems[2].id else p.answer + 1  # the third problem: a wrong answer
        segs = [code_segment(f"print('OBJECTIVE: {value}')"), Segment("text", f"\n\\boxed{{{value}}}")]
        return [t for s in segs for t in encode_segment(tok, s)] + [eos_ids(tok)[0]]

    settings = {"model": "random-tiny:0", "datasets": ["nl4opt.optmath"], "protocol": "storm", "suite": "x",
                "preset": "greedy", "decoding": {"temperature": 0.0, "top_p": 1.0, "top_k": 0,
                "max_new_tokens": 200}, "n": 2, "limit": 3, "seed": 0, "process_count": 1}  # fmt: skip
    harness.check_settings(tmp_path, settings)
    log = harness.CompletionLog(harness.shard_dir(tmp_path, 0, 1) / harness.COMPLETIONS_FILE)
    sp = SamplingParams(max_new_tokens=200, eos_ids=tuple(eos_ids(tok)))
    with ExecutionPool(num_workers=1) as pool:
        opts = EngineOptions(num_slots=4, max_len=1024, chunk_size=16, max_queue=None, tools=True)
        with Engine(params, cfg, tok, opts, executor=pool) as engine:
            t0 = time.monotonic()
            n = harness.run_shard(
                engine, tok, problems, log, n=2, seed=0, sampling=sp, teacher_forcing=forced
            )
            assert n == 6 and time.monotonic() - t0 < 120
            again = harness.run_shard(
                engine, tok, problems, log, n=2, seed=0, sampling=sp, teacher_forcing=forced
            )
            assert again == 0  # everything is done: nothing regenerated
        summary = evalreport.merge(tmp_path, executor=pool)
    e = summary["datasets"]["nl4opt.optmath"]
    assert e["pass@1"] == pytest.approx(2 / 3) and e["maj_accuracy"] == pytest.approx(2 / 3)
    assert e["failures"]["wrong_objective"] == 2 and e["tool_calls_per_sample"] == 1.0
    rows = log.load()
    assert all(r["exec_statuses"] == ["ok"] and r["stop_reason"] == "eos" for r in rows.values())
    assert "```output\nOBJECTIVE: 1160.0" in rows[(problems[0].id, 0)]["completion"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--random-tiny", "--suite", "nosuch", "--preset", "greedy", "--out", "X"], "--suite nosuch"),
        (
            [
                "--random-tiny",
                "--suite",
                "storm",
                "--preset",
                "greedy",
                "--out",
                "X",
                "--process-index",
                "2",
                "--process-count",
                "2",
            ],
            "--process-index 2",
        ),  # fmt: skip
        (["--random-tiny", "--suite", "storm", "--preset", "greedy", "--out", "X", "--n", "0"], "--n 0"),
        (["compare", "/nonexistent/a", "/nonexistent/b"], "/nonexistent/a/summary.json"),
    ],
)
def test_eval_usage_errors(args, needle, tmp_path, capsys):
    args = [str(tmp_path / "X") if a == "X" else a for a in args]
    assert cli.main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("storm-jax eval") and needle in err[0]


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as e:  # argparse prints the help and exits 0
        cli.main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: storm-jax eval") and "--preset" in out and "(default: " in out
