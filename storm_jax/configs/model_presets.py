"""Model presets: architecture numbers from the official Hugging Face config.json of each model.

`preset(name)` returns the `model` section of a training config (ModelConfig fields). Values checked against
the published config.json files (Qwen/<name>/config.json); `tiny` ones are our small random CPU models.
"""

from __future__ import annotations

_QWEN3 = dict(model_type="qwen3", vocab_size=151936, head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
              max_position_embeddings=40960)  # fmt: skip

PRESETS: dict[str, dict] = {
    # Qwen/Qwen3-0.6B
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                       num_kv_heads=8, tie_word_embeddings=True),
    # Qwen/Qwen3-1.7B
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                       num_kv_heads=8, tie_word_embeddings=True),
    # Qwen/Qwen3-4B
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                     num_kv_heads=8, tie_word_embeddings=True),
    # Qwen/Qwen3-4B-Thinking-2507: the 4B architecture with a 256K context (rope_theta 5e6, 262144 positions)
    "qwen3-4b-thinking-2507": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                                   num_kv_heads=8, tie_word_embeddings=True, rope_theta=5_000_000.0,
                                   max_position_embeddings=262144),
    # Qwen/Qwen3-8B (untied lm_head)
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
                     num_kv_heads=8, tie_word_embeddings=False),
    # Qwen/Qwen2.5-7B-Instruct (QKV bias, no QK-norm, padded vocab 152064; the base model has 131072 positions)
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False),
    # The ~100M anchor model of the benchmarks (/work/shared/anchors/common_cfg.py).
    "qwen3-100m": dict(_QWEN3, hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8, num_kv_heads=4,
                       head_dim=64, tie_word_embeddings=True, max_position_embeddings=4096),
    # Tiny random CPU model over the real Qwen vocabulary (so the real tokenizer works); ~10M params, nearly all
    # of them the embedding.
    "tiny": dict(_QWEN3, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, tie_word_embeddings=True, max_position_embeddings=4096),
    # Tiny model with a toy vocabulary (synthetic tokens only): unit tests, sharding checks.
    "tiny-toy-vocab": dict(_QWEN3, vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False,
                           max_position_embeddings=4096),
}  # fmt: skip


def preset(name: str) -> dict:
    """The ModelConfig fields of a preset (a fresh dict)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def apply_preset(cfg, name: str, **numerics) -> None:
    """Set cfg.model to a preset (plus dtype/param_dtype/remat overrides)."""
    for k, v in {**preset(name), **numerics}.items():
        cfg.model[k] = v
