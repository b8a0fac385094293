"""A small OpenAI chat-completions server on loopback for client tests (stdlib only).

`behaviours` is consumed one entry per request: ("ok", delay_s), ("status", code, headers) or
("sleep", seconds) (answers after the client's timeout); when it runs out every request is ("ok", 0).
It counts requests, the most requests in flight at once, and records every Authorization header so a
test can check what the client sent.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(self, behaviours=(), reply=lambda body: "echo: " + body["messages"][-1]["content"]):
        self.behaviours = list(behaviours)
        self.reply = reply
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    b = server.behaviours.pop(0) if server.behaviours else ("ok", 0.0)
                left = [False]

                def leave():
                    # counted out *before* the reply is written: once the client has the reply it may send
                    # the next request, and counting out after the write would overlap the two (a client
                    # capped at 3 would seem to have 4 in flight)
                    with server._lock:
                        if not left[0]:
                            left[0] = True
                            server.in_flight -= 1

                try:
                    self._serve(b, body, leave)
                finally:
                    leave()

            def _serve(self, b, body, leave):
                if b[0] == "status":
                    leave()
                    payload = json.dumps({"error": {"message": f"scripted {b[1]}", "type": "test"}}).encode()
                    self.send_response(b[1])
                    for k, v in (b[2] if len(b) > 2 else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                time.sleep(b[1])
                text = server.reply(body)
                payload = json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }).encode()  # fmt: skip
                leave()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
