"""Shared pieces of the `storm-jax` commands: one-line usage errors, help with defaults, input checks.

Every command reports a user error (a missing file, a bad flag value, a corrupt checkpoint) as ONE line
`storm-jax <command>: <what>` naming the flag, file or config key, and exits 2 - before it builds a model
or reads weights. The checks here are the cheap ones that make that possible: they read directory
listings, JSON files and safetensors headers, never tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Exit status of a usage error (argparse's, and `storm-jax score`'s).
USAGE_EXIT = 2


class UsageError(ValueError):
    """A user error the command reports in one line (exit 2); the message names the flag/file/key."""


# ----------------------------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------------------------


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append `(default: X)` to the help of every option with a meaningful default (idempotent).

    argparse's ArgumentDefaultsHelpFormatter skips options without a help string; this does not, so it also
    works on parsers this module does not build (score, synth).
    """
    for a in parser._actions:
        if not a.option_strings or a.required or isinstance(a, argparse._HelpAction):
            continue
        # Identity, not ==: a default of 0 is worth showing, False (a store_true flag's) is not.
        if a.default is None or a.default is False or a.default == argparse.SUPPRESS:
            continue
        if isinstance(a, argparse._StoreConstAction):
            continue
        text = a.help or ""
        if "%(default)" in text or "(default:" in text:
            continue
        a.help = f"{text} (default: %(default)s)".strip()
    return parser


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`prog: message (see prog --help)`, exit 2) and defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        show_defaults(self)
        return super().format_help()

    def error(self, message: str):  # noqa: D102 - argparse API
        # The default prints the whole usage block first (several lines for the long commands).
        self.exit(USAGE_EXIT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def fail(prog: str, message: str) -> int:
    """Print `prog: message` on stderr; returns the usage exit status."""
    print(f"{prog}: {message}", file=sys.stderr)
    return USAGE_EXIT


def check_range(flag: str, value: float, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:  # fmt: skip
    """Raise UsageError naming `flag` unless lo <= value <= hi (`lo_open`/`hi_open`: strict bounds)."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        if hi is None:
            rule = f"{'>' if lo_open else '>='} {lo}"
        elif lo is None:
            rule = f"{'<' if hi_open else '<='} {hi}"
        else:
            rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise UsageError(f"{flag} {value}: must be {rule}")


# ----------------------------------------------------------------------------------------------------------------
# Input checks (cheap: no tensors are read)
# ----------------------------------------------------------------------------------------------------------------


def check_hf_dir(path: str, what: str) -> None:
    """An HF checkpoint directory that `load_hf_checkpoint` can read: config.json and intact safetensors headers.

    `what` names the flag or config key (`--checkpoint`, `init_from_hf`). A truncated shard is caught here: its
    header declares more bytes than the file holds.
    """
    from storm_jax.models.hf import CheckpointError, load_hf_config
    from storm_jax.models.safetensors_io import SafetensorsError, SafetensorsFile

    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"{what} {path}: no such directory")
    try:
        load_hf_config(str(d))
    except CheckpointError as e:
        raise UsageError(f"{what}: {e}") from None
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{what}: {index}: not a valid safetensors index ({e})") from None
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise UsageError(f"{what} {path}: no model.safetensors or model.safetensors.index.json")
    for name in files:
        f = d / name
        if not f.is_file():
            raise UsageError(f"{what}: {f}: shard listed in {index.name} is missing")
        try:
            SafetensorsFile(str(f))
        except SafetensorsError as e:
            raise UsageError(f"{what}: {e}") from None


def params_subdir(path: str) -> Path:
    """The Orbax params directory of a `storm-jax convert --to-params` output (or the directory itself)."""
    p = Path(path)
    return p / "params" if (p / "params").is_dir() else p


def check_params_dir(path: str, what: str) -> Path:
    """An Orbax params checkpoint directory (`storm-jax convert --to-params`); returns the params directory."""
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"{what} {path}: no such directory")
    d = params_subdir(path)
    # Orbax writes _METADATA (tree structure) and _CHECKPOINT_METADATA when a save completes.
    if not any((d / name).exists() for name in ("_METADATA", "_CHECKPOINT_METADATA")):
        raise UsageError(f"{what} {path}: not an Orbax params checkpoint (no {d.name}/_METADATA)")
    return d


def check_file(path: str, what: str) -> None:
    """`path` is a readable regular file."""
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")


# ----------------------------------------------------------------------------------------------------------------
# HF output directories
# ----------------------------------------------------------------------------------------------------------------


def tokenizer_for(vocab_size: int, candidates: Iterable[str | None]) -> Any | None:
    """The tokenizer an HF directory of this model should carry, or None when none is known.

    The first candidate directory holding tokenizer files wins (the checkpoint it came from); otherwise a
    model over the Qwen vocabulary gets the built Qwen3 tokenizer.
    """
    from storm_jax.tokenizer import VOCAB_SIZE, load_tokenizer

    for d in candidates:
        if d and any((Path(d) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
            return load_tokenizer(d)
    if vocab_size >= VOCAB_SIZE:
        return load_tokenizer(None)
    return None


def make_world_readable(directory: str) -> None:
    """Give the files directly in `directory` the mode a plain `open(..., "w")` gives (0644 at umask 022).

    Files written through `tempfile.mkstemp` (the tokenizer's atomic writer) are created 0600, which makes an
    exported checkpoint unreadable to the other users of a shared file system.
    """
    umask = os.umask(0)
    os.umask(umask)
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, 0o666 & ~umask)
