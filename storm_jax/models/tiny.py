"""The tiny random Qwen3 of every `--random-tiny` flag (generate, serve, eval): smoke tests without weights."""

from __future__ import annotations

from storm_jax.models.qwen import ModelConfig, Params

#: The real
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
