"""`storm-jax serve` as a process: --random-tiny on a free loopback port with an API key from the environment;
the official client talks to it, SIGTERM stops it, the key never appears in its output; bad flags are one
line with exit status 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import openai
import pytest
from serve_util import health

KEY = "k-" + "7" * 20


def _cmd(*args):
    return [sys.executable, "-m", "storm_jax.cli", "serve", *args]


def test_serve_random_tiny_process():
    env = {**os.environ, "STORM_TEST_KEY": KEY, "JAX_PLATFORMS": "cpu"}
    args = [
        "--random-tiny",
        "--port",
        "0",
        "--api-key-env",
        "STORM_TEST_KEY",
        "--slots",
        "2",
        "--max-len",
        "256",
    ]
    proc = subprocess.Popen(_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(240, proc.kill)  # bound the whole test
    timer.start()
    try:
        line = proc.stdout.readline()
        m = re.match(r"listening on http://127\.0\.0\.1:(\d+) \(model (\S+)\)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        port, name = int(m.group(1)), m.group(2)
        assert name == "storm-jax-random-tiny-0"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=8
        )
        assert r.usage.completion_tokens == 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=client.base_url, api_key="nope", max_retries=0).models.list()
        assert health(port)["requests"] >= 2  # the warm-up request and ours
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert KEY not in line + out + err
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["--random-tiny", "--api-key-env", "STORM_SURELY_UNSET_VAR"],
            "--api-key-env STORM_SURELY_UNSET_VAR",
        ),
        (["--random-tiny", "--port", "70000"], "--port 70000"),
        (["--random-tiny", "--slots", "0"], "--slots 0"),
        (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint /nonexistent/ckpt"),
    ],
)
def test_serve_usage_errors(args, needle):
    env = {k: v for k, v in os.environ.items() if k != "STORM_SURELY_UNSET_VAR"}
    r = subprocess.run(_cmd(*args), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("storm-jax serve: ") and needle in lines[0]
