"""The model a serving or evaluation command runs: an HF checkpoint directory, or a tiny random Qwen3."""

from __future__ import annotations

import os
from typing import Any

from storm_jax.models.qwen import ModelConfig, Params
from storm_jax.models.tiny import RANDOM_TINY, random_tiny


def load_model(
    checkpoint: str | None, *, dtype: str = "float32", seed: int = 0
) -> tuple[ModelConfig, Params, Any, str]:
    """(config, params, tokenizer, model name) of a checkpoint directory, or of the random tiny model when
    `checkpoint` is None. Raises storm_jax.models.hf.CheckpointError for an unreadable checkpoint."""
    from storm_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(checkpoint)
    if checkpoint is None:
        cfg, params = random_tiny(dtype, seed)
        return cfg, params, tok, f"storm-jax-random-tiny-{seed}"
    from storm_jax.models.hf import load_hf_checkpoint

    cfg, params = load_hf_checkpoint(checkpoint, "float32")  # fp32 master copy; compute dtype below
    if dtype != cfg.dtype:
        cfg = cfg.replace(dtype=dtype)
    return cfg, params, tok, os.path.basename(os.path.normpath(checkpoint))


__all__ = ["RANDOM_TINY", "load_model", "random_tiny"]
