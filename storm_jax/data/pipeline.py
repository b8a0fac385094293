"""The grain pipeline of SFT batches: rows -> tokens + masks -> shuffle -> pack -> batch, per process.

    rows (all files, validated)  --shard i % process_count-->  this process's documents (tokenized once)
      MapDataset.source -> shuffle(seed) -> repeat(num_epochs)     (a new permutation every epoch)
      -> to_iter_dataset -> first-fit pack (or pad) to seq_len -> batch(batch_size // process_count)

Each process iterates its own disjoint shard, so the global batch is the concatenation of the processes'
local batches. The returned iterator is grain's checkpointable `DatasetIterator`: `get_state()` is a small
JSON-serializable dict and `set_state()` resumes with exactly the batches that would have followed.

With packing, the number of batches per epoch differs a little between processes; multi-host training
should run for a number of steps with num_epochs=None (endless) rather than to the end of the data.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from typing import TYPE_CHECKING, Literal

import numpy as np

from storm_jax.data.packing import pack_dataset, pad_document
from storm_jax.data.sft import SFTStats, example_features, load_rows

if TYPE_CHECKING:
    import grain

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """Where the SFT rows are and how they become batches.

    path: a JSONL file or glob (sorted). batch_size is global: each process yields batch_size // process_count.
    overlong: documents longer than seq_len + 1 ids are cut ("truncate") or dropped ("drop"), both counted.
    on_bad_row: a malformed row stops the run with "<file>:<line>: ..." ("raise") or is counted ("skip").
    num_epochs: None repeats forever. num_packing_bins: bins the first-fit packer fills at once (None: a
    default from the batch size; more bins pack tighter but mix rows of adjacent epochs).
    """

    path: str
    seq_len: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    pack: bool = True
    overlong: Literal["truncate", "drop"] = "truncate"
    on_bad_row: Literal["skip", "raise"] = "raise"
    enable_thinking: bool = True
    num_epochs: int | None = None
    num_packing_bins: int | None = None

    def __post_init__(self):
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {self.overlong!r}")
        if self.on_bad_row not in ("skip", "raise"):
            raise ValueError(f"on_bad_row must be 'skip' or 'raise', got {self.on_bad_row!r}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}")


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def local_batch_size(cfg: SFTDataConfig, process_count: int) -> int:
    """Rows per batch on one process."""
    if cfg.batch_size % process_count:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the process count {process_count}")
    return cfg.batch_size // process_count


def default_num_bins(local_batch: int) -> int:
    # Enough bins that a long document rarely forces out half-empty rows, few enough that a pack pass
    # (num_bins rows) stays small next to an epoch.
    return max(2 * local_batch, 32)


def make_sft_dataset(
    cfg: SFTDataConfig, tokenizer, *, process_index: int | None = None, process_count: int | None = None
) -> tuple[grain.IterDataset, SFTStats]:
    """(grain.IterDataset of local batches, SFTStats of the load) for this process."""
    import grain

    pi, pc = _process_layout(process_index, process_count)
    local_batch = local_batch_size(cfg, pc)
    examples, stats = load_rows(
        cfg.path,
        tokenizer,
        on_bad_row=cfg.on_bad_row,
        enable_thinking=cfg.enable_thinking,
        seq_len=cfg.seq_len,
        overlong=cfg.overlong,
        process_index=pi,
        process_count=pc,
    )
    log.info("SFT data (process %d/%d): %s", pi, pc, stats.summary())
    if not examples:
        raise ValueError(f"{cfg.path}: no usable SFT documents on process {pi} ({stats.summary()})")

    ds = grain.MapDataset.source(examples)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    # Repeat after shuffle: the shuffle then sees epoch-k indices and draws a new permutation per epoch.
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(example_features)
    # The data is in memory and the map is cheap: no reader threads (they would only contend for the GIL).
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if cfg.pack:
        num_bins = cfg.num_packing_bins or default_num_bins(local_batch)
        it = pack_dataset(it, cfg.seq_len, num_bins=num_bins, seed=cfg.seed, shuffle_bins=cfg.shuffle)
    else:
        it = it.map(functools.partial(pad_document, seq_len=cfg.seq_len))
    return it.batch(local_batch, drop_remainder=True), stats


def make_sft_iterator(
    cfg: SFTDataConfig, tokenizer, *, process_index: int | None = None, process_count: int | None = None
):
    """A checkpointable grain iterator of local SFT batches (dicts of numpy arrays, see packing.py).

    process_index/process_count default to jax.process_index()/jax.process_count().
    """
    ds, _ = make_sft_dataset(cfg, tokenizer, process_index=process_index, process_count=process_count)
    return iter(ds)


def measure_epoch(cfg: SFTDataConfig, tokenizer, *, process_index: int = 0, process_count: int = 1) -> dict:
    """Stats of the load plus batches and packing efficiency (non-pad share) of one pass over the data."""
    one_pass = dataclasses.replace(cfg, num_epochs=1)
    ds, stats = make_sft_dataset(
        one_pass, tokenizer, process_index=process_index, process_count=process_count
    )
    batches = nonpad = loss = 0
    for b in ds:
        batches += 1
        nonpad += int(np.count_nonzero(b["segment_ids"]))
        loss += int(b["loss_mask"].sum())
    rows = batches * local_batch_size(cfg, process_count)
    out = dataclasses.asdict(stats)
    out.update(
        batches=batches,
        rows=rows,
        packing_efficiency=nonpad / max(rows * cfg.seq_len, 1),
        loss_tokens_in_batches=loss,
    )
    return out


def main(argv: list[str]) -> int:
    """`storm-jax sft-data PATH --seq-len N --batch-size B`: check a JSONL file and report its packing."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="storm-jax sft-data", description=main.__doc__)
    p.add_argument("path", help="JSONL file or glob")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-pack", action="store_true")
    p.add_argument("--overlong", choices=("truncate", "drop"), default="truncate")
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--no-thinking", action="store_true")
    p.add_argument(
        "--tokenizer", default=None, help="checkpoint directory with tokenizer files (default: Qwen3)"
    )
    a = p.parse_args(argv)
    from storm_jax.tokenizer import load_tokenizer

    cfg = SFTDataConfig(
        path=a.path,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        pack=not a.no_pack,
        overlong=a.overlong,
        on_bad_row="skip" if a.skip_bad_rows else "raise",
        enable_thinking=not a.no_thinking,
    )
    try:
        report = measure_epoch(cfg, load_tokenizer(a.tokenizer))
    except (ValueError, FileNotFoundError) as e:
        print(f"storm-jax sft-data: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0
