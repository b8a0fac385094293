"""`storm-jax serve`: an OpenAI-compatible server over the continuous-batching sampler.

    storm-jax serve --random-tiny --port 8000                      # no weights needed (smoke tests)
    storm-jax serve --checkpoint DIR --tools --slots 32            # a STORM model, its code executed
    STORM_KEY=... storm-jax serve --checkpoint DIR --api-key-env STORM_KEY

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (see
storm_jax/serve/api.py). It binds to 127.0.0.1 unless --host says otherwise; --port 0 takes a free port. The
line `listening on http://HOST:PORT` on stdout says where, once the socket is bound. With --api-key-env NAME
the /v1 routes need `Authorization: Bearer $NAME` (the key is read from the environment, never printed).
With --tools the server runs the code interpreter: each closed ```python block is executed by the sandboxed
pool and its ```output block appended before the model continues; choices carry the executions.

Arguments and the checkpoint's files are checked before the model is built: a bad one is reported in one
line (exit 2).
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from storm_jax.cli_util import ArgumentParser, UsageError, check_hf_dir, check_range, fail

PROG = "storm-jax serve"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="HF checkpoint directory (config.json + safetensors)")
    src.add_argument(
        "--random-tiny", action="store_true", help="a tiny random Qwen3 (smoke test, no weights)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    p.add_argument(
        "--served-model-name", help="model id clients send (default: the checkpoint's directory name)"
    )
    p.add_argument("--tools", action="store_true", help="execute ```python blocks and append their output")
    p.add_argument("--workers", type=int, default=2, help="execution pool workers (with --tools)")
    p.add_argument("--max-tool-calls", type=int, default=15, help="code blocks executed per sample")
    p.add_argument("--max-output-chars", type=int, default=2000, help="tool output shown to the model")
    p.add_argument("--slots", type=int, default=16, help="decode slots shared by all requests")
    p.add_argument("--max-len", type=int, default=4096, help="cache positions per slot (prompt + response)")
    p.add_argument("--chunk", type=int, default=32, help="decode steps between scheduling rounds")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--seed", type=int, default=0, help="weights of --random-tiny")
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    return p


def check_args(args) -> str | None:
    """Refuse bad values (UsageError naming the flag) before anything is built; returns the API key."""
    check_range("--port", args.port, lo=0, hi=65535)
    for flag in ("slots", "chunk", "max_queue", "workers"):
        check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=1)
    check_range("--max-len", args.max_len, lo=16)
    for flag in ("max_tool_calls", "max_output_chars"):
        check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=0)
    if args.checkpoint is not None:
        check_hf_dir(args.checkpoint, "--checkpoint")
    if args.api_key_env is None:
        return None
    key = os.environ.get(args.api_key_env)
    if not key:
        raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    return key


def _bind(host: str, port: int) -> socket.socket:
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot bind ({e.strerror})") from None
    sock.listen(128)
    return sock


def warmup(engine) -> None:
    """Compile the first prefill and decode before clients arrive (their first request would wait on it)."""
    from storm_jax.sampling.requests import Request, SamplingParams

    job = engine.submit(Request([1, 2, 3], SamplingParams(max_new_tokens=engine.options.chunk_size)))
    job.wait(600)


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax serve`."""
    args = _parser().parse_args(argv)
    try:
        api_key = check_args(args)
        sock = _bind(args.host, args.port)
    except UsageError as e:
        return fail(PROG, str(e))
    import uvicorn

    from storm_jax.models.hf import CheckpointError
    from storm_jax.serve.api import create_app
    from storm_jax.serve.engine import Engine, EngineOptions
    from storm_jax.serve.model import load_model

    try:
        cfg, params, tok, name = load_model(args.checkpoint, dtype=args.dtype, seed=args.seed)
    except CheckpointError as e:
        sock.close()
        return fail(PROG, f"--checkpoint: {e}")
    pool = None
    if args.tools:
        from storm_jax.execution.pool import ExecutionPool

        pool = ExecutionPool(num_workers=args.workers)
    options = EngineOptions(
        num_slots=args.slots,
        max_len=args.max_len,
        chunk_size=args.chunk,
        max_queue=args.max_queue,
        tools=args.tools,
        max_tool_calls=args.max_tool_calls,
        max_output_chars=args.max_output_chars,
    )
    engine = Engine(params, cfg, tok, options, executor=pool)
    try:
        warmup(engine)
        app = create_app(engine, tok, model_name=args.served_model_name or name, api_key=api_key)
        config = uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.log_level in ("info", "debug"),
            timeout_graceful_shutdown=10,  # open streams get this long after SIGTERM
        )
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to whatever handler was
        # there before; a no-op handler lets this function return, so the engine and the pool are closed.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        host, port = sock.getsockname()[:2]
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"{PROG}: note: bound to {args.host}, reachable beyond this machine", file=sys.stderr)
        print(f"listening on http://{host}:{port} (model {args.served_model_name or name})", flush=True)
        server.run(sockets=[sock])  # returns on SIGINT / SIGTERM
    finally:
        engine.close()
        if pool is not None:
            pool.close()
        sock.close()
    return 0
