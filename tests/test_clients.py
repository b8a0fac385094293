"""Chat clients against a real OpenAI-protocol HTTP server on loopback: retries (429 + Retry-After, 500,
timeout), the concurrency cap, the cache (a rerun sends nothing), and the key never reaching the disk."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time

import pytest
from chat_server import ChatServer

from storm_jax.clients import ClientError, ResponseCache, request_key
from storm_jax.clients.openai_http import HTTPClientConfig, OpenAIClient, retry_after_s
from storm_jax.clients.scripted import ScriptedClient

KEY = "sk-test-SECRET-0123456789abcdef"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("STORM_TEST_KEY", KEY)
    return "STORM_TEST_KEY"


def _client(url, env, **kw):
    kw.setdefault("backoff_s", 0.05)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIClient(HTTPClientConfig(base_url=url, model="m1", api_key_env=env, **kw))


def test_429_with_retry_after_is_honoured(key_env):
    with ChatServer([("status", 429, {"Retry-After": "1"})]) as srv:
        c = _client(srv.url, key_env)
        t0 = time.monotonic()
        out = c.complete(MSG, temperature=0.0)
        waited = time.monotonic() - t0
    assert out.text == "echo: hello" and not out.cached
    assert srv.requests == 2 and c.stats.retries == 1 and c.stats.requests == 2
    assert waited >= 0.95  # the header's 1 s, not the 0.05 s backoff
    assert srv.auth[0] == f"Bearer {KEY}"  # the key is sent (only) in the header


def test_500_then_success_and_retry_budget(key_env):
    with ChatServer([("status", 500), ("status", 502)]) as srv:
        c = _client(srv.url, key_env)
        assert c.complete(MSG).text == "echo: hello"
        assert srv.requests == 3 and c.stats.retries == 2
    with ChatServer([("status", 500)] * 5) as srv:
        c = _client(srv.url, key_env, max_retries=2)
        with pytest.raises(ClientError, match=r"HTTP 500; gave up after 3 attempts") as ei:
            c.complete(MSG)
        assert srv.requests == 3 and c.stats.failures == 1
        assert KEY not in str(ei.value)


def test_4xx_is_not_retried(key_env):
    with ChatServer([("status", 400)]) as srv:
        c = _client(srv.url, key_env)
        with pytest.raises(ClientError, match="HTTP 400"):
            c.complete(MSG)
        assert srv.requests == 1


def test_timeout_is_retried(key_env):
    # the first reply would take 6 s: finishing well before that shows the 0.5 s timeout cut it (the margin
    # leaves seconds for a loaded machine's thread scheduling, not milliseconds)
    with ChatServer([("ok", 6.0)]) as srv:
        c = _client(srv.url, key_env, timeout_s=0.5)
        t0 = time.monotonic()
        assert c.complete(MSG).text == "echo: hello"
        assert time.monotonic() - t0 < 4.0
        assert srv.requests == 2 and c.stats.retries == 1


def test_concurrency_cap_is_respected(key_env):
    # each reply holds its slot 0.6 s, so the 12 threads (all started at once) have time to fill the 3 slots
    # even when a loaded machine schedules them late; more than 3 at once would break the cap
    with ChatServer([("ok", 0.6)] * 12) as srv:
        c = _client(srv.url, key_env, max_concurrency=3)
        with cf.ThreadPoolExecutor(12) as ex:
            outs = list(ex.map(lambda i: c.complete([{"role": "user", "content": f"q{i}"}]), range(12)))
    assert [o.text for o in outs] == [f"echo: q{i}" for i in range(12)]
    assert srv.requests == 12 and srv.max_in_flight == 3


def test_rerun_served_from_cache_and_key_never_on_disk(tmp_path, key_env, caplog):
    cache = tmp_path / "cache"
    prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(4)]
    caplog.set_level(logging.DEBUG)
    with ChatServer([("status", 429, {"Retry-After": "0"}), ("status", 500)]) as srv:
        c = _client(srv.url, key_env, cache_dir=str(cache), price_in_per_mtok=2.0, price_out_per_mtok=8.0)
        first = [c.complete(p, temperature=0.2, max_tokens=32).text for p in prompts]
        assert srv.requests == 6
        assert c.stats.prompt_tokens == 40 and c.stats.completion_tokens == 20
        assert c.stats.cost_usd == pytest.approx((40 * 2 + 20 * 8) / 1e6)
    with ChatServer() as srv2:  # a fresh process would see the same: a new client, the same cache dir
        c2 = _client(srv2.url, key_env, cache_dir=str(cache))
        again = [c2.complete(p, temperature=0.2, max_tokens=32) for p in prompts]
        assert srv2.requests == 0 and all(o.cached for o in again) and c2.stats.cache_hits == 4
        assert [o.text for o in again] == first
        c2.complete(prompts[0], temperature=0.3, max_tokens=32)  # another parameter is another request
        assert srv2.requests == 1
    assert len(ResponseCache(cache)) == 5
    body = c.request_body(prompts[0], temperature=0.2, max_tokens=32)
    assert (cache / request_key(body)[:2] / f"{request_key(body)}.json").is_file()
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in repr(c) and KEY not in repr(c.config)


def test_missing_key_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("STORM_NO_SUCH_KEY", raising=False)
    with pytest.raises(ClientError, match="STORM_NO_SUCH_KEY"):
        _client("http://127.0.0.1:9/v1", "STORM_NO_SUCH_KEY")


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None
    assert 0 <= retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_scripted_client_in_order():
    c = ScriptedClient(["a", lambda m, p: m[-1]["content"].upper()])
    assert c.complete(MSG).text == "a" and c.complete(MSG).text == "HELLO"
    with pytest.raises(ClientError, match="call 3"):
        c.complete(MSG)
    assert len(c.calls) == 3
