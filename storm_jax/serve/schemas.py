"""Request bodies of the OpenAI-compatible endpoints, as pydantic models (validation names the bad field).

Unknown fields are refused (a misspelt `max_token` must not be silently ignored); fields OpenAI defines that
this server cannot honour are accepted only at their neutral value (penalties 0, no top_logprobs, no echo)
and otherwise refused with a message saying so. Extensions beyond OpenAI's API, spelt as vLLM spells them:
`top_k`, `min_p`, `ignore_eos`, `chat_template_kwargs.enable_thinking`, and `return_token_ids` (the response
ids of each choice, exactly as sampled).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Samples per request (each takes a decode slot while it runs).
MAX_N = 64
MAX_STOPS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """A text part of a message's content list."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message of the conversation (system, user, or an earlier assistant turn)."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts concatenated)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatTemplateKwargs(_Strict):
    enable_thinking: bool = True  # Qwen3's generation prompt opens a <think> block


class _Sampling(_Strict):
    """Fields shared by chat and text completions."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0 = off
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)  # default: what is left of the context
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    return_token_ids: bool = False

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0:
            raise ValueError("not supported by this server (only 0)")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name of max_tokens
    chat_template_kwargs: ChatTemplateKwargs | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _no_top(cls, v: int | None) -> int | None:
        if v:
            raise ValueError("not supported: the sampler returns the chosen token's log-prob only (use 0)")
        return v

    def budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """POST /v1/completions (a raw prompt: no chat template)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("logprobs")
    @classmethod
    def _chosen_only(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 0:
            raise ValueError("only 0 is supported (chosen-token log-probs; no alternatives)")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("not supported")
        return v

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        return v

    def budget(self) -> int | None:
        return self.max_tokens


__all__ = ["MAX_N", "ChatMessage", "ChatRequest", "CompletionRequest"]
