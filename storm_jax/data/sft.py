"""SFT rows: read JSONL, validate, tokenize with the chat template, build per-token loss masks.

Two row formats are accepted (one JSON object per line; blank lines are ignored):

* chat rows, the common format of TRL and most tools::

      {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

  Every assistant turn carries loss; inline ```output blocks inside an assistant content are masked
  (`storm_jax.tokenizer.encode_chat`).

* trajectory rows, written by our generators (synthetic gold data, CALM)::

      {"id": ..., "messages": [{"role": "system", ...}?, {"role": "user", "content": ...}],
       "segments": [{"kind": "text"|"code"|"output"|"hint", "text": ...}, ...], "answer": ..., ...}

  The prompt is `messages` (it must end with a user turn); the assistant turn is `segments`, tokenized
  segment by segment exactly as a rollout produces it (`encode_prompt` + `encode_assistant_segments`).
  Text and code carry loss; output and hint segments are context only.

* token rows, written from rollouts (`storm_jax.sampling.rollout.trajectory_to_sft_row`)::

      {"prompt_ids": [int, ...], "response_ids": [int, ...], "loss_mask": [0|1, ...], "kinds": [...]?}

  The ids are used exactly as given (token-in/token-out: what the model sampled is what it trains on); the
  prompt carries no loss, each response id the given mask entry. No chat template is applied.

Documents become next-token training features (`example_features`): a document of ids x[0..n-1] with the
assistant-written flags m[0..n-1] gives tokens = x[:-1], targets = x[1:], loss_mask = m[1:] - the weight of
predicting targets[t] is the flag of the TARGET token. Because the shift happens per document, before
packing, no position ever predicts a token of another document.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from storm_jax.data.format import Segment

log = logging.getLogger(__name__)

OnBadRow = Literal["skip", "raise"]
Overlong = Literal["truncate", "drop"]

#: How many bad-row messages the stats keep (all are counted).
MAX_BAD_ROW_MESSAGES = 20

_ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class SFTRow:
    """One validated JSONL row. `segments` is None for chat rows."""

    source: str  # "<file>:<line>"
    messages: tuple[dict, ...]
    segments: tuple[Segment, ...] | None = None
    token_ids: tuple[int, ...] | None = None  # token rows: prompt + response ids, and their loss mask
    token_mask: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """A tokenized document: ids and, per token, whether the assistant wrote it (1) or not (0)."""

    ids: np.ndarray  # int32 [n]
    mask: np.ndarray  # uint8 [n]
    source: str  # "<file>:<line>"
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass
class SFTStats:
    """Counts of one load. Row counts cover every file; the token counts cover this process's shard."""

    files: list[str] = dataclasses.field(default_factory=list)
    rows_read: int = 0  # non-blank lines
    bad_rows: int = 0  # malformed rows skipped (on_bad_row="skip")
    bad_row_messages: list[str] = dataclasses.field(default_factory=list)  # the first MAX_BAD_ROW_MESSAGES
    local_rows: int = 0  # valid rows assigned to this process
    truncated: int = 0  # over-long documents cut to seq_len + 1 tokens (overlong="truncate")
    dropped_overlong: int = 0  # over-long documents dropped (overlong="drop")
    dropped_no_loss: int = 0  # documents left without any trained target (e.g. truncation cut the answer)
    examples: int = 0  # documents kept on this process
    tokens: int = 0  # training positions of the kept documents (document length - 1 each)
    loss_tokens: int = 0  # positions with loss weight 1

    def summary(self) -> str:
        return (
            f"{self.rows_read} rows in {len(self.files)} file(s), {self.bad_rows} bad skipped; this process: "
            f"{self.local_rows} rows -> {self.examples} documents ({self.truncated} truncated, "
            f"{self.dropped_overlong} dropped over-long, {self.dropped_no_loss} dropped without loss tokens), "
            f"{self.tokens} positions, {self.loss_tokens} with loss"
        )


# --------------------------------------------------------------------------------------------------------
# Reading and validating rows


def resolve_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The JSONL files named by a path, a glob, or a list of those (sorted within each glob)."""
    specs = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    files: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if glob.has_magic(spec):
            matched = sorted(glob.glob(spec))
            if not matched:
                raise FileNotFoundError(f"no file matches {spec!r}")
            files += matched
        elif os.path.isfile(spec):
            files.append(spec)
        else:
            raise FileNotFoundError(f"SFT data file {spec!r} does not exist")
    return files


def _check_message(i: int, m: Any) -> dict:
    if not isinstance(m, dict):
        raise ValueError(f"messages[{i}] must be an object, got {type(m).__name__}")
    if m.get("role") not in _ROLES:
        raise ValueError(f"messages[{i}].role = {m.get('role')!r}: expected one of {', '.join(_ROLES)}")
    if not isinstance(m.get("content"), str):
        raise ValueError(f"messages[{i}].content must be a string, got {type(m.get('content')).__name__}")
    return {"role": m["role"], "content": m["content"]}


def parse_row(obj: Any, source: str = "<row>") -> SFTRow:
    """Validate one decoded JSON row; raises ValueError saying what is wrong (without the location)."""
    if not isinstance(obj, dict):
        raise ValueError(f"row must be a JSON object, got {type(obj).__name__}")
    if "response_ids" in obj or "prompt_ids" in obj:
        return _parse_token_row(obj, source)
    raw = obj.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    messages = tuple(_check_message(i, m) for i, m in enumerate(raw))
    if "segments" in obj:
        segs = obj["segments"]
        if not isinstance(segs, list) or not segs:
            raise ValueError("'segments' must be a non-empty list of {kind, text} objects")
        segments = []
        for i, s in enumerate(segs):
            if not isinstance(s, dict):
                raise ValueError(f"segments[{i}] must be an object, got {type(s).__name__}")
            try:
                segments.append(Segment.from_json(s))
            except ValueError as e:
                raise ValueError(f"segments[{i}]: {e}") from None
        if messages[-1]["role"] != "user":
            raise ValueError(
                "a trajectory row's messages must end with a user turn (segments are the answer)"
            )
        if not any(s.trainable for s in segments):
            raise ValueError("no text or code segment: nothing the model wrote to train on")
        return SFTRow(source, messages, tuple(segments))
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("chat row has no assistant message (and no 'segments'): nothing to train on")
    return SFTRow(source, messages, None)


def _int_list(obj: dict, key: str, allowed: tuple[int, ...] | None = None) -> list[int]:
    v = obj.get(key)
    if not isinstance(v, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        raise ValueError(f"'{key}' must be a list of integers")
    if allowed is not None and any(t not in allowed for t in v):
        raise ValueError(f"'{key}' entries must be one of {allowed}")
    if any(t < 0 for t in v):
        raise ValueError(f"'{key}' has a negative id")
    return v


def _parse_token_row(obj: dict, source: str) -> SFTRow:
    prompt = _int_list(obj, "prompt_ids")
    response = _int_list(obj, "response_ids")
    mask = _int_list(obj, "loss_mask", (0, 1))
    if not prompt or not response:
        raise ValueError("'prompt_ids' and 'response_ids' must be non-empty")
    if len(mask) != len(response):
        raise ValueError(f"'loss_mask' has {len(mask)} entries for {len(response)} response_ids")
    if "kinds" in obj and (not isinstance(obj["kinds"], list) or len(obj["kinds"]) != len(response)):
        raise ValueError(f"'kinds' must be a list of {len(response)} span kinds")
    if not any(mask):
        raise ValueError("'loss_mask' is all 0: nothing the model wrote to train on")
    return SFTRow(source, (), None, tuple(prompt + response), tuple([0] * len(prompt) + mask))


def read_rows(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    on_bad_row: OnBadRow = "raise",
    stats: SFTStats | None = None,
) -> tuple[list[SFTRow], SFTStats]:
    """Read and validate every row of the JSONL file(s).

    A malformed row raises `ValueError("<file>:<line>: <what is wrong>")`, or with on_bad_row="skip" is
    counted in `stats.bad_rows` (and its message kept in `stats.bad_row_messages`) and skipped.
    """
    if on_bad_row not in ("skip", "raise"):
        raise ValueError(f"on_bad_row must be 'skip' or 'raise', got {on_bad_row!r}")
    stats = stats if stats is not None else SFTStats()
    rows: list[SFTRow] = []
    for file in resolve_files(path):
        stats.files.append(file)
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                stats.rows_read += 1
                source = f"{file}:{lineno}"
                try:
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"invalid JSON ({e})") from None
                    rows.append(parse_row(obj, source))
                except ValueError as e:
                    _bad_row(stats, f"{source}: {e}", on_bad_row)
    return rows, stats


def _bad_row(stats: SFTStats, message: str, on_bad_row: OnBadRow) -> None:
    if on_bad_row == "raise":
        raise ValueError(message)
    stats.bad_rows += 1
    if len(stats.bad_row_messages) < MAX_BAD_ROW_MESSAGES:
        stats.bad_row_messages.append(message)
    log.warning("skipping bad SFT row: %s", message)


# --------------------------------------------------------------------------------------------------------
# Tokenizing


def _trajectory_prompt_and_segments(
    tokenizer, row: SFTRow, enable_thinking: bool
) -> tuple[list[int], tuple[Segment, ...]]:
    """Prompt ids and response segments of a trajectory row, with the think prefix where the template puts it.

    A rollout's segments start after the generation prompt, which already ends with the think prefix
    (`think_prefix(enable_thinking)`). Rows that spell the prefix out at the start of their first text
    segment (as a chat content would) get it moved to the prompt, and a response that opens a different
    think block gets no prefix - the same rule `encode_chat` applies, so both row formats of one
    conversation give the same ids and mask.
    """
    from storm_jax.tokenizer import encode_prompt, encode_text, think_prefix

    messages = list(row.messages)
    segments = row.segments
    prefix = think_prefix(enable_thinking)
    first = segments[0]
    if first.kind == "text" and first.text.startswith(prefix):
        rest = first.text[len(prefix) :]
        segments = ((Segment("text", rest),) if rest else ()) + segments[1:]
    elif first.text.startswith("<think>"):
        # The response writes its own think block: prompt = conversation + "<|im_start|>assistant\n".
        head = encode_prompt(
            tokenizer, messages, enable_thinking=enable_thinking, add_generation_prompt=False
        )
        return head + encode_text(tokenizer, "<|im_start|>assistant\n"), segments
    return encode_prompt(tokenizer, messages, enable_thinking=enable_thinking), segments


def tokenize_row(row: SFTRow, tokenizer, *, enable_thinking: bool = True) -> TokenizedExample:
    """Token ids and assistant-written flags of a row, through the project's chat template."""
    from storm_jax.tokenizer import encode_assistant_segments, encode_chat

    if row.token_ids is not None:
        ids, mask = list(row.token_ids), list(row.token_mask)
    elif row.segments is None:
        ids, mask = encode_chat(tokenizer, list(row.messages), enable_thinking=enable_thinking)
    else:
        prompt, segments = _trajectory_prompt_and_segments(tokenizer, row, enable_thinking)
        resp, resp_mask = encode_assistant_segments(tokenizer, segments, close_turn=True)
        ids, mask = prompt + resp, [0] * len(prompt) + resp_mask
    if len(ids) != len(mask):
        raise AssertionError(f"{row.source}: {len(ids)} ids but {len(mask)} mask entries")
    return TokenizedExample(np.asarray(ids, np.int32), np.asarray(mask, np.uint8), row.source)


def fit_length(ex: TokenizedExample, seq_len: int, overlong: Overlong) -> TokenizedExample | None:
    """The document cut to fit `seq_len` training positions (seq_len + 1 ids), or None to drop it.

    A document of n ids yields n - 1 positions (the last id is only a target), so it fits if n <= seq_len + 1.
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    if len(ex) <= seq_len + 1:
        return ex
    if overlong == "drop":
        return None
    return dataclasses.replace(ex, ids=ex.ids[: seq_len + 1], mask=ex.mask[: seq_len + 1], truncated=True)


def load_rows(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer,
    *,
    on_bad_row: OnBadRow = "raise",
    enable_thinking: bool = True,
    seq_len: int | None = None,
    overlong: Overlong = "truncate",
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[list[TokenizedExample], SFTStats]:
    """Read, validate and tokenize the rows of this process's shard.

    Every process reads and validates all rows (so bad rows are reported identically everywhere), then keeps
    the valid rows i with i % process_count == process_index - disjoint shards that together cover every
    row - and tokenizes only those. With seq_len, over-long documents are truncated or dropped (counted).
    Documents without any trained target are dropped (counted).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    rows, stats = read_rows(path, on_bad_row=on_bad_row)
    local = rows[process_index::process_count]
    stats.local_rows = len(local)
    out: list[TokenizedExample] = []
    for row in local:
        try:
            ex = tokenize_row(row, tokenizer, enable_thinking=enable_thinking)
        except (ValueError, TypeError) as e:  # e.g. the template rejects something parse_row let through
            _bad_row(stats, f"{row.source}: {e}", on_bad_row)
            continue
        if seq_len is not None:
            fitted = fit_length(ex, seq_len, overlong)
            if fitted is None:
                stats.dropped_overlong += 1
                continue
            stats.truncated += int(fitted.truncated)
            ex = fitted
        n_loss = int(ex.mask[1:].sum())
        if n_loss == 0:
            stats.dropped_no_loss += 1
            continue
        stats.examples += 1
        stats.tokens += len(ex) - 1
        stats.loss_tokens += n_loss
        out.append(ex)
    return out, stats


def example_features(ex: TokenizedExample) -> dict[str, np.ndarray]:
    """Next-token features of one document (see the module docstring): tokens, targets, loss_mask."""
    return {
        "tokens": ex.ids[:-1].astype(np.int32),
        "targets": ex.ids[1:].astype(np.int32),
        "loss_mask": ex.mask[1:].astype(np.float32),
    }
