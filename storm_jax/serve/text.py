"""From a sample's growing token list to the text OpenAI clients expect, streamed or whole.

One `TextStream` per sample turns published `SampleState`s into text deltas, each with the tokens it covers
(for log-probs). A streamed response and a whole one go through the same object, so under greedy decoding
the concatenated chunks equal the whole text exactly. Rules:

* an end-of-turn id that ended the sample is not text (the sampler keeps it in the tokens);
* a stop string is cut off with everything after it (OpenAI's semantics; the sampler keeps the token that
  completes it). It is searched in the last model-written run only: tool output may contain anything;
* while a sample runs, text that might be the start of a stop string (its last len(stop) - 1 characters)
  and an incomplete UTF-8 character at the end (U+FFFD) are held back, so nothing emitted is ever retracted.

Deltas are token aligned: every emitted token's text is complete. Decoding is incremental (from the last
emitted token), so a chunk costs what it adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from storm_jax.serve.engine import SampleState

REPLACEMENT = "\ufffd"


@dataclasses.dataclass
class Delta:
    """New text of a sample and the token indices [start, end) it covers."""

    text: str
    start: int
    end: int


class TextStream:
    """Incremental text of one sample (see the module docstring)."""

    def __init__(
        self, decode: Callable[[list[int]], str], stop_strings: Sequence[str], eos_ids: Sequence[int]
    ):
        self.decode = decode
        self.stops = tuple(s for s in stop_strings if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.eos = frozenset(int(i) for i in eos_ids)
        self.text = ""  # emitted so far
        self.n_tokens = 0  # tokens whose text is in `self.text`
        self.finished = False

    def visible_tokens(self, st: SampleState) -> int:
        """Tokens that make up the text: all but an ending end-of-turn id."""
        n = len(st.tokens)
        if st.done and n and st.tokens[-1] in self.eos and st.stop_reason == "eos":
            n -= 1
        return n

    def update(self, st: SampleState) -> Delta | None:
        """The text `st` adds to what was emitted (None when nothing can be emitted yet)."""
        if self.finished:
            return None
        start = self.n_tokens
        if st.done:
            self.finished = True
            end = self.visible_tokens(st)
            new = self.decode(st.tokens[start:end]) if end > start else ""
            full = self.text + new
            if st.stop_reason == "stop" and self.stops:
                cut = self._stop_at(full, st)
                if cut is not None:
                    new = full[len(self.text) : cut] if cut >= len(self.text) else ""
            self.text += new
            self.n_tokens = end
            return Delta(new, start, end)
        end = len(st.tokens)
        if end <= start:
            return None
        new = self.decode(st.tokens[start:end])
        # Back off token by token until the emitted text ends clean and clear of a possible stop prefix.
        limit = len(self.text) + len(new) - self.hold
        while end > start and (new.endswith(REPLACEMENT) or len(self.text) + len(new) > limit):
            end -= 1
            new = self.decode(st.tokens[start:end]) if end > start else ""
        if end == start:
            return None
        self.text += new
        self.n_tokens = end
        return Delta(new, start, end)

    def _stop_at(self, full: str, st: SampleState) -> int | None:
        """Character index of the earliest stop string in the last model-written run of `full`."""
        turn_text = len(self.decode(st.tokens[: st.turn_start])) if st.turn_start else 0
        hits = [i for s in self.stops if (i := full.find(s, turn_text)) >= 0]
        return min(hits) if hits else None


def token_bytes_table(tokenizer) -> Callable[[int], bytes]:
    """id -> the exact bytes of that token (byte-level vocabulary; added tokens as their UTF-8 text)."""
    from storm_jax.tokenizer import _byte_to_unicode

    to_byte = {c: b for b, c in _byte_to_unicode().items()}
    added = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items()}
    cache: dict[int, bytes] = {}

    def token_bytes(i: int) -> bytes:
        b = cache.get(i)
        if b is None:
            if i in added:
                b = added[i].encode("utf-8")
            else:
                piece = tokenizer.convert_ids_to_tokens(int(i)) or ""
                b = bytes(to_byte[c] for c in piece if c in to_byte)
            cache[i] = b
        return b

    return token_bytes


def chat_logprobs(st: SampleState, start: int, end: int, token_bytes: Callable[[int], bytes]) -> list[dict]:
    """OpenAI chat `logprobs.content` entries for tokens [start, end) (host-written tokens: log-prob 0)."""
    out = []
    for i in range(start, end):
        b = token_bytes(st.tokens[i])
        out.append(
            {
                "token": b.decode("utf-8", errors="replace"),
                "logprob": float(st.logprobs[i]),
                "bytes": list(b),
                "top_logprobs": [],
            }
        )
    return out


def completion_logprobs(
    st: SampleState, start: int, end: int, token_bytes: Callable[[int], bytes], offset: int
) -> dict:
    """Legacy completions `logprobs` (tokens, token_logprobs, text_offset) for tokens [start, end)."""
    tokens, lps, offsets = [], [], []
    pos = offset
    for i in range(start, end):
        t = token_bytes(st.tokens[i]).decode("utf-8", errors="replace")
        tokens.append(t)
        lps.append(float(st.logprobs[i]))
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": None, "text_offset": offsets}


def finish_reason(st: SampleState) -> str:
    """OpenAI finish_reason of a finished sample: length when a budget ran out, else stop."""
    return "length" if st.stop_reason in ("max_tokens", "max_tool_calls") else "stop"


__all__ = [
    "Delta",
    "TextStream",
    "chat_logprobs",
    "completion_logprobs",
    "finish_reason",
    "token_bytes_table",
]
