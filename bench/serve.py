"""Serving throughput: 16 concurrent OpenAI clients through `storm-jax serve` vs the in-process sampler at batch 16.

Same weights on both sides: `--random-tiny` (seed 0) or `--checkpoint DIR`. The server is the real command in a
subprocess (`storm-jax serve ... --slots 16 --port 0` on loopback); the clients are the official `openai`
AsyncOpenAI client in this process, one request each, all sent at once. The in-process side is
`Sampler.run` on the same 16 prompts (chat template applied), the same engine shapes and sampling: greedy,
end-of-turn ignored so every request writes exactly --max-tokens tokens. tok/s = generated tokens / wall of the
whole round (prefill included); median of --repeats timed rounds after one warm-up round per side (which
compiles), the two sides alternating. Streaming rounds (--stream) read server-sent events instead.

    .venv/bin/python bench/serve.py [--max-tokens 256] [--repeats 3] [--stream] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

QUESTIONS = [
    f"Problem {i}: a factory makes {i + 2} products with limited machine hours. Maximize profit."
    for i in range(16)
]


def in_process_round(sampler, prompts, sp) -> tuple[int, float]:
    from storm_jax.sampling.requests import Request

    t0 = time.perf_counter()
    out = sampler.run([Request(p, sp, seed=i) for i, p in enumerate(prompts)])
    dt = time.perf_counter() - t0
    return sum(len(g[0].tokens) for g in out), dt


async def server_round(base_url: str, model: str, max_tokens: int, stream: bool) -> tuple[int, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    kw = dict(model=model, temperature=0, max_tokens=max_tokens, extra_body={"ignore_eos": True})

    async def one(q: str) -> int:
        msgs = [{"role": "user", "content": q}]
        if not stream:
            r = await client.chat.completions.create(messages=msgs, **kw)
            return r.usage.completion_tokens
        s = await client.chat.completions.create(
            messages=msgs, stream=True, stream_options={"include_usage": True}, **kw
        )
        n = 0
        async for ch in s:
            if ch.usage is not None:
                n = ch.usage.completion_tokens
        return n

    try:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(q) for q in QUESTIONS))
        return sum(counts), time.perf_counter() - t0
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="HF checkpoint directory (default: the random tiny model, seed 0)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--stream", action="store_true", help="server rounds stream (SSE)")
    args = ap.parse_args()
    max_len = 512 if args.max_tokens <= 400 else args.max_tokens + 128

    src = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--random-tiny"]
    cmd = [sys.executable, "-m", "storm_jax.cli", "serve", *src, "--port", "0", "--slots", "16",
           "--max-len", str(max_len), "--chunk", str(args.chunk)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        m = re.match(r"listening on (http://\S+) \(model (\S+)\)", line)
        if not m:
            raise SystemExit(f"server did not start: {line!r}")
        base_url, model = m.group(1) + "/v1", m.group(2)

        from storm_jax.sampling.requests import EngineConfig, SamplingParams
        from storm_jax.sampling.sampler import Sampler
        from storm_jax.serve.model import load_model
        from storm_jax.tokenizer import encode_prompt

        cfg, params, tok, _ = load_model(args.checkpoint)
        prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
        engine = EngineConfig(
            num_slots=16, max_len=max_len, chunk_size=args.chunk, max_bucket=min(512, max_len)
        )
        sampler = Sampler(params, cfg, engine)
        sp = SamplingParams(temperature=0.0, max_new_tokens=args.max_tokens)  # no eos ids: exactly max_tokens

        in_process_round(sampler, prompts, sp)  # warm-up (compiles)
        asyncio.run(server_round(base_url, model, args.max_tokens, args.stream))
        local, remote = [], []
        for _ in range(args.repeats):
            n, dt = in_process_round(sampler, prompts, sp)
            local.append(n / dt)
            n2, dt2 = asyncio.run(server_round(base_url, model, args.max_tokens, args.stream))
            assert n2 == n == 16 * args.max_tokens, (n, n2)
            remote.append(n2 / dt2)
        lo, re_ = statistics.median(local), statistics.median(remote)
        mode = "streaming" if args.stream else "non-streaming"
        print(f"model: {model}; 16 requests x {args.max_tokens} tokens, greedy, chunk {args.chunk}; {mode}")
        print(f"in-process sampler (batch 16): {lo:8.1f} tok/s   runs {[round(x, 1) for x in local]}")
        print(f"server, 16 concurrent clients: {re_:8.1f} tok/s   runs {[round(x, 1) for x in remote]}")
        pairs = [r / x for r, x in zip(remote, local)]
        print(f"server / in-process: {re_ / lo:.2f}x of the medians; per alternating pair "
              f"{[round(x, 2) for x in pairs]}, median {statistics.median(pairs):.2f}x (goal >= 0.8x)")  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
