"""Parameter layout as data: one `ArraySpec` per parameter leaf, and everything else derived from it.

`param_specs(cfg)` is the only table of the model's parameters: each leaf names its shape, dtype, logical axes
and initializer. Init, abstract shapes (AOT compilation, checkpoint restore targets), logical axes and
shardings are all read off that one tree, so adding or reshaping a weight is a one-line change that every
consumer sees. The KV cache uses the same `ArraySpec` (see `storm_jax.models.cache`).

A spec tree has the structure of the arrays it describes; `ArraySpec` is a pytree leaf, so `jax.tree.map`
over a spec tree visits one spec per array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from storm_jax.parallel.mesh import MeshRules

if TYPE_CHECKING:  # runtime import would be circular: qwen.py builds on this module
    from storm_jax.models.qwen import ModelConfig

Params = dict[str, Any]

#: Initializer(key, shape, dtype, std) -> array. Keyed by name so that a spec stays plain, printable data.
Initializer = Callable[[jax.Array, tuple[int, ...], Any, float], jax.Array]


def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any, std: float) -> jax.Array:
    # Sampled in fp32 and then cast, so a bf16 model gets the rounded fp32 draw (seeded runs depend on it).
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _ones(key: jax.Array, shape: tuple[int, ...], dtype: Any, std: float) -> jax.Array:
    return jnp.ones(shape, dtype)


def _zeros(key: jax.Array, shape: tuple[int, ...], dtype: Any, std: float) -> jax.Array:
    return jnp.zeros(shape, dtype)


INITIALIZERS: dict[str, Initializer] = {"normal": _normal, "ones": _ones, "zeros": _zeros}


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape, dtype, logical axis names and initializer name of one array (a pytree leaf)."""

    shape: tuple[int, ...]
    dtype: Any
    logical_axes: tuple[str | None, ...]
    init: str = "zeros"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "logical_axes", tuple(self.logical_axes))
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        if len(self.shape) != len(self.logical_axes):
            raise ValueError(f"shape {self.shape} and logical axes {self.logical_axes} differ in rank")
        if self.init not in INITIALIZERS:
            raise ValueError(f"initializer {self.init!r} is not one of {sorted(INITIALIZERS)}")

    @property
    def abstract(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, self.dtype)

    def initialize(self, key: jax.Array, std: float = 0.02) -> jax.Array:
        return INITIALIZERS[self.init](key, self.shape, self.dtype, std)


def is_spec(x: Any) -> bool:
    return isinstance(x, ArraySpec)


# ----------------------------------------------------------------------------------------------------------------
# Derivations over any spec tree
# ----------------------------------------------------------------------------------------------------------------


def spec_abstract(specs: Any) -> Any:
    """ShapeDtypeStructs, same structure as `specs`."""
    return jax.tree.map(lambda s: s.abstract, specs, is_leaf=is_spec)


def spec_logical_axes(specs: Any) -> Any:
    """Tuples of logical axis names, same structure as `specs` (each tuple is one leaf)."""
    return jax.tree.map(lambda s: s.logical_axes, specs, is_leaf=is_spec)


def spec_shapes(specs: Any) -> Any:
    """Shape tuples, same structure as `specs` (each tuple is one leaf)."""
    return jax.tree.map(lambda s: s.shape, specs, is_leaf=is_spec)


def spec_shardings(specs: Any, mesh_rules: MeshRules) -> Any:
    """NamedShardings from the logical axes and shapes (a mesh axis that does not divide is dropped)."""
    return jax.tree.map(lambda s: mesh_rules.sharding(s.logical_axes, s.shape), specs, is_leaf=is_spec)


def spec_init(specs: Any, key: jax.Array, std: float = 0.02) -> Any:
    """Arrays from each spec's initializer; one key per leaf, split in flattening order (sorted dict keys).

    Every leaf takes a key, including those whose initializer ignores it, so adding a zeros/ones leaf shifts
    the keys of the leaves after it, as the pre-spec init did; seeded params stay the same.
    """
    flat, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(key, len(flat))
    return jax.tree.unflatten(treedef, [s.initialize(k, std) for s, k in zip(flat, keys)])


# ----------------------------------------------------------------------------------------------------------------
# The Qwen parameter table
# ----------------------------------------------------------------------------------------------------------------


def param_specs(cfg: ModelConfig) -> Params:
    """One ArraySpec per parameter: the single source of the params layout.

    Layer weights are stacked on a leading `layers` axis (the forward scans over it). Matrices are
    normal(std)-initialized, norms ones, biases zeros.
    """
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, K, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dt = cfg.weight_dtype

    def weight(shape, axes):
        return ArraySpec(shape, dt, axes, "normal")

    def norm(shape, axes):
        return ArraySpec(shape, dt, axes, "ones")

    def bias(shape, axes):
        return ArraySpec(shape, dt, axes, "zeros")

    layers = {
        "attn_norm": norm((L, D), ("layers", "norm")),
        "q": weight((L, D, H, hd), ("layers", "embed", "heads", "head_dim")),
        "k": weight((L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim")),
        "v": weight((L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim")),
        "o": weight((L, H, hd, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": norm((L, D), ("layers", "norm")),
        "gate": weight((L, D, F), ("layers", "embed", "mlp")),
        "up": weight((L, D, F), ("layers", "embed", "mlp")),
        "down": weight((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.qkv_bias:
        layers["q_bias"] = bias((L, H, hd), ("layers", "heads", "head_dim"))
        layers["k_bias"] = bias((L, K, hd), ("layers", "kv_heads", "head_dim"))
        layers["v_bias"] = bias((L, K, hd), ("layers", "kv_heads", "head_dim"))
    if cfg.qk_norm:
        layers["q_norm"] = norm((L, hd), ("layers", "head_dim"))
        layers["k_norm"] = norm((L, hd), ("layers", "head_dim"))
    specs: Params = {
        "embed": weight((V, D), ("vocab", "embed")),
        "layers": layers,
        "final_norm": norm((D,), ("norm",)),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = weight((D, V), ("embed", "vocab"))
    return specs


def param_shapes(cfg: ModelConfig) -> Params:
    """Shapes of every parameter (a pytree of tuples)."""
    return spec_shapes(param_specs(cfg))


def param_logical_axes(cfg: ModelConfig) -> Params:
    """Logical axis names of every parameter, same structure as the params."""
    return spec_logical_axes(param_specs(cfg))


def abstract_params(cfg: ModelConfig) -> Params:
    """ShapeDtypeStructs of the params (for AOT compilation and checkpoint restore targets)."""
    return spec_abstract(param_specs(cfg))


def param_shardings(cfg: ModelConfig, mesh_rules: MeshRules) -> Params:
    """NamedShardings of the params under `mesh_rules`."""
    return spec_shardings(param_specs(cfg), mesh_rules)


def init_params(cfg: ModelConfig, key: jax.Array, std: float = 0.02) -> Params:
    """Random init: normal(std) for matrices, ones for norms, zeros for biases."""
    return spec_init(param_specs(cfg), key, std)


def num_params(cfg: ModelConfig) -> int:
    """Parameter count from the config alone (no arrays)."""
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(param_specs(cfg), is_leaf=is_spec))
