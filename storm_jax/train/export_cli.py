"""`storm-jax export --workdir=RUN --out=DIR [--step=N] [--dtype=bfloat16]`: training checkpoint -> HF directory."""

from __future__ import annotations

import argparse
import sys


def export(workdir: str, out: str, *, step: int | None = None, dtype: str | None = None) -> int:
    """Write the params of a run's checkpoint (latest or `step`) as an HF checkpoint directory; returns the step."""
    from storm_jax.models.hf import save_hf_checkpoint
    from storm_jax.train.sft import load_run_state

    cfg, model_cfg, state, step = load_run_state(workdir, step=step)
    tok = None
    if model_cfg.vocab_size >= 151669:  # the Qwen vocabulary: ship the tokenizer the run trained with
        from storm_jax.tokenizer import load_tokenizer

        tok = load_tokenizer(cfg.data.tokenizer_path or cfg.init_from_hf or None)
    save_hf_checkpoint(model_cfg, state.params, out, dtype=dtype, tokenizer=tok)
    return step


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="storm-jax export", description=__doc__)
    ap.add_argument("--workdir", required=True, help="training run directory (has config.json, checkpoints/)")
    ap.add_argument("--out", required=True, help="output HF checkpoint directory")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--dtype", default=None, help="tensor dtype in the files (default: the params dtype)")
    a = ap.parse_args(argv)
    step = export(a.workdir, a.out, step=a.step, dtype=a.dtype)
    print(f"exported step {step} of {a.workdir} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
