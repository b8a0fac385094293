"""Chat clients: one interface (`complete(messages, **params) -> Completion`), three implementations.

* `OpenAIClient` (openai_http.py): any OpenAI-compatible endpoint; key from a named environment variable,
  concurrency cap, retries, timeouts, accounting, on-disk cache.
* `LocalClient` (local.py): storm_jax weights in-process through the shared sampler.
* `ScriptedClient` (scripted.py): answers from a list or a function, for tests.

`client_section()` is the config section that describes a client and `make_client(section)` builds one.
"""

from __future__ import annotations

from storm_jax.clients.base import (
    CachedClient,
    ChatClient,
    ClientError,
    ClientStats,
    Completion,
    ResponseCache,
    Usage,
    request_key,
)

CLIENT_KINDS = ("openai", "local")


def client_section():
    """The keys of a client in a job config (ml_collections), with defaults."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.kind = "openai"  # openai | local (jobs may add their own kinds, e.g. calm's `programmatic`)
    c.base_url = ""
    c.model = ""
    c.api_key_env = "OPENAI_API_KEY"  # the NAME of the variable holding the key; the key is never in a config
    c.max_concurrency = 4
    c.max_retries = 6
    c.timeout_s = 120.0
    c.backoff_s = 1.0
    c.cache_dir = ""  # "" = <workdir>/cache/<role>
    c.price_in_per_mtok = 0.0
    c.price_out_per_mtok = 0.0
    c.temperature = 0.0
    c.max_tokens = 2048
    c.checkpoint = ""  # local: HF checkpoint directory
    return c


def make_client(section, *, cache_dir: str = "", key: str = "client") -> ChatClient:
    """A client from a `client_section()`-shaped section; ValueError naming `key.<field>` when it is wrong."""
    kind = section.kind
    if kind == "openai":
        from storm_jax.clients.openai_http import HTTPClientConfig, OpenAIClient

        for field in ("base_url", "model"):
            if not section[field]:
                raise ValueError(f"{key}.{field}: must be set for kind='openai'")
        return OpenAIClient(
            HTTPClientConfig(
                base_url=section.base_url,
                model=section.model,
                api_key_env=section.api_key_env,
                max_concurrency=int(section.max_concurrency),
                max_retries=int(section.max_retries),
                timeout_s=float(section.timeout_s),
                backoff_s=float(section.backoff_s),
                cache_dir=section.cache_dir or cache_dir,
                price_in_per_mtok=float(section.price_in_per_mtok),
                price_out_per_mtok=float(section.price_out_per_mtok),
            )
        )
    if kind == "local":
        from storm_jax.clients.local import LocalClient

        if not section.checkpoint:
            raise ValueError(f"{key}.checkpoint: must be set for kind='local'")
        inner = LocalClient.from_hf_checkpoint(section.checkpoint, max_tokens=int(section.max_tokens))
        return (
            CachedClient(inner, section.cache_dir or cache_dir, f"local:{section.checkpoint}")
            if (section.cache_dir or cache_dir)
            else inner
        )
    raise ValueError(f"{key}.kind: {kind!r} not in {CLIENT_KINDS}")


__all__ = [
    "CLIENT_KINDS",
    "CachedClient",
    "ChatClient",
    "ClientError",
    "ClientStats",
    "Completion",
    "ResponseCache",
    "Usage",
    "client_section",
    "make_client",
    "request_key",
]
