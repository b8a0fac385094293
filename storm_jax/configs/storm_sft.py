"""STORM stage 1: SFT of Qwen3-4B-Thinking-2507 on CALM trajectories (tool-integrated reasoning).

Hyper-parameters are not published for STORM's SFT; every value below marked GUESS is ours.
Run: storm-jax train sft --config=storm_sft --config.init_from_hf=/path/Qwen3-4B-Thinking-2507 \
       --config.data.path=calm_sft.jsonl --config.workdir=gs://.../storm_sft
"""

from __future__ import annotations

from storm_jax.config import base_config
from storm_jax.configs import model_presets

#: `--config=storm_sft:<variant>` choices (the loader refuses others).
VARIANTS: dict[str, str] = {}


def get_config(arg: str | None = None):
    c = base_config()
    c.recipe = "sft"
    c.workdir = "runs/storm_sft"
    model_presets.apply_preset(
        c, "qwen3-4b-thinking-2507", dtype="bfloat16", param_dtype="float32", remat="full"
    )
    c.init_from_hf = ""  # set to the Qwen3-4B-Thinking-2507 checkpoint directory
    c.data.source = "jsonl"
    c.data.path = ""  # CALM SFT JSONL (storm_jax.calm output)
    c.data.seq_len = 16384  # GUESS: long thinking trajectories with tool outputs
    c.data.batch_size = 64  # GUESS (sequences per step, packed)
    c.data.pack = True
    c.data.enable_thinking = True
    c.data.num_epochs = 0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optim.lr = 1e-5  # GUESS
    c.optim.warmup_steps = 20  # GUESS
    c.optim.decay = "cosine"
    c.optim.min_lr_ratio = 0.1  # GUESS
    c.optim.weight_decay = 0.01  # GUESS
    c.optim.b2 = 0.95
    c.optim.clip_norm = 1.0
    c.train.steps = 400  # GUESS (~3 epochs of a few thousand trajectories)
    c.train.grad_accum = 4
    c.train.loss_norm = "token"
    c.train.logprob_chunk = 1024  # bounds the [B, T, 151936] logits
    c.train.log_every = 10
    c.train.eval_every = 100
    c.checkpoint.save_every = 100
    c.checkpoint.keep = 3
    return c
