"""Parameter and cache specs (one table, everything derived) and logical->mesh rules as data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from tolerances import keys_depth, logits_depth, reorder_atol

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
    param_shapes,
    param_shardings,
    param_specs,
)
from storm_jax.models.spec import is_spec
from storm_jax.parallel.mesh import (
    DEFAULT_RULES,
    DEFAULT_SAMPLER_RULES,
    LOGICAL_AXES,
    RULE_PRESETS,
    MeshRules,
    make_mesh,
    mesh_rules_from_config,
    rules_from_config,
)

TINY = dict(vocab_size=66, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
CFGS = {
    "qwen3_tied": ModelConfig(model_type="qwen3", head_dim=8, rope_theta=1e6, **TINY),
    "qwen2_untied_bf16": ModelConfig(
        model_type="qwen2", head_dim=8, tie_word_embeddings=False, param_dtype="bfloat16", **TINY
    ),
}
is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)  # noqa: E731
is_shape = lambda x: isinstance(x, tuple) and all(isinstance(a, int) for a in x)  # noqa: E731


def _mesh_rules(rules=DEFAULT_RULES) -> MeshRules:
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    return MeshRules(make_mesh(2, 2, 2), rules)


# ------------------------------------------------------------------------------------------------ params


@pytest.mark.parametrize("name", list(CFGS))
def test_every_params_tree_derives_from_the_spec(name):
    cfg = CFGS[name]
    specs = param_specs(cfg)
    structure = jax.tree.structure(specs, is_leaf=is_spec)
    flat = jax.tree.leaves(specs, is_leaf=is_spec)
    assert all(isinstance(s, ArraySpec) for s in flat)
    params = init_params(cfg, jax.random.PRNGKey(0))
    abstract = abstract_params(cfg)
    logical = param_logical_axes(cfg)
    shapes = param_shapes(cfg)
    mr = _mesh_rules()
    shardings = param_shardings(cfg, mr)
    assert jax.tree.structure(params) == structure
    assert jax.tree.structure(abstract) == structure
    assert jax.tree.structure(shardings) == structure
    assert jax.tree.structure(logical, is_leaf=is_axes) == structure
    assert jax.tree.structure(shapes, is_leaf=is_shape) == structure
    for s, p, a, ax, sh, shd in zip(
        flat,
        jax.tree.leaves(params),
        jax.tree.leaves(abstract),
        jax.tree.leaves(logical, is_leaf=is_axes),
        jax.tree.leaves(shapes, is_leaf=is_shape),
        jax.tree.leaves(shardings),
    ):
        assert p.shape == a.shape == sh == s.shape and len(ax) == len(s.shape)
        assert p.dtype == a.dtype == s.dtype == jnp.dtype(cfg.weight_dtype)
        assert ax == s.logical_axes and set(ax) <= set(LOGICAL_AXES)
        assert shd.spec == mr.spec(ax, s.shape)
    # derived counts agree with the arrays
    assert cfg.num_params() == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert ("lm_head" in specs) == (not cfg.tie_word_embeddings)
    assert ("q_bias" in specs["layers"]) == cfg.qkv_bias and ("q_norm" in specs["layers"]) == cfg.qk_norm


def test_init_follows_the_spec_initializers_and_key_order():
    """One key per leaf in flattening order (sorted keys), normal(std) drawn in fp32 then cast; norms 1, biases 0.

    This is the contract that keeps seeded params the same as before the spec existed (also checked once,
    bit for bit, against the pre-spec code when the spec was introduced).
    """
    cfg = CFGS["qwen2_untied_bf16"]
    key, std = jax.random.PRNGKey(3), 0.05
    params = init_params(cfg, key, std=std)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(params)[0]]
    keys = jax.random.split(key, len(paths))
    for (path, leaf), k, spec in zip(
        jax.tree.flatten_with_path(params)[0], keys, jax.tree.leaves(param_specs(cfg), is_leaf=is_spec)
    ):
        name = path[-1].key
        if name.endswith("norm"):
            assert spec.init == "ones"
            want = jnp.ones(spec.shape, spec.dtype)
        elif name.endswith("bias"):
            assert spec.init == "zeros"
            want = jnp.zeros(spec.shape, spec.dtype)
        else:
            assert spec.init == "normal"
            want = (std * jax.random.normal(k, spec.shape, jnp.float32)).astype(spec.dtype)
        np.testing.assert_array_equal(
            np.asarray(leaf, np.float32), np.asarray(want, np.float32), err_msg=name
        )
    # same key, same params; another key, other params
    again = init_params(cfg, key, std=std)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, again))
    other = init_params(cfg, jax.random.PRNGKey(4), std=std)
    assert not jnp.array_equal(params["embed"], other["embed"])


def test_array_spec_validates():
    with pytest.raises(ValueError, match="rank"):
        ArraySpec((2, 3), jnp.float32, ("embed",))
    with pytest.raises(ValueError, match="initializer 'uniform'"):
        ArraySpec((2,), jnp.float32, ("embed",), "uniform")


# ------------------------------------------------------------------------------------------------ KV cache


def test_cache_spec_derives_init_abstract_and_shardings():
    cfg = CFGS["qwen3_tied"]
    B, S = 4, 16
    specs = cache_specs(cfg, B, S)
    assert isinstance(specs, KVCache) and specs.max_len == S
    structure = jax.tree.structure(specs, is_leaf=is_spec)
    cache = init_cache(cfg, B, S)
    abstract = abstract_cache(cfg, B, S)
    logical = cache_logical_axes(cfg, B, S)
    mr = _mesh_rules()
    shardings = cache_shardings(cfg, B, S, mr)
    assert jax.tree.structure(cache) == jax.tree.structure(abstract) == structure
    assert jax.tree.structure(shardings) == jax.tree.structure(logical, is_leaf=is_axes) == structure
    assert cache.k.shape == (cfg.num_layers, B, cfg.num_kv_heads, S, cfg.head_dim)
    assert cache.k.dtype == cfg.compute_dtype and cache.lengths.dtype == jnp.int32
    assert logical.k == ("layers", "batch", "kv_heads", "cache_length", "head_dim")
    assert logical.lengths == ("batch",)
    assert shardings.k.spec == P(None, ("data", "fsdp"), "tensor", None, None)
    assert shardings.lengths.spec == P(("data", "fsdp"))
    assert init_cache(cfg, B, S, dtype=jnp.bfloat16).v.dtype == jnp.bfloat16
    sharded = init_cache(cfg, B, S, mesh_rules=mr)  # allocated in place, already sharded
    for x, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(shardings)):
        assert x.sharding.is_equivalent_to(s, x.ndim) and not np.asarray(x).any()


# ------------------------------------------------------------------------------------------------ rules


def test_presets_give_the_expected_partition_specs():
    cfg = CFGS["qwen2_untied_bf16"]
    want = {  # q [L, D, H, hd], embed [V, D], q_bias [L, H, hd], tokens [B, T], cache k [L, B, K, S, hd]
        "fsdp_tp": (P(None, "fsdp", "tensor", None), P("tensor", "fsdp"), P(None, "tensor", None)),
        "fsdp_only": (P(None, "fsdp", None, None), P(None, "fsdp"), P(None, None, None)),
        "tp_only": (P(None, None, "tensor", None), P("tensor", None), P(None, "tensor", None)),
        "data_parallel": (P(None, None, None, None), P(None, None), P(None, None, None)),
        "replicated": (P(None, None, None, None), P(None, None), P(None, None, None)),
    }
    assert set(want) == set(RULE_PRESETS)
    for name, (q, embed, q_bias) in want.items():
        mr = _mesh_rules(name)
        sh = param_shardings(cfg, mr)
        assert sh["layers"]["q"].spec == q, name
        assert sh["embed"].spec == embed, name
        assert sh["layers"]["q_bias"].spec == q_bias, name
        batch = None if name == "replicated" else ("data", "fsdp")
        assert mr.spec(("batch", "length"), (8, 5)) == P(batch, None), name
        kv = "tensor" if name in ("fsdp_tp", "tp_only") else None
        assert cache_shardings(cfg, 4, 16, mr).k.spec == P(None, batch, kv, None, None), name
    # a mesh axis that does not divide its dimension is dropped (K=2 heads over tensor=4 -> replicated)
    mr = MeshRules(make_mesh(1, 2, 4), "tp_only")
    assert param_shardings(cfg, mr)["layers"]["k"].spec == P(None, None, None, None)
    assert param_shardings(cfg, mr)["layers"]["q"].spec == P(None, None, "tensor", None)


def test_rules_accept_config_forms_and_keep_the_default():
    mesh = _mesh_rules().mesh
    assert MeshRules(mesh) == MeshRules(mesh, "fsdp_tp") == MeshRules(mesh, DEFAULT_RULES)
    assert DEFAULT_SAMPLER_RULES == DEFAULT_RULES  # separate table, same layout today
    assert rules_from_config(None) == DEFAULT_RULES
    assert rules_from_config(dict(DEFAULT_RULES)) == DEFAULT_RULES
    assert rules_from_config(list(DEFAULT_RULES)) == DEFAULT_RULES
    over = rules_from_config({"preset": "tp_only", "vocab": None, "batch": ["data"], "embed": "none"})
    assert dict(over)["vocab"] is None and dict(over)["batch"] == "data" and dict(over)["embed"] is None
    assert dict(over)["heads"] == "tensor"
    assert {a for a, _ in over} == set(LOGICAL_AXES)
    hash(MeshRules(mesh, {"preset": "fsdp_only", "batch": ("data", "fsdp", "tensor")}))  # static-arg safe

    section = ml_collections.ConfigDict(
        dict(data=2, fsdp=2, tensor=2, rules="fsdp_only", sampler_rules="tp_only")
    )
    assert mesh_rules_from_config(mesh, section).rules == RULE_PRESETS["fsdp_only"]
    assert mesh_rules_from_config(mesh, section, sampler=True).rules == RULE_PRESETS["tp_only"]
    assert mesh_rules_from_config(mesh, {"fsdp": 2}).rules == DEFAULT_RULES
    assert mesh_rules_from_config(mesh, None, sampler=True).rules == DEFAULT_SAMPLER_RULES


@pytest.mark.parametrize(
    "value, match",
    [
        ("fsdp_tensor", r"mesh\.rules='fsdp_tensor': unknown rules preset"),
        ({"preset": "fsdp_tp", "vocabulary": "tensor"}, r"mesh\.rules\.vocabulary: unknown logical axis"),
        ({"preset": "fsdp_tp", "embed": "fsd"}, r"mesh\.rules\.embed='fsd': unknown mesh axis 'fsd'"),
        (
            {"preset": "fsdp_tp", "batch": ["data", "model"]},
            r"mesh\.rules\.batch=.*unknown mesh axis 'model'",
        ),
        ({"preset": "fsdp_tp", "batch": ["data", "data"]}, r"mesh\.rules\.batch=.*only once"),
        ({"preset": "fsdp_tp", "mlp": 4}, r"mesh\.rules\.mlp=4: a rule target is"),
        ({"preset": "nope"}, r"mesh\.rules\.preset='nope': unknown rules preset"),
        ({"batch": "data"}, r"mesh\.rules: no rule for logical axes \['length'"),
        ([("batch", "data", "x")], r"mesh\.rules: rule .* is not a \(logical axis, target\) pair"),
    ],
)
def test_bad_rules_name_the_key(value, match):
    with pytest.raises(ValueError, match=match):
        rules_from_config(value)


def test_bad_rules_in_mesh_rules_and_config_sections():
    mesh = _mesh_rules().mesh
    with pytest.raises(ValueError, match=r"mesh\.rules\.heads='model': unknown mesh axis"):
        MeshRules(mesh, {"preset": "fsdp_tp", "heads": "model"})
    with pytest.raises(ValueError, match=r"mesh\.sampler_rules='tp': unknown rules preset"):
        mesh_rules_from_config(mesh, {"sampler_rules": "tp"}, sampler=True)


# ------------------------------------------------------------------------------------------------ sharded forward


def _perturbed_params(cfg: ModelConfig, seed: int):
    """Init params with every leaf perturbed (init leaves norms at 1 and biases at 0, which hides their sharding)."""
    params = init_params(cfg, jax.random.PRNGKey(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize("preset", ["tp_only", "fsdp_only"])
def test_sharded_forward_with_a_preset_equals_single_device(preset):
    cfg = ModelConfig(model_type="qwen2", head_dim=8, tie_word_embeddings=False, **TINY)
    mr = _mesh_rules(preset)
    params = _perturbed_params(cfg, 0)
    B, T, S = 4, 8, 16
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (B, T)))
    fwd = jax.jit(forward, static_argnames=("cfg", "mesh_rules"))
    ref, ref_cache = fwd(params, tokens, cfg, kv_cache=init_cache(cfg, B, S))
    ref_plain, _ = fwd(params, tokens, cfg)

    sharded = jax.device_put(params, param_shardings(cfg, mr))
    toks = jax.device_put(tokens, mr.sharding(("batch", "length"), tokens.shape))
    out, _ = fwd(sharded, toks, cfg, mesh_rules=mr)
    # sharded contractions are split into partial sums: another order of the same sums
    atol = reorder_atol(ref_plain, logits_depth(cfg, T))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_plain), atol=atol, rtol=0)

    # prefill into a cache allocated with the derived shardings; the cache stays where the spec put it
    cache = init_cache(cfg, B, S, mesh_rules=mr)
    out_c, new_cache = fwd(sharded, toks, cfg, kv_cache=cache, mesh_rules=mr)
    atol = reorder_atol(ref, logits_depth(cfg, S))
    np.testing.assert_allclose(np.asarray(out_c), np.asarray(ref), atol=atol, rtol=0)
    want = cache_shardings(cfg, B, S, mr)
    assert new_cache.k.sharding.is_equivalent_to(want.k, 5)
    np.testing.assert_array_equal(np.asarray(new_cache.lengths), np.asarray(ref_cache.lengths))
    # keys of every layer within the last (deepest) layer's bound
    atol = reorder_atol(ref_cache.k, keys_depth(cfg, S))
    np.testing.assert_allclose(np.asarray(new_cache.k), np.asarray(ref_cache.k), atol=atol, rtol=0)
