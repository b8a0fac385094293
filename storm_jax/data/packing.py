"""Fixed-length training rows from variable-length documents: first-fit packing or one document per row.

Each input element is one document's next-token features (`storm_jax.data.sft.example_features`):
tokens, targets, loss_mask, all of the same length <= seq_len. Each output row has, all [seq_len]:

    tokens      int32    input ids (0 on padding)
    targets     int32    the next id of the same document (0 on padding)
    loss_mask   float32  weight of predicting targets[t] (0 on padding)
    segment_ids int32    1, 2, ... per document in the row; 0 = padding
    positions   int32    position inside its document, restarting at 0

Packing uses grain's `FirstFitPackIterDataset` (deterministic; its state is the parent's state at the last
emitted pack plus the row counter, so a restored iterator re-packs the same rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURES = ("tokens", "targets", "loss_mask")
ROW_KEYS = (*FEATURES, "segment_ids", "positions")


def _rename_packed(packed: dict[str, Any]) -> dict[str, np.ndarray]:
    # The packer gives every feature its own segment ids and positions; they are identical because the
    # three features of a document always have the same length. Keep one copy.
    return {
        "tokens": packed["tokens"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "loss_mask": packed["loss_mask"].astype(np.float32),
        "segment_ids": packed["tokens_segment_ids"].astype(np.int32),
        "positions": packed["tokens_positions"].astype(np.int32),
    }


def pack_dataset(ds, seq_len: int, *, num_bins: int, seed: int, shuffle_bins: bool):
    """First-fit pack a `grain.IterDataset` of document features into rows of `seq_len`."""
    from grain.experimental import FirstFitPackIterDataset

    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    packed = FirstFitPackIterDataset(
        ds,
        length_struct={k: seq_len for k in FEATURES},
        num_packing_bins=num_bins,
        seed=seed,
        shuffle_bins=shuffle_bins,
    )
    return packed.map(_rename_packed)


def pad_document(features: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One document alone in a row, right-padded to `seq_len` (the no-packing layout)."""
    n = int(features["tokens"].shape[0])
    if n > seq_len:
        raise ValueError(
            f"document of {n} positions does not fit seq_len {seq_len}; truncate or drop it first"
        )
    row = {}
    for k, dtype in (("tokens", np.int32), ("targets", np.int32), ("loss_mask", np.float32)):
        out = np.zeros(seq_len, dtype)
        out[:n] = features[k]
        row[k] = out
    row["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
    row["positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
    return row


def packing_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Share of non-padding positions in a batch (or row)."""
    seg = np.asarray(batch["segment_ids"])
    return float(np.count_nonzero(seg)) / max(seg.size, 1)
