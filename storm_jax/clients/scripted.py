"""A scripted chat client for tests and offline runs: answers come from a list or a function."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from storm_jax.clients.base import ClientError, ClientStats, Completion, Messages, Usage, normalize_messages

Responder = Callable[[list[dict], dict], str]


class ScriptedClient:
    """Returns `script[i]` for the i-th call (a string, or a function of (messages, params)), or always
    `responder(messages, params)`. Every call is recorded in `calls` as (messages, params)."""

    def __init__(self, script: Sequence[str | Responder] | None = None, responder: Responder | None = None):
        if (script is None) == (responder is None):
            raise ValueError("ScriptedClient: give exactly one of script= or responder=")
        self.script, self.responder = list(script or ()), responder
        self.calls: list[tuple[list[dict], dict]] = []
        self.stats = ClientStats()
        self._lock = threading.Lock()

    def complete(self, messages: Messages, **params: Any) -> Completion:
        msgs = normalize_messages(messages)
        with self._lock:
            i = len(self.calls)
            self.calls.append((msgs, dict(params)))
        if self.responder is not None:
            text = self.responder(msgs, dict(params))
        else:
            if i >= len(self.script):
                self.stats.add(failures=1)
                raise ClientError(
                    f"ScriptedClient: call {i + 1} but the script has {len(self.script)} answers"
                )
            item = self.script[i]
            text = item(msgs, dict(params)) if callable(item) else item
        usage = Usage(sum(len(m["content"].split()) for m in msgs), len(text.split()))
        self.stats.add(requests=1, completions=1, prompt_tokens=usage.prompt_tokens,
                       completion_tokens=usage.completion_tokens)  # fmt: skip
        return Completion(text, usage, finish_reason="stop")
