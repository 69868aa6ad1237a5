"""A real webhook on 127.0.0.1 for the outbox tests: counts deliveries, can be slow, failing or down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webhook:
    """``status``: what to answer; ``hold``: seconds to wait before answering (cut short by ``release``)."""

    def __init__(self, port: int | None = None, status: int = 202, hold: float = 0.0) -> None:
        self.port = port or free_port()
        self.status, self.hold = status, hold
        self.received = threading.Event()  # a request arrived
        self.answered = threading.Event()  # ... and was answered
        self.release = threading.Event()
        self.bodies: list[dict] = []
        self.keys: Counter[str] = Counter()  # Idempotency-Key → times delivered with a 2xx
        self.lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/inbox/messages?token=secret"

    def _app(self, environ, start_response):
        request = Request(environ)
        self.received.set()
        if self.hold:
            self.release.wait(self.hold)
        status = self.status
        with self.lock:
            if 200 <= status < 300:
                self.bodies.append(json.loads(request.get_data()))
                self.keys[request.headers.get("Idempotency-Key", "")] += 1
        self.answered.set()
        return Response("{}", status=status, content_type="application/json")(environ, start_response)

    def start(self) -> Webhook:
        self._server = make_server("127.0.0.1", self.port, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def wait_for(predicate, timeout: float = 15.0, step: float = 0.02):
    """Poll until ``predicate()`` is truthy (returns it) or fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")
