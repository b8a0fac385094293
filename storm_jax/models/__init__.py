"""Pure-functional Qwen2/Qwen3 models and Hugging Face checkpoint I/O."""

from storm_jax.models.qwen import (
    ArraySpec,
    KVCache,
    ModelConfig,
    abstract_cache,
    abstract_params,
    cache_logical_axes,
    cache_shardings,
    cache_specs,
    forward,
    init_cache,
    init_params,
    param_logical_axes,
    param_shardings,
    param_specs,
    unstack_layers,
)

__all__ = [
    "ArraySpec",
    "KVCache",
    "ModelConfig",
    "abstract_cache",
    "abstract_params",
    "cache_logical_axes",
    "cache_shardings",
    "cache_specs",
    "forward",
    "init_cache",
    "init_params",
    "param_logical_axes",
    "param_shardings",
    "param_specs",
    "unstack_layers",
]
