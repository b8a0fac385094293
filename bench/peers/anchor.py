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


def hf_qwen3_config(**kw: Any) -> Any:
    """transformers' Qwen3Config of the anchor (tied embeddings, Qwen3's special-token ids), extra fields from kw.

    rope_theta goes in as rope_parameters, the form transformers 5 reads."""
    from transformers import Qwen3Config

    fields = {k: v for k, v in ANCHOR.items() if k != "rope_theta"}
    return Qwen3Config(
        **fields,
        rope_parameters={"rope_type": "default", "rope_theta": ANCHOR["rope_theta"]},
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        **kw,
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
