"""The KV cache: its pytree type and its layout as data (`cache_specs`), from which init and shardings derive."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from storm_jax.models.spec import ArraySpec, spec_abstract, spec_logical_axes, spec_shardings
from storm_jax.parallel.mesh import MeshRules

if TYPE_CHECKING:  # runtime import would be circular: qwen.py builds on this module
    from storm_jax.models.qwen import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Preallocated per-layer keys/values plus how many positions of each row are filled.

    k, v: [layers, batch, kv_heads, max_len, head_dim]; lengths: [batch] int32. A forward call with T new tokens
    writes them at positions lengths[b] .. lengths[b]+T-1 and advances lengths by the number of valid tokens.
    Heads come before positions so that decode attention reads each (row, head) as one contiguous [len, hd]
    block (with positions first, XLA's CPU batched dot transposes the whole cache on every step).
    k and v may also be tuples of per-layer [batch, kv_heads, max_len, head_dim] arrays (with per-layer params,
    see `unstack_layers`): a decode loop then reads each layer's cache without slicing it out of the stack.
    With `keys_transposed` (per-layer tuples only) each layer's keys are [batch, kv_heads, head_dim, max_len]:
    the sampler's decode windows use it because one query's scores then reduce over head_dim as whole vectors
    of positions, not as short horizontal sums (~15-30% less attention time on XLA:CPU); values keep positions
    before head_dim, which is already that shape for the probabilities x values product.

    The fields may also hold `ArraySpec`s, ShapeDtypeStructs or shardings instead of arrays (see `cache_specs`).
    """

    k: Any
    v: Any
    lengths: Any
    keys_transposed: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2] if isinstance(self.v, (list, tuple)) else self.v.shape[3]


#: Logical axes of the stacked k and v arrays.
CACHE_LOGICAL_AXES: tuple[str, ...] = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
#: Logical axes of the per-row fill lengths.
CACHE_LENGTHS_LOGICAL_AXES: tuple[str, ...] = ("batch",)


def cache_shape(cfg: ModelConfig, batch: int, max_len: int) -> tuple[int, ...]:
    """Shape of the k (and v) arrays of a KVCache: [layers, batch, kv_heads, max_len, head_dim]."""
    return (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)


def cache_specs(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """A KVCache of ArraySpecs (stacked layout): shapes, dtypes and logical axes of every cache array.

    `dtype` defaults to the compute dtype (keys and values are stored as the attention reads them).
    """
    kv = ArraySpec(
        cache_shape(cfg, batch, max_len),
        cfg.compute_dtype if dtype is None else dtype,
        CACHE_LOGICAL_AXES,
        "zeros",
    )
    return KVCache(kv, kv, ArraySpec((batch,), jnp.int32, CACHE_LENGTHS_LOGICAL_AXES, "zeros"))


def abstract_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """A KVCache of ShapeDtypeStructs (for AOT compilation of prefill/decode steps)."""
    return spec_abstract(cache_specs(cfg, batch, max_len, dtype))


def cache_logical_axes(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    """A KVCache whose fields are the logical axis tuples of k, v and lengths."""
    return spec_logical_axes(cache_specs(cfg, batch, max_len))


def cache_shardings(
    cfg: ModelConfig, batch: int, max_len: int, mesh_rules: MeshRules, dtype: Any = None
) -> KVCache:
    """A KVCache of NamedShardings under `mesh_rules` (a mesh axis that does not divide is dropped)."""
    return spec_shardings(cache_specs(cfg, batch, max_len, dtype), mesh_rules)


def init_cache(
    cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None, mesh_rules: MeshRules | None = None
) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` positions.

    With `mesh_rules` every array is created already sharded (each device allocates only its shard).
    """
    specs = cache_specs(cfg, batch, max_len, dtype)

    def zeros() -> KVCache:
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), specs)

    if mesh_rules is None:
        return zeros()
    return jax.jit(zeros, out_shardings=spec_shardings(specs, mesh_rules))()
