"""The chat-client interface every teacher, intervener and expert goes through, and its on-disk cache.

A client has one method, `complete(messages, **params) -> Completion`: `messages` is an OpenAI-style list
of {"role", "content"}; `params` are request parameters (temperature, max_tokens, seed, ...). A
`Completion` carries the text, the token usage and whether it came from the cache. Every client keeps
`ClientStats` (requests sent, cache hits, retries, failures, tokens, cost).

The cache (`ResponseCache`) is keyed by the full request body - model, messages and parameters, as
canonical JSON (sorted keys, no whitespace) hashed with sha256 - so a rerun of a job never sends (or pays
for) a request it already made. The endpoint URL and the key are not part of the body: moving to another
proxy of the same model reuses the answers, and nothing secret is ever hashed or written. Each entry is
one JSON file written through a temporary file and a rename, so a kill leaves either no entry or a
whole one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

Messages = Sequence[dict]


class ClientError(RuntimeError):
    """A request that failed for good (after retries, or a non-retryable error). Never holds a secret."""


@dataclasses.dataclass(frozen=True)
class Usage:
    """Tokens of one completion and what it cost (0 for local/scripted clients and cache hits)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclasses.dataclass(frozen=True)
class Completion:
    """One answer of a chat client."""

    text: str
    usage: Usage = Usage()
    cached: bool = False
    finish_reason: str | None = None


class ChatClient(Protocol):
    """What a job needs of a chat client."""

    def complete(self, messages: Messages, **params: Any) -> Completion: ...


@dataclasses.dataclass
class ClientStats:
    """Counters of a client (thread-safe through `add`)."""

    requests: int = 0  # requests that reached the endpoint (each attempt of a retried one counts)
    completions: int = 0  # completions returned (cache hits included)
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def to_json(self) -> dict:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_lock"}


def canonical_json(obj: Any) -> str:
    """The canonical form the cache key hashes: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(body: dict) -> str:
    """sha256 hex of the canonical JSON of a request body."""
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def normalize_messages(messages: Messages) -> list[dict]:
    """Plain {"role", "content"} dicts; raises ValueError naming the bad message."""
    out = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(f"messages[{i}]: expected {{'role': str, 'content': str}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ResponseCache:
    """Completions on disk, one JSON file per request key (`<dir>/<key[:2]>/<key>.json`)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, body: dict) -> Completion | None:
        path = self._path(request_key(body))
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # cannot happen with atomic writes; a hand-damaged entry is simply re-requested
        r = entry["response"]
        return Completion(
            r["text"], Usage(**r.get("usage", {})), cached=True, finish_reason=r.get("finish_reason")
        )

    def put(self, body: dict, completion: Completion) -> None:
        path = self._path(request_key(body))
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "request": body,
            "response": {
                "text": completion.text,
                "usage": dataclasses.asdict(completion.usage),
                "finish_reason": completion.finish_reason,
            },
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(canonical_json(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json"))


class CachedClient:
    """Any client behind a `ResponseCache` (the HTTP client has its own; this is for local/scripted ones)."""

    def __init__(self, inner: ChatClient, cache_dir: str | os.PathLike, namespace: str):
        self.inner, self.cache, self.namespace = inner, ResponseCache(cache_dir), namespace
        self.stats = ClientStats()

    def complete(self, messages: Messages, **params: Any) -> Completion:
        body = {"model": self.namespace, "messages": normalize_messages(messages), **params}
        hit = self.cache.get(body)
        if hit is not None:
            self.stats.add(completions=1, cache_hits=1)
            return hit
        out = self.inner.complete(messages, **params)
        self.cache.put(body, out)
        self.stats.add(completions=1, prompt_tokens=out.usage.prompt_tokens,
                       completion_tokens=out.usage.completion_tokens, cost_usd=out.usage.cost_usd)  # fmt: skip
        return out
