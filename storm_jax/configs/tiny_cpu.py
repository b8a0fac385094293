"""Default config: a tiny random Qwen3 trained on the bundled tiny SFT trajectories, on CPU, in minutes.

`--config=tiny_cpu:toy` is the same loop on random tokens with a 256-token vocabulary (no tokenizer,
no data files): fast tests of the loop, checkpoints and resume.
"""

from __future__ import annotations

from pathlib import Path

from storm_jax.config import base_config
from storm_jax.configs import model_presets

_RES = Path(__file__).resolve().parents[1] / "resources" / "tiny"

#: `--config=tiny_cpu:<variant>` choices (the loader refuses others).
VARIANTS = {"toy": "random tokens, 256-token vocabulary: no tokenizer, no data files"}


def get_config(arg: str | None = None):
    c = base_config()
    c.recipe = "sft"
    c.workdir = "runs/tiny_cpu"
    model_presets.apply_preset(c, "tiny", dtype="float32", param_dtype="float32", remat="none")
    c.data.source = "jsonl"
    c.data.path = str(_RES / "arith" / "train.sft_traj.jsonl")
    # Held-out loss: the `mixed` family trajectories, never trained on here (arith has no held-out SFT rows).
    c.data.eval_path = str(_RES / "mixed" / "train.sft_traj.jsonl")
    c.data.seq_len = 512
    c.data.batch_size = 2
    c.data.pack = True
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optim.lr = 3e-3  # a random tiny model needs a large lr to learn anything in ~60 steps
    c.optim.warmup_steps = 5
    c.optim.decay = "cosine"
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.train.steps = 60
    c.train.logprob_chunk = 128
    c.train.log_every = 10
    c.train.eval_every = 30
    c.train.eval_batches = 2
    c.checkpoint.save_every = 30
    c.checkpoint.keep = 2
    if arg == "toy":
        c.data.batch_size = 4
        model_presets.apply_preset(c, "tiny-toy-vocab")
        c.workdir = "runs/tiny_toy"
        c.data.source = "synthetic"
        c.data.path = c.data.eval_path = ""
        c.data.seq_len = 64
        c.train.logprob_chunk = 0
    elif arg:
        raise ValueError(f"tiny_cpu.py: unknown variant {arg!r} (toy)")
    return c
