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
import os
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
    cfg: SFTDataConfig,
    tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
) -> tuple[grain.IterDataset, SFTStats]:
    """(grain.IterDataset of local batches, SFTStats of the load) for this process.

    drop_remainder=False keeps a last, smaller batch (measure_epoch counts what training would drop).
    """
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
    return it.batch(local_batch, drop_remainder=drop_remainder), stats


def make_sft_iterator(
    cfg: SFTDataConfig, tokenizer, *, process_index: int | None = None, process_count: int | None = None
):
    """A checkpointable grain iterator of local SFT batches (dicts of numpy arrays, see packing.py).

    process_index/process_count default to jax.process_index()/jax.process_count().
    """
    ds, _ = make_sft_dataset(cfg, tokenizer, process_index=process_index, process_count=process_count)
    return iter(ds)


def measure_epoch(cfg: SFTDataConfig, tokenizer, *, process_index: int = 0, process_count: int = 1) -> dict:
    """Stats of the load plus batches and packing efficiency (non-pad share) of one pass over the data.

    `dropped_rows` / `loss_tokens_dropped_by_batching` are what the last, incomplete batch held: training
    batches with drop_remainder, so those never reach the model.
    """
    one_pass = dataclasses.replace(cfg, num_epochs=1)
    ds, stats = make_sft_dataset(
        one_pass, tokenizer, process_index=process_index, process_count=process_count, drop_remainder=False
    )
    local_batch = local_batch_size(cfg, process_count)
    batches = nonpad = loss = dropped_rows = dropped_loss = 0
    for b in ds:
        n = int(b["segment_ids"].shape[0])
        if n < local_batch:  # the remainder training drops
            dropped_rows += n
            dropped_loss += int(b["loss_mask"].sum())
            continue
        batches += 1
        nonpad += int(np.count_nonzero(b["segment_ids"]))
        loss += int(b["loss_mask"].sum())
    rows = batches * local_batch
    out = dataclasses.asdict(stats)
    out.update(
        batches=batches,
        rows=rows,
        packing_efficiency=nonpad / max(rows * cfg.seq_len, 1),
        loss_tokens_in_batches=loss,
        dropped_rows=dropped_rows,
        loss_tokens_dropped_by_batching=dropped_loss,
    )
    return out


def _rows(n: int, packed: bool) -> str:
    return f"{n} {'packed ' if packed else ''}row{'s' if n != 1 else ''}"


def report_warnings(report: dict, cfg: SFTDataConfig) -> list[str]:
    """One line per thing the data loses on the way to the batches (truncation, drops, the last batch)."""
    docs = report["local_rows"]
    out = []
    if report["bad_rows"]:
        first = report["bad_row_messages"][0] if report["bad_row_messages"] else ""
        out.append(f"{report['bad_rows']} bad rows skipped (first: {first})")
    if report["truncated"]:
        out.append(
            f"{report['truncated']} of {docs} documents are longer than --seq-len {cfg.seq_len} and were "
            "truncated: their ends are never trained on (--overlong drop drops them instead)"
        )
    if report["dropped_overlong"]:
        out.append(
            f"{report['dropped_overlong']} of {docs} documents are longer than --seq-len {cfg.seq_len} "
            "and were dropped"
        )
    if report["dropped_no_loss"]:
        why = " after truncation" if report["truncated"] else ""
        out.append(
            f"{report['dropped_no_loss']} of {docs} documents have no loss token{why} and were dropped"
        )
    if report["dropped_rows"]:
        total = report["loss_tokens"]
        lost = report["loss_tokens_dropped_by_batching"]
        out.append(
            f"{lost} of {total} loss tokens ({lost / max(total, 1):.1%}) are in no batch: the last "
            f"{_rows(report['dropped_rows'], cfg.pack)} fill no whole batch of --batch-size {cfg.batch_size} "
            "and are dropped"
        )
    return out


PROG = "storm-jax sft-data"


def build_parser():
    """The argparse parser of `storm-jax sft-data`."""
    import inspect

    from storm_jax.cli_util import ArgumentParser

    p = ArgumentParser(prog=PROG, description=inspect.cleandoc(main.__doc__ or ""))
    p.add_argument("path", help="JSONL file or glob")
    p.add_argument("--seq-len", type=int, required=True, help="training positions per row")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch")
    p.add_argument("--no-pack", action="store_true", help="one document per row (no packing)")
    p.add_argument(
        "--overlong", choices=("truncate", "drop"), default="truncate", help="documents over --seq-len"
    )
    p.add_argument("--skip-bad-rows", action="store_true", help="count malformed rows instead of stopping")
    p.add_argument("--no-thinking", action="store_true", help="render prompts without an open <think>")
    p.add_argument(
        "--tokenizer", default=None, help="checkpoint directory with tokenizer files (default: Qwen3)"
    )
    return p


def main(argv: list[str]) -> int:
    """`storm-jax sft-data PATH --seq-len N --batch-size B`: check a JSONL file and report its packing.

    Prints the report (JSON) on stdout and, on stderr, one line for each kind of data lost on the way to
    the batches. Exit status: 0, 1 when no batch with a loss token can be made, 2 for a usage error (a
    bad flag, a missing file, a malformed row).
    """
    import json

    from storm_jax.cli_util import UsageError, check_range, fail

    prog = PROG
    p = build_parser()
    a = p.parse_args(argv)
    try:
        check_range("--seq-len", a.seq_len, lo=1)
        check_range("--batch-size", a.batch_size, lo=1)
        if a.tokenizer is not None and not os.path.isdir(a.tokenizer):
            raise UsageError(f"--tokenizer {a.tokenizer}: no such directory")
    except UsageError as e:
        return fail(prog, str(e))
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
    except (ValueError, OSError) as e:
        return fail(prog, str(e))
    print(json.dumps(report, indent=2))
    for line in report_warnings(report, cfg):
        print(f"{prog}: warning: {line}", file=sys.stderr)
    if report["batches"] == 0 or report["loss_tokens_in_batches"] == 0:
        print(
            f"{prog}: nothing trainable: {report['examples']} documents make {report['batches']} full batches "
            f"of --batch-size {cfg.batch_size} ({report['loss_tokens_in_batches']} loss tokens)",
            file=sys.stderr,
        )
        return 1
    return 0
