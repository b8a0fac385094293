"""StepORLM policy update: weighted DPO (W-DPO) on solver- and GenPRM-labelled preference pairs.

StepORLM (arXiv 2509.22558) publishes the objective - per-pair weight 1 when the solver separates the two
trajectories, |delta process score| when only the GenPRM does - and an 8B policy; it does not publish the
DPO hyper-parameters. Every value marked GUESS is ours. Formulas, batch layout, length rule: docs/dpo.md.

Run:
    storm-jax train dpo --config=steporlm_dpo --config.init_from_hf=/path/policy_round_k \
        --config.data.path=pairs_round_k.jsonl --config.workdir=gs://.../steporlm_dpo_round_k

`:tiny` is the same recipe on a tiny random Qwen3 (CPU, minutes). As a library function (one call per
self-evolving round): storm_jax.train.dpo.train_dpo(cfg, rows=..., params=...).
"""

from __future__ import annotations

from storm_jax.config import base_config, dpo_defaults
from storm_jax.configs import model_presets

VARIANTS = {"tiny": "the same recipe on a tiny random Qwen3 (CPU, minutes)"}


def get_config(arg: str | None = None):
    c = base_config()
    c.recipe = "dpo"
    c.workdir = "runs/steporlm_dpo"
    # The paper's policy has 8B parameters; Qwen3-8B as its base is GUESS.
    model_presets.apply_preset(c, "qwen3-8b", dtype="bfloat16", param_dtype="float32", remat="full")
    c.init_from_hf = ""  # the policy of the previous round (the warm-up SFT model in round 1)
    c.data.source = "jsonl"
    c.data.path = ""  # preference rows (storm_jax.data.preference): TRL-style or token rows with weights
    c.data.seq_len = 8192  # GUESS: one OR trajectory with code and solver output; longer pairs are dropped
    c.data.batch_size = 32  # GUESS: preference PAIRS per optimizer step (64 sequences)
    c.data.pack = False  # pairs are never packed: each sequence is alone in its row
    c.data.overlong = "drop"  # a cut trajectory may hide what the solver / GenPRM judged (docs/dpo.md)
    c.data.enable_thinking = True
    c.data.num_epochs = 2  # GUESS: epochs over each round's pairs
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optim.lr = 5e-7  # GUESS: the usual DPO range for 7-8B policies
    c.optim.warmup_steps = 10  # GUESS
    c.optim.decay = "cosine"
    c.optim.min_lr_ratio = 0.1  # GUESS
    c.optim.weight_decay = 0.0  # GUESS
    c.optim.clip_norm = 1.0  # GUESS
    c.train.steps = 200  # GUESS: replaced by epochs x pairs / batch_size once the round's data is known
    c.train.grad_accum = 8  # GUESS: bounds activation memory; must divide data.batch_size (pairs)
    c.train.logprob_chunk = 1024  # bounds the [2P, T, 151936] logits
    c.train.log_every = 5
    c.train.eval_every = 50
    c.checkpoint.save_every = 50
    c.checkpoint.keep = 2
    c.dpo = dpo_defaults()
    c.dpo.beta = 0.1  # GUESS: the common DPO default
    c.dpo.label_smoothing = 0.0  # GUESS: the paper's loss has none
    c.dpo.normalize = "pairs"  # the paper's loss is an expectation over pairs of w * l
    c.dpo.reference = "precomputed"  # reference = the round's start policy, frozen
    c.dpo.ref_batch_pairs = 8
    if arg == "tiny":
        tiny(c)
    elif arg:
        raise ValueError(f"steporlm_dpo.py: unknown variant {arg!r} (tiny)")
    return c


def tiny(c) -> None:
    """The same recipe at CPU scale: tiny random Qwen3 over the real vocabulary, short sequences."""
    model_presets.apply_preset(c, "tiny", dtype="float32", param_dtype="float32", remat="none")
    c.workdir = "runs/steporlm_dpo_tiny"
    c.data.seq_len = 512
    c.data.batch_size = 4
    c.data.num_epochs = 0
    c.optim.lr = 1e-3  # a random tiny model needs a large lr to move in a few dozen steps
    c.optim.warmup_steps = 0
    c.train.steps = 40
    c.train.grad_accum = 1
    c.train.logprob_chunk = 128
    c.train.eval_every = 20
    c.checkpoint.save_every = 20
