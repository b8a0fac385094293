"""An OpenAI-compatible chat-completions client on the official `openai` package.

Works with any endpoint speaking `POST {base_url}/chat/completions` (OpenAI, vLLM, SGLang, LiteLLM,
`storm-jax serve`). What it adds to the package:

* the API key is read from an environment variable whose *name* is configured (`api_key_env`); the key
  itself is never stored in the config, a log line, an error message or the cache;
* at most `max_concurrency` requests in flight (a semaphore held only around the HTTP call, never while
  waiting to retry);
* retries on 429 (waiting what the `Retry-After` / `retry-after-ms` header asks, else backoff), on 5xx,
  timeouts and connection errors: exponential backoff `backoff_s * 2**attempt` capped at `backoff_max_s`,
  with jitter; the package's own retries are switched off so every attempt is counted here;
* a per-request timeout (`timeout_s`);
* token and cost accounting (`price_in_per_mtok` / `price_out_per_mtok`, US$ per million tokens);
* the on-disk cache of storm_jax.clients.base: a cached request is answered without touching the network.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import os
import random
import threading
import time
from typing import Any

from storm_jax.clients.base import (
    ClientError,
    ClientStats,
    Completion,
    Messages,
    ResponseCache,
    Usage,
    normalize_messages,
)

log = logging.getLogger("storm_jax.clients")


@dataclasses.dataclass(frozen=True)
class HTTPClientConfig:
    """Settings of `OpenAIClient` (safe to save with a run: it holds the key's variable name, not the key)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    max_retries: int = 6
    timeout_s: float = 120.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    cache_dir: str = ""  # "" = no cache
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    default_params: tuple[tuple[str, Any], ...] = ()  # e.g. (("temperature", 0.0),)

    def __post_init__(self):
        if not self.base_url or not self.model:
            raise ValueError("HTTPClientConfig: base_url and model must be set")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError(
                "HTTPClientConfig: max_concurrency >= 1, max_retries >= 0, timeout_s > 0 required"
            )


def retry_after_s(headers: Any) -> float | None:
    """Seconds a `Retry-After` (seconds or an HTTP date) or `retry-after-ms` header asks to wait."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class OpenAIClient:
    """`complete(messages, **params)` against an OpenAI-compatible endpoint (see module docstring)."""

    def __init__(self, config: HTTPClientConfig):
        import openai

        self.config = config
        key = os.environ.get(config.api_key_env)
        if not key:
            raise ClientError(
                f"OpenAIClient: environment variable {config.api_key_env} (api_key_env) is not set"
            )
        self._secret = key
        self._openai = openai
        # max_retries=0: the retry policy is ours (counted, Retry-After honoured, semaphore released).
        self._client = openai.OpenAI(
            api_key=key, base_url=config.base_url, timeout=config.timeout_s, max_retries=0
        )
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self.stats = ClientStats()

    def __repr__(self) -> str:  # the default would show nothing secret either; be explicit
        return f"OpenAIClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def request_body(self, messages: Messages, **params: Any) -> dict:
        """The JSON body sent (and the cache key's input)."""
        merged = {**dict(self.config.default_params), **params}
        return {"model": self.config.model, "messages": normalize_messages(messages), **merged}

    def complete(self, messages: Messages, **params: Any) -> Completion:
        body = self.request_body(messages, **params)
        if self.cache is not None:
            hit = self.cache.get(body)
            if hit is not None:
                self.stats.add(completions=1, cache_hits=1)
                return hit
        out = self._send(body)
        if self.cache is not None:
            self.cache.put(body, out)
        self.stats.add(completions=1, prompt_tokens=out.usage.prompt_tokens,
                       completion_tokens=out.usage.completion_tokens, cost_usd=out.usage.cost_usd)  # fmt: skip
        return out

    def _send(self, body: dict) -> Completion:
        oa, cfg = self._openai, self.config
        kwargs = {k: v for k, v in body.items() if k not in ("model", "messages")}
        for attempt in range(cfg.max_retries + 1):
            wait: float | None = None
            try:
                with self._slots:
                    self.stats.add(requests=1)
                    resp = self._client.chat.completions.create(
                        model=body["model"], messages=body["messages"], timeout=cfg.timeout_s, **kwargs
                    )
                return self._completion(resp)
            except oa.RateLimitError as e:
                reason, wait = "HTTP 429", retry_after_s(getattr(e.response, "headers", None))
            except oa.APITimeoutError:
                reason = f"timeout after {cfg.timeout_s:g} s"
            except oa.APIConnectionError as e:
                reason = f"connection error ({type(e).__name__})"
            except oa.APIStatusError as e:
                if (
                    e.status_code < 500
                ):  # 4xx other than 429: the request itself is wrong; retrying cannot help
                    self.stats.add(failures=1)
                    raise ClientError(
                        self._scrub(
                            f"{cfg.base_url}: HTTP {e.status_code} for model {cfg.model!r}: {e.message}"
                        )
                    ) from None
                reason = f"HTTP {e.status_code}"
            if attempt == cfg.max_retries:
                self.stats.add(failures=1)
                raise ClientError(
                    self._scrub(
                        f"{cfg.base_url}: {reason}; gave up after {attempt + 1} attempts (max_retries)"
                    )
                )
            if wait is None:
                wait = min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
            self.stats.add(retries=1)
            log.warning("%s from %s (attempt %d/%d); retrying in %.2f s",
                        reason, cfg.base_url, attempt + 1, cfg.max_retries + 1, wait)  # fmt: skip
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _completion(self, resp: Any) -> Completion:
        cfg = self.config
        if not resp.choices:
            raise ClientError(f"{cfg.base_url}: response without choices for model {cfg.model!r}")
        choice = resp.choices[0]
        u = resp.usage
        pt = int(getattr(u, "prompt_tokens", 0) or 0)
        ct = int(getattr(u, "completion_tokens", 0) or 0)
        cost = (pt * cfg.price_in_per_mtok + ct * cfg.price_out_per_mtok) / 1e6
        return Completion(
            choice.message.content or "", Usage(pt, ct, cost), finish_reason=choice.finish_reason
        )
