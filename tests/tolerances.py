"""Float tolerances derived from the arithmetic, not from what one CPU happened to produce.

Two valid programs for the same fp32 computation (a scan vs a Python loop over layers, a fused vs an unfused
kernel, one device vs a sharded mesh, Intel vs AMD vector widths) may sum the same terms in different orders.
A sum of n terms in fp32 is within n·u·Σ|terms| of the exact sum in any order (u = 2^-24, the unit roundoff),
so two orders differ by at most 2·n·u·Σ|terms|. Through a chain of such reductions the first-order errors add,
each relative to the magnitudes entering it; in these models every layer re-normalizes its input (RMSNorm), so
the magnitudes stay of the order of the compared tensor's own. Hence the bound used throughout:

    |a - b| <= 2 · depth · u · max|b|

with `depth` the summed length of the reductions on the path from the inputs to the compared value. This is a
first-order bound (no Jacobian amplification beyond O(1)); it is used only where the *same* computation runs
under two programs. Claims against an independent implementation (1e-4 on logits against transformers) are
claims, not derived bounds, and are never loosened to fit.
"""

from __future__ import annotations

import numpy as np

#: fp32 unit roundoff (half the machine epsilon).
U32 = 2.0**-24


def reorder_atol(reference, depth: int) -> float:
    """Bound on |a - b| for two evaluation orders of the same fp32 computation of `reference`."""
    return 2.0 * depth * U32 * float(np.max(np.abs(np.asarray(reference))))


def layer_depth(cfg, seq_len: int) -> int:
    """Summed reduction lengths of one Qwen decoder layer at `seq_len` keys (norms, projections, attention, MLP)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    qk_norm = 2 * hd if cfg.model_type == "qwen3" else 0  # q/k RMSNorm over head_dim
    attention = hd + 2 * seq_len  # scores over head_dim, softmax denominator and probs x values over keys
    attention += rescale_depth(cfg, seq_len)
    return (d + d) + qk_norm + attention + cfg.num_heads * hd + (d + d + cfg.intermediate_size)


def rescale_depth(cfg, seq_len: int) -> int:
    """Extra roundings of an online softmax (blockwise / splash attention) over `seq_len` keys; 0 for dense.

    Per key block the running numerator and denominator are each multiplied by exp(m_old - m_new): at most
    three roundings (the exp and two products; the same rounded factor scales both, so its own error largely
    cancels in their ratio, which the bound does not rely on), plus one final division."""
    impl = getattr(cfg, "attention_impl", "dense")
    if impl in ("dense", "auto"):  # auto is dense off TPU, where these tests run
        return 0
    return 3 * -(-seq_len // max(1, getattr(cfg, "attention_block_kv", seq_len))) + 1


def logits_depth(cfg, seq_len: int) -> int:
    """Reduction depth of the logits: every layer, the final norm and the vocabulary projection."""
    return cfg.num_layers * layer_depth(cfg, seq_len) + 2 * cfg.hidden_size


def keys_depth(cfg, seq_len: int) -> int:
    """Reduction depth of the last layer's cached keys: the layers below, its input norm, k projection, k norm."""
    k_norm = cfg.head_dim if cfg.model_type == "qwen3" else 0
    return (cfg.num_layers - 1) * layer_depth(cfg, seq_len) + 2 * cfg.hidden_size + k_norm
