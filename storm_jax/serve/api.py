"""The OpenAI-compatible HTTP API over an `Engine` (FastAPI app; served by uvicorn in storm_jax.serve.cli).

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (no key needed).
Errors have OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 for a malformed request
(`param` names the field, e.g. `messages[0].role`), 401 for a missing or wrong API key, 404 for another
model name or path, 429 when the engine's queue is full, 500 when the engine failed the request.

Streaming (`stream: true`) sends server-sent events `data: {chunk}` and a final `data: [DONE]`; a client
that disconnects has its samples cancelled, which frees their decode slots before the next chunk. Choices
carry two extra fields: `token_ids` (with `return_token_ids`) and, on a server with tools, `executions`
(every executed code block: code, status, stdout, stderr, answer, duration_s, output_text).
Log-probs are log_softmax of the model's logits at temperature 1 (untruncated); host-written tokens (tool
output) have log-prob 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storm_jax.sampling.requests import Request, SamplingParams
from storm_jax.serve.engine import Engine, Job, QueueFull, SampleState
from storm_jax.serve.schemas import ChatRequest, CompletionRequest
from storm_jax.serve.text import (
    TextStream,
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    token_bytes_table,
)
from storm_jax.tokenizer import encode_prompt, encode_text, eos_ids


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


def _error_response(e: APIError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


def _param_of(loc: tuple) -> str | None:
    """`messages[0].role` from pydantic's ('body', 'messages', 0, 'role'); union-member tags dropped."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list")):
            continue  # pydantic names the union member it tried, not a field
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _execution_json(ex) -> dict:
    return {
        "code": ex.code,
        "status": ex.status,
        "stdout": ex.stdout,
        "stderr": ex.stderr,
        "answer": ex.answer,
        "duration_s": ex.duration_s,
        "output_text": ex.output_text,
    }


def _sub_seed(seed: int, j: int) -> int:
    """Seed of prompt j of a request: unrelated streams for different (seed, j)."""
    h = hashlib.blake2b(f"{seed}:{j}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def create_app(
    engine: Engine,
    tokenizer: Any,
    *,
    model_name: str,
    api_key: str | None = None,
    teacher_forcing: Callable[[list[int]], list[int]] | None = None,
) -> FastAPI:
    """The FastAPI app. `api_key`: required as `Authorization: Bearer <key>` on the /v1 routes.

    `teacher_forcing` is TEST-ONLY (the CLI never sets it): it maps a prompt's ids to ids the model is made
    to write first (`Request.forced`), so tests can script what a random model "writes", e.g. a code block
    for the code interpreter to run.
    """
    app = FastAPI(title="storm_jax", docs_url=None, redoc_url=None, openapi_url=None)
    eos = tuple(eos_ids(tokenizer))
    token_bytes = token_bytes_table(tokenizer)
    vocab = engine.cfg.vocab_size
    max_len = engine.options.max_len

    @app.exception_handler(APIError)
    async def _api_error(_req, e: APIError):
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            return _error_response(APIError(400, "the request body is not valid JSON"))
        param = _param_of(tuple(err.get("loc", ())))
        if param is None:  # the body as a whole (not an object, or sent without a JSON content type)
            msg = "the request body must be a JSON object (Content-Type: application/json)"
            if err.get("type") == "missing":
                msg = "the request has no body; expected a JSON object"
            return _error_response(APIError(400, msg))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        return _error_response(APIError(400, f"{param}: {msg}" if param else msg, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, e: StarletteHTTPException):
        return _error_response(APIError(e.status_code, str(e.detail)))

    async def check_key(request: HTTPRequest) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), api_key.encode())):
            raise APIError(
                401, "missing or invalid API key", type_="authentication_error", code="invalid_api_key"
            )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **engine.health()}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "storm_jax"}],
        }

    def sampling(body, prompt: list[int], param: str) -> SamplingParams:
        if len(prompt) + 1 > max_len:
            raise APIError(400, f"{param}: the prompt has {len(prompt)} tokens; the context holds {max_len}",
                           param, code="context_length_exceeded")  # fmt: skip
        budget = body.budget()
        room = max_len - len(prompt) - 1
        if budget is not None and budget > room:
            raise APIError(400, f"max_tokens: {budget} tokens after a prompt of {len(prompt)} exceed the "
                           f"context of {max_len} (at most {room})", "max_tokens", code="context_length_exceeded")  # fmt: skip
        return SamplingParams(
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            min_p=body.min_p,
            max_new_tokens=budget or room,
            eos_ids=() if body.ignore_eos else eos,
            stop_strings=body.stop_strings(),
        )

    def submit(body, prompts: list[list[int]], param: str, notify: Callable[[Job], None]) -> list[Job]:
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"model {body.model!r} does not exist (this server has {model_name!r})",
                           "model", code="model_not_found")  # fmt: skip
        seed = body.seed if body.seed is not None else secrets.randbelow(1 << 31)
        reqs = []
        for j, p in enumerate(prompts):
            forced = teacher_forcing(p) if teacher_forcing is not None else None
            s = seed % (1 << 31) if len(prompts) == 1 else _sub_seed(seed, j)
            reqs.append(Request(p, sampling(body, p, param), n=body.n, seed=s, forced=forced))
        jobs: list[Job] = []
        try:
            for r in reqs:
                jobs.append(engine.submit(r, on_update=notify))
        except QueueFull as e:
            for j in jobs:
                j.cancel()
            raise APIError(429, f"server busy: {e}", type_="rate_limit_error", code="queue_full") from None
        return jobs

    def choice_extras(body, st: SampleState, start: int, end: int, final: bool) -> dict:
        extra: dict[str, Any] = {}
        if body.return_token_ids:
            extra["token_ids"] = st.tokens[start : len(st.tokens) if final else end]
        if final and engine.options.tools:
            extra["executions"] = [_execution_json(ex) for ex in st.executions]
        return extra

    async def respond(request: HTTPRequest, body, prompts: list[list[int]], param: str, chat: bool):
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def notify(_job: Job) -> None:  # engine thread -> this request's event loop
            loop.call_soon_threadsafe(event.set)

        jobs = submit(body, prompts, param, notify)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        n = body.n
        streams = [[TextStream(engine.decode, body.stop_strings(), eos) for _ in range(n)] for _ in jobs]
        offsets = [[0] * n for _ in jobs]
        want_lp = bool(body.logprobs) if chat else body.logprobs is not None

        def usage() -> dict:
            done = [st for j in jobs for st in j.snapshot()]
            comp = sum(len(st.tokens) for st in done)
            prompt = sum(len(j.request.prompt) for j in jobs)
            return {"prompt_tokens": prompt, "completion_tokens": comp, "total_tokens": prompt + comp}

        def piece(ji: int, i: int, st: SampleState, stream: bool) -> dict | None:
            """The next part of choice (ji, i): a delta for a stream, the whole choice otherwise."""
            d = streams[ji][i].update(st)
            if d is None:
                return None
            final = streams[ji][i].finished
            c: dict[str, Any] = {"index": ji * n + i, "finish_reason": finish_reason(st) if final else None}
            if chat:
                c["delta" if stream else "message"] = (
                    {"content": d.text} if stream else {"role": "assistant", "content": d.text}
                )
                c["logprobs"] = (
                    {"content": chat_logprobs(st, d.start, d.end, token_bytes)} if want_lp else None
                )
            else:
                c["text"] = d.text
                lp = None
                if want_lp:
                    lp = completion_logprobs(st, d.start, d.end, token_bytes, offsets[ji][i])
                    offsets[ji][i] += len(d.text)
                c["logprobs"] = lp
            c.update(choice_extras(body, st, d.start, d.end, final))
            return c

        async def wait_update() -> bool:
            """Wait for the engine; False when the client went away (its jobs are then cancelled)."""
            try:
                await asyncio.wait_for(event.wait(), 0.25)
            except TimeoutError:
                pass
            if await request.is_disconnected():
                for j in jobs:
                    j.cancel()
                return False
            return True

        def failed() -> APIError | None:
            errs = [j.error for j in jobs if j.error]
            return APIError(500, f"generation failed: {errs[0]}") if errs else None

        if not body.stream:
            try:
                while True:
                    event.clear()
                    if all(j.done for j in jobs):
                        break
                    if not await wait_update():
                        return JSONResponse({}, status_code=499)
            finally:
                for j in jobs:
                    if not j.done:
                        j.cancel()
            err = failed()
            if err is not None:
                raise err
            choices = [
                piece(ji, i, st, False) for ji, j in enumerate(jobs) for i, st in enumerate(j.snapshot())
            ]
            obj = "chat.completion" if chat else "text_completion"
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": model_name,
                                 "choices": choices, "usage": usage()})  # fmt: skip

        obj = "chat.completion.chunk" if chat else "text_completion"

        def sse(choices: list[dict], **extra) -> str:
            chunk = {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices}
            return f"data: {json.dumps({**chunk, **extra})}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                if chat:  # OpenAI's first chunk of every choice carries the role
                    yield sse([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None} for k in range(len(jobs) * n)])  # fmt: skip
                while True:
                    event.clear()
                    out = []
                    for ji, j in enumerate(jobs):
                        for i, st in enumerate(j.snapshot()):
                            c = piece(ji, i, st, True)
                            if c is not None:
                                out.append(c)
                    if out:
                        yield sse(out)
                    err = failed()
                    if err is not None:
                        yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.type}})}\n\n"
                        return
                    if all(s.finished for ss in streams for s in ss):
                        break
                    if not await wait_update():
                        return
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield sse([], usage=usage())
                yield "data: [DONE]\n\n"
            finally:  # a client that went away (the stream was cancelled) frees its slots
                for j in jobs:
                    if not j.done:
                        j.cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatRequest, request: HTTPRequest):
        msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
        thinking = body.chat_template_kwargs.enable_thinking if body.chat_template_kwargs else True
        try:
            prompt = encode_prompt(tokenizer, msgs, enable_thinking=thinking)
        except ValueError as e:
            raise APIError(400, f"messages: {e}", "messages") from None
        return await respond(request, body, [prompt], "messages", chat=True)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: HTTPRequest):
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of: only best_of = n is supported", "best_of")
        p = body.prompt
        raw = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        prompts = []
        for k, item in enumerate(raw):
            ids = encode_text(tokenizer, item) if isinstance(item, str) else [int(t) for t in item]
            if not ids:
                raise APIError(400, f"prompt[{k}]: empty prompt", "prompt")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise APIError(
                    400, f"prompt[{k}]: token id {bad[0]} outside the vocabulary [0, {vocab})", "prompt"
                )
            prompts.append(ids)
        return await respond(request, body, prompts, "prompt", chat=False)

    return app


__all__ = ["APIError", "create_app"]
