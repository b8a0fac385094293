"""The ~100M anchor Qwen3 (storm_jax preset "qwen3-100m") in Hugging Face Qwen3Config field names, and its tunix
ModelConfig: shared by the bench scripts and their peer scripts (which run in other venvs, so this file imports
nothing from storm_jax and nothing beyond the standard library at module level)."""

from __future__ import annotations

from typing import Any

ANCHOR = dict(
    vocab_size=151936,
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=1536,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
)


def tunix_qwen3_config(c: dict, **kw: Any) -> Any:
    """tunix's Qwen3 ModelConfig for HF config fields `c` (tied embeddings), extra fields from kw."""
    from tunix.models.qwen3 import model as qwen3_model

    return qwen3_model.ModelConfig(
        num_layers=c["num_hidden_layers"],
        vocab_size=c["vocab_size"],
        embed_dim=c["hidden_size"],
        hidden_dim=c["intermediate_size"],
        num_heads=c["num_attention_heads"],
        head_dim=c["head_dim"],
        num_kv_heads=c["num_key_value_heads"],
        rope_theta=int(c["rope_theta"]),
        norm_eps=c["rms_norm_eps"],
        use_tied_embedding=True,
        **kw,
    )
