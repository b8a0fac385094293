"""Hugging Face checkpoint I/O for Qwen2/Qwen3: config.json + (sharded) safetensors <-> (ModelConfig, params).

Loading streams: every parameter is built with `jax.make_array_from_callback`, whose callback reads only the
slice a device needs from memory-mapped safetensors files, so a 4B/8B checkpoint is never materialized whole on
one host. Saving writes one tensor at a time (per layer) into shards of bounded size plus the index file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from storm_jax.models.qwen import ModelConfig, Params, param_logical_axes, param_shapes
from storm_jax.models.safetensors_io import SafetensorsError, SafetensorsFile, save_file
from storm_jax.parallel.mesh import MeshRules

SUPPORTED = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
QWEN_BOS, QWEN_EOS = 151643, 151645  # <|endoftext|>, <|im_end|>


class CheckpointError(ValueError):
    """A checkpoint directory cannot be loaded; the message names the file and tensor."""


# ----------------------------------------------------------------------------------------------------------------
# config.json <-> ModelConfig
# ----------------------------------------------------------------------------------------------------------------


def config_from_hf(hf: dict, *, source: str = "config.json", **overrides: Any) -> ModelConfig:
    """ModelConfig from a transformers config dict (v4 `rope_scaling` or v5 `rope_parameters` style)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(sorted(SUPPORTED))})"
        )
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
    try:
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        rope = dict(hf.get("rope_parameters") or {})
        scaling = hf.get("rope_scaling") or {}
        rope.update({k: v for k, v in scaling.items() if k not in rope})
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        cfg = dict(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0) or 1.0),
            rope_original_max_position=int(rope.get("original_max_position_embeddings") or 0),
            rope_beta_fast=float(rope.get("beta_fast") or 32.0),
            rope_beta_slow=float(rope.get("beta_slow") or 1.0),
            rope_attention_factor=rope.get("attention_factor"),
            rope_truncate=bool(rope.get("truncate", True)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
        if model_type == "qwen2" and hf.get("attention_bias") is False:
            raise CheckpointError(f"{source}: qwen2 without attention_bias is not supported")
        if model_type == "qwen3" and hf.get("attention_bias"):
            raise CheckpointError(f"{source}: qwen3 with attention_bias=true is not supported")
    except KeyError as e:
        raise CheckpointError(f"{source}: missing required key {e.args[0]!r}") from None
    cfg.update(overrides)
    try:
        return ModelConfig(**cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def config_to_hf(cfg: ModelConfig) -> dict:
    """A config.json dict loadable by transformers (v4 and v5) and vLLM."""
    rope_scaling = None
    if cfg.rope_type != "default":
        rope_scaling = {"rope_type": cfg.rope_type, "type": cfg.rope_type, "factor": cfg.rope_factor}
        if cfg.rope_type == "yarn":
            rope_scaling.update(
                original_max_position_embeddings=cfg.rope_original_max_position,
                beta_fast=cfg.rope_beta_fast,
                beta_slow=cfg.rope_beta_slow,
            )
            if cfg.rope_attention_factor is not None:
                rope_scaling["attention_factor"] = cfg.rope_attention_factor
            if not cfg.rope_truncate:
                rope_scaling["truncate"] = False
    out = {
        "architectures": [SUPPORTED[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.qkv_bias,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "use_cache": True,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.vocab_size > QWEN_EOS:  # the Qwen special ids only exist in a model with the real vocabulary
        out.update(bos_token_id=QWEN_BOS, eos_token_id=QWEN_EOS)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tensor name mapping. Our layouts keep heads as their own axis (for sharding); HF stores [out, in] matrices.
# ----------------------------------------------------------------------------------------------------------------

_LAYER_TENSORS: dict[str, str] = {
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "q_bias": "model.layers.{i}.self_attn.q_proj.bias",
    "k_bias": "model.layers.{i}.self_attn.k_proj.bias",
    "v_bias": "model.layers.{i}.self_attn.v_proj.bias",
    "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
}
_TOP_TENSORS = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}


def _hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of one of our (per-layer, for layer params) parameter shapes."""
    if name in ("q", "k", "v"):
        d, h, hd = shape
        return (h * hd, d)
    if name == "o":
        h, hd, d = shape
        return (d, h * hd)
    if name in ("q_bias", "k_bias", "v_bias"):
        return (shape[0] * shape[1],)
    if name in ("gate", "up", "down", "lm_head"):
        return (shape[1], shape[0])
    return shape


def _from_hf(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our layout (shape = our per-layer shape)."""
    if name in ("q", "k", "v"):
        return arr.T.reshape(shape)
    if name == "o":
        return arr.T.reshape(shape)
    if name in ("gate", "up", "down", "lm_head"):
        return arr.T
    return arr.reshape(shape)


def _to_hf(name: str, arr: np.ndarray) -> np.ndarray:
    """Our layout -> HF tensor."""
    if name in ("q", "k", "v"):
        d, h, hd = arr.shape
        return arr.reshape(d, h * hd).T
    if name == "o":
        h, hd, d = arr.shape
        return arr.reshape(h * hd, d).T
    if name in ("q_bias", "k_bias", "v_bias"):
        return arr.reshape(-1)
    if name in ("gate", "up", "down", "lm_head"):
        return arr.T
    return arr


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _weight_map(path: str) -> dict[str, str]:
    """tensor name -> file path, from model.safetensors.index.json or the single model.safetensors."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                wm = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        return {k: os.path.join(path, v) for k, v in wm.items()}
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        try:
            return {k: single for k in SafetensorsFile(single).keys()}
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json found")


def load_hf_config(path: str, **overrides: Any) -> ModelConfig:
    """Read `path/config.json` into a ModelConfig."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{cfg_path}: file not found (is {path!r} an HF checkpoint directory?)")
    try:
        with open(cfg_path) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
    return config_from_hf(hf, source=cfg_path, **overrides)


def load_hf_checkpoint(
    path: str,
    dtype: str = "float32",
    mesh_rules: MeshRules | None = None,
    compute_dtype: str | None = None,
    **cfg_overrides: Any,
) -> tuple[ModelConfig, Params]:
    """Load an HF Qwen2/Qwen3 checkpoint directory as (cfg, params), params in `dtype`.

    The compute dtype defaults to `dtype` (bf16 weights -> bf16 matmuls with fp32 norms/softmax/logits).
    With `mesh_rules`, each parameter lands directly in its sharding (each device reads only its slice).
    `cfg_overrides` set ModelConfig fields that are not in config.json (compute dtype, remat, ...).
    """
    cfg = load_hf_config(path, param_dtype=dtype, dtype=compute_dtype or dtype, **cfg_overrides)
    weight_map = _weight_map(path)
    files: dict[str, SafetensorsFile] = {}

    def open_file(fname: str) -> SafetensorsFile:
        if fname not in files:
            if not os.path.exists(fname):
                raise CheckpointError(f"{fname}: shard listed in the index is missing")
            try:
                files[fname] = SafetensorsFile(fname)
            except SafetensorsError as e:
                raise CheckpointError(str(e)) from None
        return files[fname]

    def tensor(hf_name: str, expect: tuple[int, ...]) -> np.ndarray:
        if hf_name not in weight_map:
            raise CheckpointError(f"{path}: tensor {hf_name!r} is missing from the checkpoint")
        f = open_file(weight_map[hf_name])
        if hf_name not in f.keys():
            raise CheckpointError(f"{f.path}: tensor {hf_name!r} listed in the index is not in the file")
        if f.shape(hf_name) != expect:
            raise CheckpointError(
                f"{f.path}: tensor {hf_name!r} has shape {list(f.shape(hf_name))}, config.json implies {list(expect)}"
            )
        return f.get(hf_name)

    shapes = param_shapes(cfg)
    logical = param_logical_axes(cfg)
    np_dtype = np.dtype(jnp.dtype(cfg.weight_dtype))
    used: set[str] = set()

    def build(global_shape, axes, reader: Callable[[tuple[slice, ...]], np.ndarray]):
        if mesh_rules is None:
            full = tuple(slice(None) for _ in global_shape)
            return jnp.asarray(reader(full))
        sharding = mesh_rules.sharding(axes, global_shape)
        return jax.make_array_from_callback(tuple(global_shape), sharding, lambda idx: reader(idx))

    params: Params = {"layers": {}}
    for name, hf_name in _TOP_TENSORS.items():
        if name not in shapes:
            continue
        shape = shapes[name]
        used.add(hf_name)

        def read_top(idx, name=name, hf_name=hf_name, shape=shape):
            arr = _from_hf(name, tensor(hf_name, _hf_shape(name, shape)), shape)
            return np.asarray(arr[idx], dtype=np_dtype)

        params[name] = build(shape, logical[name], read_top)

    for name, shape in shapes["layers"].items():
        per_layer = shape[1:]
        names = [_LAYER_TENSORS[name].format(i=i) for i in range(cfg.num_layers)]
        used.update(names)

        def read_layers(idx, name=name, names=names, per_layer=per_layer):
            layer_ids = range(cfg.num_layers)[idx[0]]
            parts = [
                np.asarray(
                    _from_hf(name, tensor(names[i], _hf_shape(name, per_layer)), per_layer)[idx[1:]], np_dtype
                )
                for i in layer_ids
            ]
            return np.stack(parts)

        params["layers"][name] = build(shape, logical["layers"][name], read_layers)

    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(
        n for n in weight_map if n not in used and n not in ignorable and "rotary_emb" not in n
    )
    if unexpected:
        first = unexpected[0]
        raise CheckpointError(
            f"{weight_map[first]}: unexpected tensor {first!r} for {cfg.model_type} "
            f"({len(unexpected)} unexpected in total)"
        )
    return cfg, params


# ----------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------


def _host(x: jax.Array) -> np.ndarray:
    """Fetch an array (or a slice of one) to this host, gathering across processes when needed."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_hf_checkpoint(
    cfg: ModelConfig,
    params: Params,
    path: str,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = 2 * 1024**3,
    tokenizer: Any = None,
    generation_config: dict | None = None,
) -> None:
    """Write an HF checkpoint directory (config.json, safetensors shards + index, generation_config.json,
    tokenizer files) that `transformers.AutoModelForCausalLM.from_pretrained` and vLLM load.

    Tensors are fetched and written one layer at a time. On multi-host, every process must call this (the
    gathers are collective); only process 0 writes.
    """
    writer = jax.process_index() == 0
    out_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
    if writer:
        os.makedirs(path, exist_ok=True)

    def tensors():
        yield _TOP_TENSORS["embed"], _to_hf("embed", _host(params["embed"]))
        for i in range(cfg.num_layers):
            for name in params["layers"]:
                yield _LAYER_TENSORS[name].format(i=i), _to_hf(name, _host(params["layers"][name][i]))
        yield _TOP_TENSORS["final_norm"], _host(params["final_norm"])
        if not cfg.tie_word_embeddings:
            yield _TOP_TENSORS["lm_head"], _to_hf("lm_head", _host(params["lm_head"]))

    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    shard_files: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0

    def flush(final: bool):
        # Shards are written under provisional names and renamed once the total count is known.
        if not shards[-1]:
            return
        tmp_name = f"model-{len(shard_files) + 1:05d}.partial.safetensors"
        if writer:
            save_file(shards[-1], os.path.join(path, tmp_name), metadata={"format": "pt"})
        for k in shards[-1]:
            weight_map[k] = tmp_name
        shard_files.append(tmp_name)
        shards[-1] = {}
        sizes[-1] = 0

    for name, arr in tensors():
        arr = np.ascontiguousarray(arr.astype(out_dtype))
        if sizes[-1] and sizes[-1] + arr.nbytes > max_shard_bytes:
            flush(final=False)
        shards[-1][name] = arr
        sizes[-1] += arr.nbytes
        total += arr.nbytes
    flush(final=True)

    n = len(shard_files)
    final_names = {}
    for j, tmp in enumerate(shard_files):
        final_names[tmp] = "model.safetensors" if n == 1 else f"model-{j + 1:05d}-of-{n:05d}.safetensors"
    if not writer:
        return
    for tmp, final in final_names.items():
        os.replace(os.path.join(path, tmp), os.path.join(path, final))
    index_path = os.path.join(path, "model.safetensors.index.json")
    if n > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: final_names[v] for k, v in weight_map.items()},
        }
        _write_json(index_path, index)
    elif os.path.exists(index_path):
        os.remove(index_path)

    hf_cfg = config_to_hf(cfg)
    hf_cfg["torch_dtype"] = str(jnp.dtype(out_dtype).name)
    _write_json(os.path.join(path, "config.json"), hf_cfg)
    gen: dict[str, Any] = {"do_sample": False}
    if cfg.vocab_size > QWEN_EOS:
        gen.update(bos_token_id=QWEN_BOS, eos_token_id=[QWEN_EOS, QWEN_BOS], pad_token_id=QWEN_BOS)
    gen.update(generation_config or {})
    _write_json(os.path.join(path, "generation_config.json"), gen)
    if tokenizer is not None:
        from storm_jax.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, path)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
