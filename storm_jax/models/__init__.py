"""Pure-functional Qwen2/Qwen3 models and Hugging Face checkpoint I/O."""

from storm_jax.models.qwen import (
    KVCache,
    ModelConfig,
    abstract_params,
    forward,
    init_cache,
    init_params,
    param_logical_axes,
    unstack_layers,
)

__all__ = [
    "KVCache",
    "ModelConfig",
    "abstract_params",
    "forward",
    "init_cache",
    "init_params",
    "param_logical_axes",
    "unstack_layers",
]
