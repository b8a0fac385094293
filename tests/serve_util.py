"""Helpers of the serving tests: a real uvicorn server on a free loopback port, in a thread, and raw HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import uvicorn


class LiveServer:
    """Serve an ASGI app on 127.0.0.1:<free port> from a background thread until `close()`."""

    def __init__(self, app, timeout_s: float = 30.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # the OS picks a free port
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
    """(status, decoded JSON body) of one plain HTTP request; `body` is a JSON value or raw bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def health(port: int) -> dict:
    status, body = request(port, "GET", "/health", timeout=10)
    assert status == 200
    return body


def wait_for(pred, timeout_s: float, what: str, interval: float = 0.05):
    """Poll `pred()` until it returns a truthy value (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval)
