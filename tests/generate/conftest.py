"""A loopback stub of an OpenAI-compatible chat endpoint (the ``stub_endpoint`` fixture)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class StubEndpoint:
    """What the stub answers (one queued ``(status, body, delay_s)`` per request; the last one
    repeats) and what it received."""

    base_url: str
    replies: list[tuple[int, str, float]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    def reply_with_content(self, content: str, status: int = 200) -> None:
        self.replies.append((status, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}),
                             0.0))

    def reply_raw(self, status: int, body: str, delay_s: float = 0.0) -> None:
        self.replies.append((status, body, delay_s))


@pytest.fixture
def stub_endpoint() -> Iterator[StubEndpoint]:
    """An HTTP server on 127.0.0.1 (ephemeral port) speaking ``POST /v1/chat/completions``."""
    endpoint = StubEndpoint(base_url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text, delay_s = endpoint.replies.pop(0) if len(endpoint.replies) > 1 else endpoint.replies[0]
            time.sleep(delay_s)
            payload = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that timed out closes the socket under a slow reply

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    endpoint.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
