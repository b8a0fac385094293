"""Preference pairs as training batches: per-pair features [2, T], padded eval batches, the resumable iterator.

Batch layout and the length rule: storm_jax/data/preference.py (module docstring) and docs/dpo.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from storm_jax.data.packing import pad_document
from storm_jax.data.preference import PreferencePair, load_pairs
from storm_jax.data.sft import example_features

log = logging.getLogger(__name__)

Overlong = Literal["truncate", "drop"]
OnBadRow = Literal["skip", "raise"]

# --------------------------------------------------------------------------------------------------------
# Features and batches


def _empty_features(seq_len: int) -> dict[str, np.ndarray]:
    return {
        "tokens": np.zeros(seq_len, np.int32),
        "targets": np.zeros(seq_len, np.int32),
        "loss_mask": np.zeros(seq_len, np.float32),
        "segment_ids": np.zeros(seq_len, np.int32),
        "positions": np.zeros(seq_len, np.int32),
    }


def pair_features(pair: PreferencePair | None, seq_len: int, with_ref: bool) -> dict[str, np.ndarray]:
    """One pair as [2, seq_len] rows (chosen, rejected) + weight (+ ref_logps [2]); None = a padding pair."""
    if pair is None:
        rows = [_empty_features(seq_len), _empty_features(seq_len)]
        weight, ref = 0.0, (0.0, 0.0)
    else:
        rows = [pad_document(example_features(ex), seq_len) for ex in (pair.chosen, pair.rejected)]
        weight, ref = pair.weight, (pair.ref_chosen_logp, pair.ref_rejected_logp)
    out = {k: np.stack([rows[0][k], rows[1][k]]) for k in rows[0]}
    out["weight"] = np.asarray(weight, np.float32)
    if with_ref:
        if ref[0] is None:
            raise ValueError(f"{pair.source}: no reference log-probs (precompute them for every pair)")
        out["ref_logps"] = np.asarray(ref, np.float32)
    return out


def _uniform_ref(pairs: Sequence[PreferencePair]) -> bool:
    have = {p.has_ref for p in pairs}
    if len(have) > 1:
        missing = next(p for p in pairs if not p.has_ref)
        raise ValueError(f"{missing.source}: some pairs carry reference log-probs and others do not")
    return have == {True}


def eval_batches(
    pairs: Sequence[PreferencePair], *, seq_len: int, batch_pairs: int, with_ref: bool | None = None
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(batch, number of real pairs) over all pairs in order, the last batch padded with empty pairs."""
    if with_ref is None:
        with_ref = _uniform_ref(pairs)
    for start in range(0, len(pairs), batch_pairs):
        chunk = list(pairs[start : start + batch_pairs])
        feats = [pair_features(p, seq_len, with_ref) for p in chunk]
        feats += [pair_features(None, seq_len, with_ref)] * (batch_pairs - len(chunk))
        yield {k: np.stack([f[k] for f in feats]) for k in feats[0]}, len(chunk)


@dataclasses.dataclass(frozen=True)
class PreferenceDataConfig:
    """Where the preference rows are and how they become batches.

    batch_size: pairs per global batch (each process yields batch_size // process_count pairs, i.e.
    2 * that many sequences). num_epochs None repeats forever, with a new permutation every epoch.
    """

    path: str
    seq_len: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    overlong: Overlong = "drop"
    on_bad_row: OnBadRow = "raise"
    enable_thinking: bool = True
    num_epochs: int | None = None

    def __post_init__(self):
        if self.seq_len < 1 or self.batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {self.seq_len}, {self.batch_size}")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {self.overlong!r}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}")


def make_pair_dataset(
    pairs: Sequence[PreferencePair],
    *,
    seq_len: int,
    batch_pairs: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
):
    """grain.IterDataset of [batch_pairs, 2, seq_len] batches over in-memory pairs (drops the remainder)."""
    import grain

    if not pairs:
        raise ValueError("no preference pairs to batch")
    for p in pairs:
        if len(p.chosen) > seq_len + 1 or len(p.rejected) > seq_len + 1:
            raise ValueError(f"{p.source}: pair longer than seq_len={seq_len}; fit it first (fit_pair)")
    with_ref = _uniform_ref(pairs)
    ds = grain.MapDataset.source(list(pairs))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    # Repeat after shuffle: the shuffle then sees epoch-k indices and draws a new permutation per epoch.
    ds = ds.repeat(num_epochs)
    ds = ds.map(lambda p: pair_features(p, seq_len, with_ref))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return it.batch(batch_pairs, drop_remainder=True)


def make_preference_iterator(
    cfg: PreferenceDataConfig,
    tokenizer=None,
    *,
    pairs: Sequence[PreferencePair] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """A checkpointable iterator of local pair batches (get_state()/set_state(), see the module docstring).

    pairs: already loaded (e.g. with precomputed reference log-probs) for this process; else read cfg.path.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if cfg.batch_size % process_count:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the process count {process_count}")
    if pairs is None:
        pairs, stats = load_pairs(
            cfg.path,
            tokenizer,
            seq_len=cfg.seq_len,
            overlong=cfg.overlong,
            on_bad_row=cfg.on_bad_row,
            enable_thinking=cfg.enable_thinking,
            process_index=process_index,
            process_count=process_count,
        )
        log.info("preference data (process %d/%d): %s", process_index, process_count, stats.summary())
    ds = make_pair_dataset(
        pairs,
        seq_len=cfg.seq_len,
        batch_pairs=cfg.batch_size // process_count,
        seed=cfg.seed,
        shuffle=cfg.shuffle,
        num_epochs=cfg.num_epochs,
    )
    return iter(ds)
