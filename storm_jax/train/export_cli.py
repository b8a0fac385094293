"""`storm-jax export --workdir=RUN --out=DIR [--step=N] [--dtype=bfloat16]`: training checkpoint -> HF directory.

The directory carries the tokenizer the run trained with (for a model over the Qwen vocabulary) and is
world-readable like any file written with the default umask.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from storm_jax.cli_util import ArgumentParser, UsageError, fail, make_world_readable, tokenizer_for

PROG = "storm-jax export"


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps saved under `<workdir>/checkpoints` (Orbax names each step's directory by its number)."""
    d = Path(workdir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def check_run(workdir: str, step: int | None) -> None:
    """Refuse, in one line, a workdir that is not a run with a checkpoint (at `step`, when given)."""
    from storm_jax.config import ConfigError, config_from_json

    if not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir}: no such directory")
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(cfg_path):
        raise UsageError(f"--workdir {workdir}: no config.json (not a training run directory)")
    try:
        config_from_json(cfg_path)
    except (ConfigError, ValueError) as e:
        raise UsageError(f"--workdir: {e}") from None
    steps = checkpoint_steps(workdir)
    if not steps:
        raise UsageError(f"--workdir {workdir}: no checkpoint under checkpoints/")
    if step is not None and step not in steps:
        raise UsageError(
            f"--step {step}: no such checkpoint in {workdir} (steps: {', '.join(map(str, steps))})"
        )


def export(workdir: str, out: str, *, step: int | None = None, dtype: str | None = None) -> int:
    """Write the params of a run's checkpoint (latest or `step`) as an HF checkpoint directory; returns the step."""
    from storm_jax.models.hf import save_hf_checkpoint
    from storm_jax.train.sft import load_run_state

    cfg, model_cfg, state, step = load_run_state(workdir, step=step)
    # The tokenizer the run trained with (data.tokenizer_path, else the init checkpoint's, else Qwen3's).
    tok = tokenizer_for(model_cfg.vocab_size, [cfg.data.tokenizer_path, cfg.init_from_hf])
    save_hf_checkpoint(model_cfg, state.params, out, dtype=dtype, tokenizer=tok)
    make_world_readable(out)
    return step


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog=PROG, description=__doc__)
    ap.add_argument("--workdir", required=True, help="training run directory (has config.json, checkpoints/)")
    ap.add_argument("--out", required=True, help="output HF checkpoint directory")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="tensor dtype in the files (default: the params dtype)",
    )
    return ap


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax export`."""
    a = build_parser().parse_args(argv)
    try:
        check_run(a.workdir, a.step)
    except UsageError as e:
        return fail(PROG, str(e))
    step = export(a.workdir, a.out, step=a.step, dtype=a.dtype)
    print(f"exported step {step} of {a.workdir} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
