"""The OpenAI-compatible server through the official `openai` client, against a real uvicorn server on a free
loopback port: chat, streaming, n samples (shared prefill), stops, 16 concurrent requests equal to the
in-process sampler token for token, completions, errors that name the field, the API key."""

from __future__ import annotations

import asyncio

import jax
import numpy as np
import openai
import pytest
from serve_util import LiveServer, health, request

from storm_jax.models.qwen import ModelConfig, init_params
from storm_jax.sampling.sampler import EngineConfig, Request, Sampler, SamplingParams
from storm_jax.serve.api import create_app
from storm_jax.serve.engine import Engine, EngineOptions
from storm_jax.serve.model import RANDOM_TINY
from storm_jax.tokenizer import encode_prompt, eos_ids, load_tokenizer

CFG = ModelConfig(**RANDOM_TINY)
OPTIONS = EngineOptions(num_slots=8, max_len=384, chunk_size=16)
NAME = "tiny-test"


@pytest.fixture(scope="module")
def setup():
    tok = load_tokenizer()
    params = init_params(CFG, jax.random.key(0), std=0.5)  # std 0.5: varied text, not one repeated token
    engine = Engine(params, CFG, tok, OPTIONS)
    server = LiveServer(create_app(engine, tok, model_name=NAME))
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    yield tok, params, engine, server, client
    server.close()
    engine.close()


def _chat(client, content, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}], **kw)


def test_models_health_and_chat(setup):
    tok, _, engine, server, client = setup
    assert [m.id for m in client.models.list().data] == [NAME]
    h = health(server.port)
    assert h["status"] == "ok" and h["slots"] == 8 and h["engine_alive"]
    r = _chat(client, "Maximize 3x + 2y.", logprobs=True, extra_body={"return_token_ids": True})
    (c,) = r.choices
    ids = c.model_extra["token_ids"]
    assert r.object == "chat.completion" and r.model == NAME
    assert c.message.role == "assistant" and c.message.content == engine.decode(ids)
    assert c.finish_reason == "length" and len(ids) == 24
    prompt = encode_prompt(tok, [{"role": "user", "content": "Maximize 3x + 2y."}])
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == 24
    assert len(c.logprobs.content) == 24 and all(t.logprob < 0 for t in c.logprobs.content)
    assert b"".join(bytes(t.bytes) for t in c.logprobs.content).decode() == c.message.content


def test_stream_reassembles_to_the_whole_text(setup):
    _, _, _, _, client = setup
    for content in ("Minimize cost.", "A factory makes two products."):
        whole = _chat(client, content, max_tokens=40)
        chunks = list(_chat(client, content, max_tokens=40, stream=True))
        assert all(ch.object == "chat.completion.chunk" for ch in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert len(chunks) >= 3  # 40 tokens in chunks of 16: streamed in pieces, not at the end
        assert text == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_n4_samples_share_the_prefill(setup):
    tok, _, engine, _, client = setup
    before = dict(engine.sampler.stats)
    r = _chat(client, "Schedule the nurses.", n=4, temperature=1.0, seed=7, max_tokens=16)
    after = engine.sampler.stats
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) >= 2  # different random streams per sample
    prompt = encode_prompt(tok, [{"role": "user", "content": "Schedule the nurses."}])
    # one prefill of the prompt (all but its last token), copied to the three other samples' slots
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(prompt) - 1
    assert after["copy_calls"] > before["copy_calls"]
    again = _chat(client, "Schedule the nurses.", n=4, temperature=1.0, seed=7, max_tokens=16)
    assert [c.message.content for c in again.choices] == texts  # a seed reproduces the samples


def test_stop_strings(setup):
    _, _, _, _, client = setup
    full = _chat(client, "Find the shortest path.", max_tokens=48).choices[0].message.content
    stop = full[20:23]
    cut = full.index(stop)
    r = _chat(client, "Find the shortest path.", max_tokens=48, stop=[stop, "never-seen-xyz"])
    assert r.choices[0].message.content == full[:cut]
    assert r.choices[0].finish_reason == "stop"
    chunks = list(_chat(client, "Find the shortest path.", max_tokens=48, stop=stop, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == full[:cut]


def test_16_concurrent_requests_equal_the_in_process_sampler(setup):
    tok, params, _, server, _ = setup
    questions = [f"Problem {i}: a knapsack with {i + 3} items." for i in range(16)]
    aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)

    async def one(q):
        return await aclient.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": q}],
            temperature=0,
            max_tokens=32,
            logprobs=True,
            extra_body={"return_token_ids": True},
        )

    async def all_of():
        try:
            return await asyncio.wait_for(asyncio.gather(*(one(q) for q in questions)), 180)
        finally:
            await aclient.close()

    results = asyncio.run(all_of())
    assert len(results) == 16 and all(r.choices[0].finish_reason == "length" for r in results)
    # The same prompts through the in-process sampler, batch 16 (the server has 8 slots: requests queued)
    sp = SamplingParams(temperature=0.0, max_new_tokens=32, eos_ids=tuple(eos_ids(tok)))
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    sampler = Sampler(params, CFG, EngineConfig(num_slots=16, max_len=384, chunk_size=16))
    ref = sampler.run([Request(p, sp) for p in prompts])
    for r, (seq,) in zip(results, ref):
        c = r.choices[0]
        assert c.model_extra["token_ids"] == seq.tokens
        np.testing.assert_allclose([t.logprob for t in c.logprobs.content], seq.logprobs_raw, atol=1e-4)


def test_completions_endpoint(setup):
    tok, _, engine, _, client = setup
    r = client.completions.create(model=NAME, prompt=["x = ", "y = "], temperature=0, max_tokens=12,
                                  n=2, logprobs=0)  # fmt: skip
    assert r.object == "text_completion" and sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    by_index = {c.index: c for c in r.choices}
    assert by_index[0].text == by_index[1].text  # greedy: both samples of a prompt agree
    assert len(by_index[2].logprobs.token_logprobs) == 12 and by_index[2].logprobs.text_offset[0] == 0
    ids = tok.encode("x = ", add_special_tokens=False)
    r2 = client.completions.create(model=NAME, prompt=ids, temperature=0, max_tokens=12)
    assert r2.choices[0].text == by_index[0].text  # a token-id prompt is the same prompt
    chunks = list(client.completions.create(model=NAME, prompt="x = ", temperature=0, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == by_index[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"max_token": 5}, "max_token"),
        ({"stop": [""]}, "stop"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"seed": "abc"}, "seed"),
        ({"model": "gpt-4"}, "model"),
    ],
)
def test_malformed_chat_bodies_name_the_field(setup, body, param):
    port = setup[3].port
    full = {"messages": [{"role": "user", "content": "hi"}], **body}
    status, out = request(port, "POST", "/v1/chat/completions", full)
    assert status == (404 if param == "model" else 400), out
    assert out["error"]["param"] == param and param in out["error"]["message"]
    assert out["error"]["type"] == "invalid_request_error"


def test_malformed_bodies_other_shapes(setup):
    port = setup[3].port
    status, out = request(port, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and "JSON" in out["error"]["message"] and out["error"]["param"] is None
    status, out = request(port, "POST", "/v1/completions", {"prompt": [1, 2, 10**9]})
    assert status == 400 and out["error"]["param"] == "prompt" and "vocabulary" in out["error"]["message"]
    status, out = request(port, "POST", "/v1/completions", {"prompt": "x", "echo": True})
    assert status == 400 and out["error"]["param"] == "echo"
    status, out = request(port, "GET", "/v1/nothing")
    assert status == 404 and "error" in out
    # the official client surfaces the same error
    with pytest.raises(openai.BadRequestError) as e:
        _chat(setup[4], "hi", temperature=9)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"


def test_api_key(setup):
    tok, _, engine, _, _ = setup
    server = LiveServer(create_app(engine, tok, model_name=NAME, api_key="s3cret"))
    try:
        good = openai.OpenAI(base_url=server.base_url, api_key="s3cret", max_retries=0, timeout=60)
        bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0, timeout=60)
        assert _chat(good, "hi", max_tokens=4).choices[0].finish_reason == "length"
        with pytest.raises(openai.AuthenticationError):
            _chat(bad, "hi", max_tokens=4)
        status, out = request(server.port, "POST", "/v1/chat/completions", {"messages": []})
        assert status == 401 and out["error"]["code"] == "invalid_api_key"  # the key is checked first
        assert health(server.port)["status"] == "ok"  # /health needs no key
    finally:
        server.close()
