"""Preference pairs for (weighted) DPO: read JSONL rows, validate, tokenize, fit to seq_len, batch in pairs.

Two row formats (one JSON object per line; blank lines ignored; both may carry `weight` and reference
log-probs):

* TRL-style rows::

      {"prompt": str | [messages], "chosen": str | [one assistant message],
       "rejected": str | [one assistant message], "weight": float = 1}

  A string prompt is one user turn; a message list must end with a user turn. Each side is tokenized as the
  conversation prompt + that assistant turn through the project's chat template (`encode_chat`): only the
  response's own text/code tokens and its closing `<|im_end|>` carry loss; inline ```output blocks, the
  think prefix of the generation prompt and every prompt token (earlier assistant turns included) do not.

* token rows, written by the self-evolving loop from sampled trajectories (kept exactly)::

      {"prompt_ids": [int], "chosen_ids": [int], "chosen_mask": [0|1], "rejected_ids": [int],
       "rejected_mask": [0|1], "weight": float = 1}

  Sequence = prompt_ids + chosen_ids, mask = 0 on the prompt + chosen_mask (0 on tool output).

Optional in both: `ref_chosen_logp`, `ref_rejected_logp` (summed reference log-probs, both or neither), as
written by `write_token_rows` after `storm_jax.train.dpo_loss.precompute_reference_logps`.
Weights must be finite and >= 0 (StepORLM: 1 when the solver separates the pair, |delta process score| when
only the process reward model does). A bad row raises `ValueError("<file>:<line>: <field>: <what>")`.

Length rule (seq_len = T training positions; a sequence of n ids fits when n <= T + 1, as for SFT):
    overlong="drop"      a pair with either sequence too long is dropped (counted). The default: a DPO
                         preference is about the whole trajectory, and a cut one may hide what was judged.
    overlong="truncate"  each too-long sequence keeps its first T + 1 ids (the prompt first, then the start
                         of the response); the pair is counted as truncated.
Either way, a pair whose chosen or rejected sequence has no loss-masked target left is dropped (counted).

Batches (`make_preference_iterator`, a checkpointable grain iterator with get_state()/set_state()): dicts of
numpy arrays, P = pairs per local batch, each sequence alone in its row, right-padded (no packing):

    tokens, targets      int32   [P, 2, T]   [:, 0] chosen, [:, 1] rejected (never split: own axis)
    loss_mask            float32 [P, 2, T]   weight of predicting targets[t] (the target token's flag)
    segment_ids          int32   [P, 2, T]   1 on the sequence, 0 on padding
    positions            int32   [P, 2, T]
    weight               float32 [P]
    ref_logps            float32 [P, 2]      only when every pair carries reference log-probs
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from storm_jax.data.sft import MAX_BAD_ROW_MESSAGES, TokenizedExample, resolve_files

log = logging.getLogger(__name__)

Overlong = Literal["truncate", "drop"]
OnBadRow = Literal["skip", "raise"]

TOKEN_FIELDS = ("prompt_ids", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
TEXT_FIELDS = ("prompt", "chosen", "rejected")
REF_FIELDS = ("ref_chosen_logp", "ref_rejected_logp")
_KNOWN = frozenset((*TOKEN_FIELDS, *TEXT_FIELDS, *REF_FIELDS, "weight"))


class RowError(ValueError):
    """A malformed row; `field` names the offending key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One validated, tokenized pair: full sequences (prompt + response) with response-token flags."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    weight: float
    source: str  # "<file>:<line>"
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None
    truncated: bool = False

    @property
    def has_ref(self) -> bool:
        return self.ref_chosen_logp is not None


@dataclasses.dataclass
class PreferenceStats:
    """Counts of one load. Row counts cover every file; pair counts cover this process's shard."""

    files: list[str] = dataclasses.field(default_factory=list)
    rows_read: int = 0
    bad_rows: int = 0  # skipped (on_bad_row="skip")
    bad_row_messages: list[str] = dataclasses.field(default_factory=list)
    local_rows: int = 0
    truncated: int = 0  # pairs with a sequence cut to seq_len + 1 ids (overlong="truncate")
    dropped_overlong: int = 0  # pairs dropped for length (overlong="drop")
    dropped_no_loss: int = 0  # pairs with a side left without any loss-masked target
    pairs: int = 0  # kept on this process
    tokens: int = 0  # training positions of the kept sequences
    loss_tokens: int = 0

    def summary(self) -> str:
        return (
            f"{self.rows_read} rows in {len(self.files)} file(s), {self.bad_rows} bad skipped; this process: "
            f"{self.local_rows} rows -> {self.pairs} pairs ({self.truncated} truncated, {self.dropped_overlong} "
            f"dropped over-long, {self.dropped_no_loss} dropped without loss tokens), {self.tokens} positions, "
            f"{self.loss_tokens} with loss"
        )


# --------------------------------------------------------------------------------------------------------
# Validation


def _number(obj: dict, field: str, default: float | None) -> float | None:
    if field not in obj or obj[field] is None:
        return default
    x = obj[field]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RowError(field, f"must be a number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise RowError(field, f"must be finite, got {x}")
    return x


def _weight(obj: dict) -> float:
    w = _number(obj, "weight", 1.0)
    if w < 0:
        raise RowError("weight", f"must be >= 0, got {w}")
    return w


def _ref(obj: dict) -> tuple[float | None, float | None]:
    rc, rr = _number(obj, "ref_chosen_logp", None), _number(obj, "ref_rejected_logp", None)
    if (rc is None) != (rr is None):
        missing = "ref_rejected_logp" if rr is None else "ref_chosen_logp"
        raise RowError(
            missing, "reference log-probs come in pairs: both ref_chosen_logp and ref_rejected_logp"
        )
    return rc, rr


def _id_list(obj: dict, field: str, vocab_size: int | None) -> list[int]:
    x = obj.get(field)
    if not isinstance(x, list) or not x:
        raise RowError(field, "must be a non-empty list of token ids")
    for i, t in enumerate(x):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise RowError(field, f"[{i}] = {t!r} is not a token id (an int >= 0)")
        if vocab_size is not None and t >= vocab_size:
            raise RowError(field, f"[{i}] = {t} is outside the vocabulary (size {vocab_size})")
    return x


def _mask_list(obj: dict, field: str, n: int) -> list[int]:
    x = obj.get(field)
    if not isinstance(x, list):
        raise RowError(field, "must be a list of 0/1 flags")
    if len(x) != n:
        raise RowError(field, f"has {len(x)} entries for {n} ids")
    for i, m in enumerate(x):
        if m not in (0, 1):  # also refuses 0.5, "1", None (True/False pass as 1/0)
            raise RowError(field, f"[{i}] = {m!r}: flags must be 0 or 1")
    return [int(m) for m in x]


def _messages(field: str, x: Any, *, roles: Sequence[str]) -> list[dict]:
    if not isinstance(x, list) or not x:
        raise RowError(field, "must be a string or a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(x):
        if not isinstance(m, dict):
            raise RowError(field, f"[{i}] must be an object, got {type(m).__name__}")
        if m.get("role") not in roles:
            raise RowError(field, f"[{i}].role = {m.get('role')!r}: expected one of {', '.join(roles)}")
        if not isinstance(m.get("content"), str):
            raise RowError(field, f"[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt_messages(obj: dict) -> list[dict]:
    x = obj.get("prompt")
    if isinstance(x, str):
        if not x:
            raise RowError("prompt", "is empty")
        return [{"role": "user", "content": x}]
    msgs = _messages("prompt", x, roles=("system", "user", "assistant"))
    if msgs[-1]["role"] != "user":
        raise RowError("prompt", "a message list must end with a user turn (the response answers it)")
    return msgs


def _response_text(obj: dict, field: str) -> str:
    x = obj.get(field)
    if isinstance(x, str):
        if not x:
            raise RowError(field, "is empty")
        return x
    msgs = _messages(field, x, roles=("assistant",))
    if len(msgs) != 1:
        raise RowError(field, f"must hold exactly one assistant message, got {len(msgs)}")
    if not msgs[0]["content"]:
        raise RowError(field, "the assistant message is empty")
    return msgs[0]["content"]


# --------------------------------------------------------------------------------------------------------
# Tokenizing


def encode_response(
    tokenizer, prompt: list[dict], response: str, *, enable_thinking: bool = True
) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + one assistant response, mask 1 only on the response's trained tokens.

    Built with `encode_chat` (the SFT chat rows' encoder). Two changes for a preference side: prompt tokens
    get mask 0 even when they are earlier assistant turns (encode_chat trains every assistant turn), and the
    "\\n" the template writes after the final `<|im_end|>` is dropped (a sampled response ends at im_end).
    """
    from storm_jax.tokenizer import encode_chat, encode_prompt, encode_text

    ids, mask = encode_chat(
        tokenizer, [*prompt, {"role": "assistant", "content": response}], enable_thinking=enable_thinking
    )
    head = encode_prompt(tokenizer, prompt, enable_thinking=enable_thinking, add_generation_prompt=False)
    if ids[: len(head)] != head:
        raise AssertionError("chat encoding does not start with the prompt's encoding")
    mask = [0] * len(head) + list(mask[len(head) :])
    newline = encode_text(tokenizer, "\n")
    if ids[-len(newline) :] != newline or any(mask[-len(newline) :]):
        raise AssertionError("chat encoding does not end with the untrained newline after <|im_end|>")
    return ids[: -len(newline)], mask[: -len(newline)]


def parse_pair(
    obj: Any,
    source: str = "<row>",
    tokenizer=None,
    *,
    enable_thinking: bool = True,
    vocab_size: int | None = None,
    tokenize: bool = True,
) -> PreferencePair | None:
    """Validate and tokenize one decoded row; raises RowError naming the field (without the location).

    tokenize=False only validates (returns None): text fields are checked by shape, not encoded.
    """
    if isinstance(obj, _BadJSON):
        raise RowError("row", f"invalid JSON ({obj.error})")
    if not isinstance(obj, dict):
        raise RowError("row", f"must be a JSON object, got {type(obj).__name__}")
    has_tok = [f for f in TOKEN_FIELDS if f in obj]
    has_txt = [f for f in TEXT_FIELDS if f in obj]
    if has_tok and has_txt:
        raise RowError(
            has_tok[0], f"a row is either a text row or a token row, not both (also has {has_txt[0]!r})"
        )
    unknown = sorted(set(obj) - _KNOWN)
    if unknown:
        raise RowError(unknown[0], "unknown field")
    weight = _weight(obj)
    rc, rr = _ref(obj)
    if has_tok:
        for f in TOKEN_FIELDS:
            if f not in obj:
                raise RowError(f, "missing (token rows need prompt_ids, chosen_ids/mask, rejected_ids/mask)")
        prompt = _id_list(obj, "prompt_ids", vocab_size)
        sides = []
        for side in ("chosen", "rejected"):
            ids = _id_list(obj, f"{side}_ids", vocab_size)
            mask = _mask_list(obj, f"{side}_mask", len(ids))
            if not tokenize:
                continue
            sides.append(
                TokenizedExample(
                    np.asarray(prompt + ids, np.int32), np.asarray([0] * len(prompt) + mask, np.uint8), source
                )
            )
        if not tokenize:
            return None
    else:
        for f in TEXT_FIELDS:
            if f not in obj:
                raise RowError(f, "missing (text rows need prompt, chosen, rejected)")
        prompt_msgs = _prompt_messages(obj)
        texts = [_response_text(obj, "chosen"), _response_text(obj, "rejected")]
        if not tokenize:
            return None
        if tokenizer is None:
            # A caller's mistake, not a bad row: never skipped by on_bad_row="skip".
            raise TypeError("text rows need a tokenizer (pass one to the loader)")
        sides = []
        for side, text in zip(("chosen", "rejected"), texts):
            try:
                ids, mask = encode_response(tokenizer, prompt_msgs, text, enable_thinking=enable_thinking)
            except (ValueError, TypeError) as e:
                raise RowError(side, f"cannot be tokenized ({e})") from None
            sides.append(TokenizedExample(np.asarray(ids, np.int32), np.asarray(mask, np.uint8), source))
    return PreferencePair(sides[0], sides[1], weight, source, rc, rr)


def _fit(ex: TokenizedExample, seq_len: int) -> TokenizedExample:
    return dataclasses.replace(ex, ids=ex.ids[: seq_len + 1], mask=ex.mask[: seq_len + 1], truncated=True)


def fit_pair(pair: PreferencePair, seq_len: int, overlong: Overlong) -> PreferencePair | None:
    """The pair fitted to seq_len training positions (module docstring), or None if it must be dropped.

    Reference log-probs stored with a truncated pair no longer match its sequences, so they are removed.
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    c_long, r_long = len(pair.chosen) > seq_len + 1, len(pair.rejected) > seq_len + 1
    if not (c_long or r_long):
        return pair
    if overlong == "drop":
        return None
    return dataclasses.replace(
        pair,
        chosen=_fit(pair.chosen, seq_len) if c_long else pair.chosen,
        rejected=_fit(pair.rejected, seq_len) if r_long else pair.rejected,
        truncated=True,
        ref_chosen_logp=None,
        ref_rejected_logp=None,
    )


def _bad(stats: PreferenceStats, message: str, on_bad_row: OnBadRow) -> None:
    if on_bad_row == "raise":
        raise ValueError(message)
    stats.bad_rows += 1
    if len(stats.bad_row_messages) < MAX_BAD_ROW_MESSAGES:
        stats.bad_row_messages.append(message)
    log.warning("skipping bad preference row: %s", message)


def build_pairs(
    items: Iterable[tuple[str, Any]],
    tokenizer=None,
    *,
    seq_len: int | None = None,
    overlong: Overlong = "drop",
    on_bad_row: OnBadRow = "raise",
    enable_thinking: bool = True,
    vocab_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    stats: PreferenceStats | None = None,
) -> tuple[list[PreferencePair], PreferenceStats]:
    """Pairs from (source, decoded row) items: validate all, keep rows i % process_count == process_index.

    Every process validates every row (so a bad row is reported identically everywhere) and tokenizes only
    its own shard. With seq_len, pairs are fitted (fit_pair); pairs without loss targets are dropped.
    """
    if on_bad_row not in ("skip", "raise"):
        raise ValueError(f"on_bad_row must be 'skip' or 'raise', got {on_bad_row!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    stats = stats if stats is not None else PreferenceStats()
    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer)
    out: list[PreferencePair] = []
    valid_index = 0
    for source, obj in items:
        stats.rows_read += 1
        local = valid_index % process_count == process_index
        try:
            # Rows of other processes are validated without tokenizing (cheap): token fields fully, text
            # fields by shape; a tokenizer error of a text row surfaces on the process that owns it.
            pair = parse_pair(
                obj, source, tokenizer, enable_thinking=enable_thinking, vocab_size=vocab_size, tokenize=local
            )
        except ValueError as e:
            _bad(stats, f"{source}: {e}", on_bad_row)
            continue
        except TypeError as e:
            raise TypeError(f"{source}: {e}") from None
        valid_index += 1
        if not local:
            continue
        stats.local_rows += 1
        if seq_len is not None:
            fitted = fit_pair(pair, seq_len, overlong)
            if fitted is None:
                stats.dropped_overlong += 1
                continue
            stats.truncated += int(fitted.truncated)
            pair = fitted
        if int(pair.chosen.mask[1:].sum()) == 0 or int(pair.rejected.mask[1:].sum()) == 0:
            stats.dropped_no_loss += 1
            continue
        stats.pairs += 1
        for ex in (pair.chosen, pair.rejected):
            stats.tokens += len(ex) - 1
            stats.loss_tokens += int(ex.mask[1:].sum())
        out.append(pair)
    return out, stats


def _iter_jsonl(files: Sequence[str]) -> Iterator[tuple[str, Any]]:
    for file in files:
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                source = f"{file}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    obj = _BadJSON(str(e))
                yield source, obj


@dataclasses.dataclass(frozen=True)
class _BadJSON:
    error: str


def load_pairs(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer=None,
    *,
    seq_len: int | None = None,
    overlong: Overlong = "drop",
    on_bad_row: OnBadRow = "raise",
    enable_thinking: bool = True,
    vocab_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[list[PreferencePair], PreferenceStats]:
    """Read, validate, tokenize and fit the preference rows of JSONL file(s) (this process's shard)."""
    files = resolve_files(path)
    stats = PreferenceStats(files=list(files))
    return build_pairs(
        _iter_jsonl(files),
        tokenizer,
        seq_len=seq_len,
        overlong=overlong,
        on_bad_row=on_bad_row,
        enable_thinking=enable_thinking,
        vocab_size=vocab_size,
        process_index=process_index,
        process_count=process_count,
        stats=stats,
    )


def pairs_from_rows(
    rows: Sequence[dict], tokenizer=None, **kw
) -> tuple[list[PreferencePair], PreferenceStats]:
    """build_pairs over in-memory rows (the evolve loop's), named "<rows>:<index>" in errors."""
    return build_pairs(((f"<rows>:{i}", r) for i, r in enumerate(rows)), tokenizer, **kw)


def write_token_rows(path: str | os.PathLike, pairs: Sequence[PreferencePair]) -> None:
    """Write pairs as token rows (with their reference log-probs); reading them back gives the same pairs.

    prompt_ids is the longest common prefix of the two sequences on which both masks are 0.
    """
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            c, r = p.chosen, p.rejected
            n = min(len(c), len(r))
            k = 0
            while k < n and c.ids[k] == r.ids[k] and c.mask[k] == 0 and r.mask[k] == 0:
                k += 1
            if k == 0:
                raise ValueError(f"{p.source}: chosen and rejected share no prompt token")
            row = {
                "prompt_ids": c.ids[:k].tolist(),
                "chosen_ids": c.ids[k:].tolist(),
                "chosen_mask": c.mask[k:].tolist(),
                "rejected_ids": r.ids[k:].tolist(),
                "rejected_mask": r.mask[k:].tolist(),
                "weight": p.weight,
            }
            if p.has_ref:
                row["ref_chosen_logp"], row["ref_rejected_logp"] = p.ref_chosen_logp, p.ref_rejected_logp
            f.write(json.dumps(row) + "\n")


# Batching lives in preference_batches.py; its public names are importable from here as before (resolved on
# first use, so the two modules do not import each other at load time).
_BATCH_NAMES = (
    "pair_features",
    "eval_batches",
    "PreferenceDataConfig",
    "make_pair_dataset",
    "make_preference_iterator",
)


def __getattr__(name: str) -> Any:
    if name in _BATCH_NAMES:
        from storm_jax.data import preference_batches

        return getattr(preference_batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
