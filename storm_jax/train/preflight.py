"""Checks of a resolved training config's inputs, run by the CLI before anything is built.

A config can name files that do not exist or are corrupt (init_from_hf, init_from_params, data.path,
grpo.problems_path, ...). Training would find out only after building the mesh, the model and the optimizer,
and report it through a long traceback; these checks read only directory listings, JSON rows and
safetensors headers, and raise one `UsageError` naming the config key and the file.
"""

from __future__ import annotations

import os

import ml_collections

from storm_jax.cli_util import UsageError, check_hf_dir, check_params_dir


def _check_sft_rows(key: str, path: str, on_bad_row: str) -> None:
    from storm_jax.data.sft import read_rows

    try:
        rows, stats = read_rows(path, on_bad_row=on_bad_row)
    except (ValueError, OSError) as e:
        raise UsageError(f"{key}={path}: {e}") from None
    if not rows:
        raise UsageError(f"{key}={path}: no usable SFT rows ({stats.rows_read} read, {stats.bad_rows} bad)")


def _check_problems(key: str, path: str) -> None:
    from storm_jax.data.benchmarks import read_rows

    if not os.path.isfile(path):
        raise UsageError(f"{key}={path}: no such file")
    try:
        rows = read_rows(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"{key}: {e}") from None
    if not rows:
        raise UsageError(f"{key}={path}: no problems")


def check_inputs(cfg: ml_collections.ConfigDict) -> None:
    """Raise UsageError for the first input file of `cfg` that training could not read."""
    if cfg.init_from_hf:
        check_hf_dir(cfg.init_from_hf, "init_from_hf")
    if cfg.init_from_params:
        check_params_dir(cfg.init_from_params, "init_from_params")
    if cfg.data.tokenizer_path and not os.path.isdir(cfg.data.tokenizer_path):
        raise UsageError(f"data.tokenizer_path={cfg.data.tokenizer_path}: no such directory")
    if cfg.recipe in ("sft", "pipeline") and cfg.data.source == "jsonl":
        _check_sft_rows("data.path", cfg.data.path, cfg.data.on_bad_row)
        if cfg.data.eval_path and cfg.train.eval_every:  # training reads it only then
            _check_sft_rows("data.eval_path", cfg.data.eval_path, cfg.data.on_bad_row)
    if cfg.recipe in ("grpo", "pipeline"):
        _check_problems("grpo.problems_path", cfg.grpo.problems_path)
        if cfg.grpo.eval_path:
            _check_problems("grpo.eval_path", cfg.grpo.eval_path)
