"""Training metrics: host-side batch statistics, MFU, and writers (JSONL + TensorBoard).

Everything here runs on the host from numpy batches or from metrics fetched every `log_every` steps, so the
training loop never blocks on the device for bookkeeping.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

#: Peak dense bf16 FLOP/s per device (vendor figures). Matched by substring of `device.device_kind`.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6", 918e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
)


def measure_cpu_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 matmul FLOP/s of this host through XLA (the best of a few n x n matmuls)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def peak_flops_per_device(device: Any = None) -> tuple[float, str]:
    """(peak FLOP/s, source) for a device: the table for accelerators, a measurement for CPU."""
    import jax

    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for key, value in PEAK_FLOPS:
        if key.lower() in kind.lower():
            return value, f"table:{key}"
    if device.platform == "cpu":
        # Fake CPU devices share the same cores: the measured peak is for the whole host.
        return measure_cpu_peak_flops() / max(len(jax.devices()), 1), "measured:cpu"
    return float("nan"), f"unknown:{kind}"


def count_params(cfg) -> int:
    """Parameter count from the config via abstract shapes (ModelConfig.num_params at 4b2e652 flattens the
    shape tuples into their dims and undercounts; use this until that is fixed)."""
    from storm_jax.models.qwen import abstract_params

    return int(sum(np.prod(a.shape) for a in __import__("jax").tree.leaves(abstract_params(cfg))))


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: the formula of ModelConfig.flops_per_token on the correct parameter count."""
    n = count_params(cfg)
    if not cfg.tie_word_embeddings:
        n -= cfg.vocab_size * cfg.hidden_size
    return 6.0 * n + 6.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def batch_stats(batch: dict) -> dict[str, float]:
    """Token counts of a numpy batch: positions, real tokens, loss tokens, packing efficiency, masked share."""
    seg = np.asarray(batch["segment_ids"])
    mask = np.asarray(batch["loss_mask"]) * (seg != 0)
    positions = float(seg.size)
    real = float(np.count_nonzero(seg))
    loss_tokens = float(mask.sum())
    return {
        "positions": positions,
        "tokens": real,
        "loss_tokens": loss_tokens,
        "packing_efficiency": real / positions if positions else 0.0,
        "masked_share": 1.0 - loss_tokens / real if real else 0.0,  # share of real tokens with no loss
    }


def mfu(tokens_per_s: float, flops_per_token: float, peak_per_device: float, num_devices: int) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak of all devices."""
    return tokens_per_s * flops_per_token / (peak_per_device * num_devices)


class MetricsWriter:
    """Append metrics to `<dir>/metrics.jsonl` and TensorBoard events under `<dir>/tb` (process 0 only)."""

    def __init__(self, directory: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(directory, "tb"))
            except ImportError:  # optional: JSONL is the record of truth
                self._tb = None

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": prefix, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
