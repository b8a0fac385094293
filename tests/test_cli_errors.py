"""User errors of every command: ONE line on stderr naming the flag / file / config key, exit 2, nothing built.

Most cases run the dispatcher in-process (fast); two run the real console script in a subprocess to check
that no traceback or library noise reaches the terminal.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storm_jax import cli
from storm_jax.models.safetensors_io import save_file

REPO = Path(__file__).resolve().parents[1]
TINY_HF_CONFIG = {
    "model_type": "qwen3", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 4096, "tie_word_embeddings": True,
}  # fmt: skip


def _hf_dir(root: Path, name: str, corrupt: str) -> str:
    """An HF directory whose model.safetensors is truncated (half the bytes) or has a garbage header."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    f = d / "model.safetensors"
    save_file({"model.embed_tokens.weight": np.ones((256, 64), np.float32)}, str(f))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if corrupt == "truncated" else data[:8] + b"{not json" + data[17:])
    return str(d)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    out = {
        "truncated": _hf_dir(root, "truncated_hf", "truncated"),
        "garbage": _hf_dir(root, "garbage_hf", "garbage"),
        "missing": str(root / "does_not_exist"),
        "bad_jsonl": str(root / "bad.jsonl"),
        "root": str(root),
    }
    Path(out["bad_jsonl"]).write_text('{"messages": [}\n')
    # A run directory with a saved config and one checkpoint step (3), as training leaves it.
    from storm_jax.config import CONFIGS_DIR, load_config, save_config

    run = root / "run"
    save_config(load_config(f"{CONFIGS_DIR / 'tiny_cpu.py'}:toy", [f"workdir={run}"]), run)
    (run / "checkpoints" / "3").mkdir(parents=True)
    out["run"] = str(run)
    return out


def _run(argv, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


def _assert_one_line(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# (argv with {placeholders} from `files`, substrings the one line must contain)
CASES = {
    "generate-missing-checkpoint": (
        ["generate", "--checkpoint", "{missing}", "--prompt", "hi"],
        ["--checkpoint", "{missing}", "no such directory"],
    ),
    "generate-truncated-safetensors": (
        ["generate", "--checkpoint", "{truncated}", "--prompt", "hi"],
        ["--checkpoint", "model.safetensors", "truncated"],
    ),
    "generate-garbage-header": (
        ["generate", "--checkpoint", "{garbage}", "--prompt", "hi"],
        ["--checkpoint", "model.safetensors", "corrupt safetensors header"],
    ),
    "convert-truncated-safetensors": (
        ["convert", "--from-hf", "{truncated}", "--to-params", "{root}/p"],
        ["--from-hf", "model.safetensors", "truncated"],
    ),
    "convert-missing-params": (
        ["convert", "--from-params", "{missing}", "--to-hf", "{root}/hf"],
        ["--from-params", "{missing}", "no such directory"],
    ),
    "convert-not-a-params-checkpoint": (
        ["convert", "--from-params", "{truncated}", "--to-hf", "{root}/hf"],
        ["--from-params", "not an Orbax params checkpoint"],
    ),
    "export-missing-workdir": (
        ["export", "--workdir", "{missing}", "--out", "{root}/hf"],
        ["--workdir", "{missing}", "no such directory"],
    ),
    "export-absent-step": (
        ["export", "--workdir", "{run}", "--out", "{root}/hf", "--step", "7"],
        ["--step 7", "steps: 3"],
    ),
    "generate-top-p": (["generate", "--random-tiny", "--prompt", "hi", "--top-p", "2"], ["--top-p 2.0"]),
    "generate-temperature": (
        ["generate", "--random-tiny", "--prompt", "hi", "--temperature", "-1"],
        ["--temperature -1.0", ">= 0.0"],
    ),
    "generate-n": (["generate", "--random-tiny", "--prompt", "hi", "--n", "0"], ["--n 0", ">= 1"]),
    "generate-bad-prompts-file": (
        ["generate", "--random-tiny", "--prompts", "{bad_jsonl}"],
        ["{bad_jsonl}:1", "invalid JSON"],
    ),
    "generate-missing-prompts-file": (
        ["generate", "--random-tiny", "--prompts", "{missing}"],
        ["--prompts", "{missing}"],
    ),
    "generate-no-source": (["generate", "--prompt", "hi"], ["--checkpoint", "--random-tiny", "required"]),
    "sft-data-batch-size": (
        ["sft-data", "{bad_jsonl}", "--seq-len", "64", "--batch-size", "0"],
        ["--batch-size 0", ">= 1"],
    ),
    "sft-data-corrupt": (["sft-data", "{bad_jsonl}", "--seq-len", "64"], ["{bad_jsonl}:1", "invalid JSON"]),
    "sft-data-missing": (["sft-data", "{missing}", "--seq-len", "64"], ["{missing}", "does not exist"]),
    # Train: batch_size 8 divides the test session's 8 fake devices, so the config itself is valid.
    "train-init-from-hf-truncated": (
        ["train", "sft", "--config=configs/tiny_cpu.py", "--config.data.batch_size=8", "--config.init_from_hf={truncated}"],
        ["init_from_hf", "model.safetensors", "truncated"],
    ),
    "train-init-from-params-missing": (
        ["train", "sft", "--config=configs/tiny_cpu.py:toy", "--config.data.batch_size=8",
         "--config.init_from_params={missing}"],
        ["init_from_params", "{missing}", "no such directory"],
    ),
    "train-data-path-missing": (
        ["train", "sft", "--config=configs/tiny_cpu.py", "--config.data.batch_size=8", "--config.data.path={missing}"],
        ["data.path={missing}", "does not exist"],
    ),
    "train-data-path-corrupt": (
        ["train", "sft", "--config=configs/tiny_cpu.py", "--config.data.batch_size=8", "--config.data.path={bad_jsonl}"],
        ["data.path", "{bad_jsonl}:1", "invalid JSON"],
    ),
    "train-problems-missing": (
        ["train", "grpo", "--config=configs/storm_grpo.py:tiny", "--config.grpo.problems_path={missing}"],
        ["grpo.problems_path={missing}", "no such file"],
    ),
    "train-unknown-variant": (
        ["train", "grpo", "--config=storm_grpo.py:nosuch"],
        ["storm_grpo.py:nosuch", "unknown variant 'nosuch'", "variants: tiny"],
    ),
    "train-variant-of-variantless-recipe": (
        ["train", "sft", "--config=configs/storm_sft.py:big"],
        ["unknown variant 'big'", "variants: none"],
    ),
    "train-unknown-recipe-name": (["train", "sft", "--config=storm_nosuch"], ["storm_nosuch", "recipes:"]),
    "train-unknown-argument": (["train", "sft", "--bogus"], ["unknown arguments", "--bogus"]),
    "pipeline-unknown-argument": (["pipeline", "--bogus"], ["unknown arguments", "--bogus"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_exit_2(case, files, capsys, monkeypatch):
    # Nothing may be built: a model init or an HF/params load reaching here fails the test.
    import storm_jax.models.hf as hf
    import storm_jax.models.qwen as qwen
    import storm_jax.train.checkpoint as ckpt

    def built(*a, **k):
        raise AssertionError("a model was built before the usage error was reported")

    for mod, name in ((qwen, "init_params"), (hf, "load_hf_checkpoint"), (ckpt, "restore_params")):
        monkeypatch.setattr(mod, name, built)
    argv, needles = CASES[case]
    rc, err = _run([a.format(**files) for a in argv], capsys)
    _assert_one_line(rc, err, *(n.format(**files) for n in needles))


def _console(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "storm_jax.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "--checkpoint", "{truncated}", "--prompt", "hi"], "truncated"),
        (["train", "sft", "--config=tiny_cpu", "--config.init_from_hf={truncated}"], "init_from_hf"),
    ],
)
def test_console_shows_only_the_line(args, needle, files):
    """The real entry point: no traceback and no library warnings around the one line."""
    p = _console([a.format(**files) for a in args], cwd=files["root"])
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 3, p.stderr
    assert needle in p.stderr and p.stdout == ""
