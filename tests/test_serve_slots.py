"""Server slots and tools, through the official `openai` client on loopback: a streaming client that goes away
frees its slot, a full queue answers 429, and with tools a (teacher-forced) program is executed by the real
pool and its output block appears in the response."""

from __future__ import annotations

import threading

import jax
import openai
import pytest
from serve_util import LiveServer, health, wait_for

from storm_jax.data.format import Segment, code_segment
from storm_jax.models.qwen import ModelConfig, init_params
from storm_jax.serve.api import create_app
from storm_jax.serve.engine import Engine, EngineOptions
from storm_jax.serve.model import RANDOM_TINY
from storm_jax.tokenizer import encode_segment, eos_ids, load_tokenizer

CFG = ModelConfig(**RANDOM_TINY)
NAME = "tiny-test"
LONG = 1500  # tokens a never-ending (ignore_eos) request asks for; it is cut off long before


@pytest.fixture(scope="module")
def tok_params():
    return load_tokenizer(), init_params(CFG, jax.random.key(1), std=0.5)


@pytest.fixture(scope="module")
def one_slot(tok_params):
    """A server with one decode slot and room for one waiting request."""
    tok, params = tok_params
    engine = Engine(params, CFG, tok, EngineOptions(num_slots=1, max_len=2048, chunk_size=16, max_queue=1))
    server = LiveServer(create_app(engine, tok, model_name=NAME))
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    yield engine, server, client
    server.close()
    engine.close()


def _long_stream(client):
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Write forever."}],
        temperature=0,
        max_tokens=LONG,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    it = iter(stream)
    got = ""
    while not got:  # the role chunk, then the first piece of text
        ch = next(it)
        got = ch.choices[0].delta.content or ""
    return stream


def test_disconnected_stream_frees_its_slot(one_slot):
    engine, server, client = one_slot
    before = health(server.port)
    stream = _long_stream(client)
    assert health(server.port)["running_samples"] == 1
    stream.close()  # the client goes away mid-generation
    h = wait_for(
        lambda: (
            (h := health(server.port))["live_samples"] == 0
            and h["cancelled_samples"] > before["cancelled_samples"]
            and h
        ),
        30,
        "the cancelled sample to leave its slot",
    )
    assert h["running_samples"] == 0
    assert h["generated_tokens"] - before["generated_tokens"] < LONG // 2  # stopped early, not run to the end
    # the slot serves the next request
    r = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=8
    )
    assert r.choices[0].finish_reason == "length"


def test_full_queue_answers_429(one_slot):
    engine, server, client = one_slot
    stream = _long_stream(client)  # holds the only slot
    waiting: dict = {}

    def queued():
        waiting["r"] = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "next"}], temperature=0, max_tokens=8
        )

    t = threading.Thread(target=queued, daemon=True)
    t.start()
    wait_for(lambda: health(server.port)["waiting_requests"] == 1, 30, "the second request to queue")
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "third"}], temperature=0, max_tokens=8
        )
    assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
    assert health(server.port)["rejected"] >= 1
    stream.close()  # frees the slot: the queued request runs
    t.join(60)
    assert not t.is_alive() and waiting["r"].choices[0].finish_reason == "length"


PROGRAM = """import pyomo.environ as pyo
m = pyo.ConcreteModel()
m.x = pyo.Var(bounds=(0, 3))
m.y = pyo.Var(bounds=(0, None))
m.c1 = pyo.Constraint(expr=m.x + m.y <= 4)
m.c2 = pyo.Constraint(expr=m.x + 3 * m.y <= 6)
m.obj = pyo.Objective(expr=3 * m.x + 2 * m.y, sense=pyo.maximize)
pyo.SolverFactory("appsi_highs").solve(m)
print("OBJECTIVE:", pyo.value(m.obj))"""


def test_tools_execute_a_teacher_forced_program(tok_params):
    from storm_jax.execution.pool import ExecutionPool

    tok, params = tok_params
    segs = [
        Segment("text", "I will write a model.\n\n"),
        code_segment(PROGRAM),
        Segment("text", "\nSo \\boxed{11}."),
    ]
    forced = [t for s in segs for t in encode_segment(tok, s)] + [eos_ids(tok)[0]]
    with ExecutionPool(num_workers=1) as pool:
        engine = Engine(params, CFG, tok, EngineOptions(num_slots=2, max_len=512, chunk_size=16, tools=True),
                        executor=pool)  # fmt: skip
        # TEST-ONLY hook: every response starts with `forced` (the CLI never sets it)
        server = LiveServer(create_app(engine, tok, model_name=NAME, teacher_forcing=lambda prompt: forced))
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        try:
            msgs = [{"role": "user", "content": "Maximize 3x+2y s.t. x+y<=4, x+3y<=6, x<=3."}]
            r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=300)
            chunks = list(
                client.chat.completions.create(
                    model=NAME, messages=msgs, temperature=0, max_tokens=300, stream=True
                )
            )
        finally:
            server.close()
            engine.close()
    c = r.choices[0]
    (ex,) = c.model_extra["executions"]
    assert ex["status"] == "ok" and ex["answer"] == pytest.approx(11.0) and ex["code"] == PROGRAM
    assert "OBJECTIVE: 11.0" in ex["stdout"]
    text = c.message.content
    assert text.startswith("I will write a model.\n\n```python\n")
    assert ex["output_text"] in text and "```output\nOBJECTIVE: 11.0" in text  # the output block was appended
    assert text.endswith("\nSo \\boxed{11}.") and c.finish_reason == "stop"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    assert chunks[-1].choices[0].model_extra["executions"][0]["answer"] == pytest.approx(11.0)
