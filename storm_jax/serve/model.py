"""The model a serving or evaluation command runs: an HF checkpoint directory, or a tiny random Qwen3."""

from __future__ import annotations

import os
from typing import Any

from storm_jax.models.qwen import ModelConfig, Params

#: The tiny random model of `--random-tiny` (the same shapes as `storm-jax generate --random-tiny`): the real
#: Qwen vocabulary, so the real tokenizer and chat template apply, and 2 layers of width 64.
RANDOM_TINY = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
)


def random_tiny(dtype: str = "float32", seed: int = 0) -> tuple[ModelConfig, Params]:
    """(config, params) of the tiny random model, weights from `seed`."""
    import jax

    from storm_jax.models.qwen import init_params

    cfg = ModelConfig(**RANDOM_TINY, dtype=dtype)
    return cfg, init_params(cfg, jax.random.key(seed))


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
