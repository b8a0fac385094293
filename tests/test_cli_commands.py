"""The CLI as a new user meets it: --help everywhere, recipes by name from any directory, generate's seeds and
prompt rows, tokenizers and file modes of written HF directories, sft-data's account of lost data."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storm_jax import cli

REPO = Path(__file__).resolve().parents[1]
ARITH_TRAJ = REPO / "storm_jax" / "resources" / "tiny" / "arith" / "train.sft_traj.jsonl"


# ----------------------------------------------------------------------------------------------------------
# --help


@pytest.mark.parametrize(
    "argv",
    [["train", "sft"], ["train", "grpo"], ["generate"], ["convert"], ["score"], ["synth"], ["sft-data"],
     ["export"], ["pipeline"]],
    ids=lambda a: "-".join(a),
)  # fmt: skip
def test_every_command_has_help(argv, capsys):
    assert cli.main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: storm-jax " + " ".join(argv))
    if argv[0] in ("generate", "score", "synth", "sft-data", "export"):
        assert "(default: " in out  # e.g. generate --n: (default: 1)
    if argv[0] == "train":
        assert "default: tiny_cpu" in out and "storm_grpo:tiny" in out


def test_help_shows_defaults_and_protocol_meanings(capsys, monkeypatch):
    from storm_jax.rewards import PROTOCOLS

    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal width

    assert cli.main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "samples per prompt (default: 1)" in out and "(default: 512)" in out
    assert cli.main(["score", "--help"]) == 0
    out = capsys.readouterr().out
    assert "execution pool processes (default: 2)" in out
    protocols = out.split("scoring protocols (--protocol):", 1)[1]
    for name in PROTOCOLS:
        assert f"\n  {name} " in protocols
    assert "|a − t| < 0.01" in protocols  # abs001's rule, from storm_jax.rewards
    assert "(SIRL, OptiMind)" in protocols  # strict's


# ----------------------------------------------------------------------------------------------------------
# Recipes by name


def _console(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "storm_jax.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("spec", ["tiny_cpu:toy", "configs/tiny_cpu.py:toy"])
def test_recipe_resolves_from_any_directory(spec, tmp_path):
    p = _console(["train", "sft", f"--config={spec}", "--print_config"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (
        "recipe: sft" in p.stdout and "vocab_size: 256" in p.stdout and "workdir: runs/tiny_toy" in p.stdout
    )


def test_recipes_are_package_modules(tmp_path, monkeypatch):
    import setuptools

    from storm_jax.config import CONFIGS_DIR, load_config, recipe_names

    monkeypatch.chdir(tmp_path)
    assert recipe_names() == ["calm", "storm_grpo", "storm_sft", "storm_tiny", "tiny_cpu"]
    cfg = load_config("storm_sft", ["data.path=x.jsonl"], num_devices=8)
    assert cfg.data.seq_len == 16384 and cfg.model.hidden_size == 2560
    grpo = load_config("storm_grpo.py:tiny", num_devices=1)
    assert Path(grpo.grpo.problems_path).is_file()  # bundled data resolves from inside the package
    # A non-editable install ships what setuptools finds: the recipes are a subpackage.
    assert "storm_jax.configs" in setuptools.find_packages(str(REPO), include=["storm_jax*"])
    assert CONFIGS_DIR == REPO / "storm_jax" / "configs"


# ----------------------------------------------------------------------------------------------------------
# generate: seeds and prompt rows


def test_request_seeds_fold_the_index_into_the_run_seed():
    import jax

    from storm_jax.sampling.generate_cli import request_seeds

    s0, s1 = request_seeds(0, 3), request_seeds(1, 3)
    # The old `seed + i` gave s1[0] == s0[1]; folded keys share nothing across (seed, i) pairs.
    assert s1[0] != s0[1] and len(set(s0 + s1)) == 6
    assert s0 == request_seeds(0, 3) and request_seeds(0, 2) == s0[:2]
    want = int(np.asarray(jax.random.fold_in(jax.random.PRNGKey(1), 2))[1])
    assert s1[2] == want


def test_generate_accepts_benchmark_rows_and_seeds_each_request(tmp_path, monkeypatch, capsys):
    import storm_jax.models.qwen as qwen
    import storm_jax.sampling.rollout as rollout_mod
    from storm_jax.sampling.generate_cli import main, request_seeds
    from storm_jax.tokenizer import load_tokenizer

    rows = [
        {"id": "nl4opt-1", "benchmark": "nl4opt", "question": "Maximize 3x subject to x <= 4.", "answer": 12},
        {"prompt": "What is 2+2?"},
        {"id": "m", "messages": [{"role": "user", "content": "Minimize y."}]},
    ]
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    monkeypatch.setattr(qwen, "init_params", lambda cfg, key: {})  # no model needed to see the requests
    monkeypatch.setattr(
        rollout_mod, "rollout", lambda params, cfg, tok, reqs, *a, **k: seen.extend(reqs) or []
    )
    assert (
        main(["--random-tiny", "--prompts", str(f), "--seed", "5", "--out", str(tmp_path / "o.jsonl")]) == 0
    )
    assert [r.meta["id"] for r in seen] == ["nl4opt-1", "2", "m"]
    assert [r.seed for r in seen] == request_seeds(5, 3)
    tok = load_tokenizer()
    assert "Maximize 3x subject to x <= 4." in tok.decode(seen[0].prompt_ids)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in tok.decode(seen[1].prompt_ids)


# ----------------------------------------------------------------------------------------------------------
# HF directories: tokenizer and modes


def _assert_world_readable(d: Path) -> None:
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir() if p.is_file()}
    assert modes and all(m == 0o644 for m in modes.values()), modes


def _assert_same_tokenizer(d: Path) -> None:
    from transformers import AutoTokenizer

    from storm_jax.tokenizer import load_tokenizer

    ours, theirs = load_tokenizer(), AutoTokenizer.from_pretrained(str(d))
    assert len(theirs) == len(ours) == 151669
    for text in ("hello world", "<think>\nx = 3 ≤ 4</think> \\boxed{25\\,000}"):
        assert theirs.encode(text) == ours.encode(text) and ours.encode(text)
    assert theirs.encode("hello world") == [14990, 1879]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_convert_round_trip_writes_the_tokenizer(tmp_path, umask022, capsys):
    import jax

    from storm_jax.models.convert_cli import main
    from storm_jax.models.hf import save_hf_checkpoint
    from storm_jax.models.qwen import ModelConfig, init_params

    cfg = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16)  # fmt: skip
    src = tmp_path / "src"
    save_hf_checkpoint(cfg, init_params(cfg, jax.random.key(0)), str(src))  # weights only, no tokenizer
    assert main(["--from-hf", str(src), "--to-params", str(tmp_path / "p")]) == 0
    assert main(["--from-params", str(tmp_path / "p"), "--to-hf", str(tmp_path / "hf")]) == 0
    out = tmp_path / "hf"
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    _assert_same_tokenizer(out)
    _assert_world_readable(out)


def test_export_writes_a_world_readable_tokenizer(tmp_path, umask022, monkeypatch):
    import types

    import jax

    import storm_jax.train.sft as sft
    from storm_jax.config import load_config
    from storm_jax.models.qwen import ModelConfig, init_params
    from storm_jax.train.export_cli import export

    cfg = load_config("tiny_cpu", num_devices=None)
    model_cfg = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=1,
                            num_heads=2, num_kv_heads=1, head_dim=16)  # fmt: skip
    state = types.SimpleNamespace(params=init_params(model_cfg, jax.random.key(0)))
    # The run's restore is the trainer's business (tests of export with a real run: test_train_export).
    monkeypatch.setattr(sft, "load_run_state", lambda wd, step=None: (cfg, model_cfg, state, 4))
    assert export(str(tmp_path / "run"), str(tmp_path / "hf")) == 4
    _assert_same_tokenizer(tmp_path / "hf")
    _assert_world_readable(tmp_path / "hf")  # tokenizer_config.json was 0600 (written through mkstemp)


# ----------------------------------------------------------------------------------------------------------
# sft-data: what is lost on the way to the batches


def _first_rows(tmp_path, n: int) -> str:
    lines = ARITH_TRAJ.read_text().splitlines()[:n]
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


def test_sft_data_says_what_it_truncates_and_drops(tmp_path, capsys):
    from storm_jax.data.pipeline import main
    from storm_jax.data.sft import read_rows, tokenize_row
    from storm_jax.tokenizer import load_tokenizer

    path = _first_rows(tmp_path, 12)
    tok = load_tokenizer()
    lengths = [len(tokenize_row(r, tok, enable_thinking=True)) for r in read_rows(path)[0]]
    seq_len = int(np.median(lengths))
    long = sum(n > seq_len + 1 for n in lengths)
    assert 0 < long < 12
    assert main([path, "--seq-len", str(seq_len), "--batch-size", "5"]) == 0
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    assert report["truncated"] == long
    assert (
        f"warning: {long} of 12 documents are longer than --seq-len {seq_len} and were truncated"
    ) in cap.err
    lost = report["loss_tokens"] - report["loss_tokens_in_batches"]
    assert lost == report["loss_tokens_dropped_by_batching"] > 0  # the last partial batch of 5 rows
    assert f"warning: {lost} of {report['loss_tokens']} loss tokens" in cap.err
    rows = report["dropped_rows"]
    assert (
        f"the last {rows} packed row{'s' if rows != 1 else ''} fill no whole batch of --batch-size 5"
        in cap.err
    )


def test_sft_data_fails_when_nothing_is_trainable(tmp_path, capsys):
    from storm_jax.data.pipeline import main

    path = _first_rows(tmp_path, 3)
    assert main([path, "--seq-len", "512", "--batch-size", "8", "--no-pack"]) == 1
    cap = capsys.readouterr()
    assert json.loads(cap.out)["batches"] == 0
    assert "nothing trainable: 3 documents make 0 full batches of --batch-size 8" in cap.err
