"""A tiny HTTP/1.1 server on raw sockets for the HTTP-layer tests: keep-alive by default, scripted
misbehaviour (idle close, dropped reused connections, resets mid-response, endless bodies), and a log of
every connection and request it saw."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED = None  # a responder returns this when it has closed (or reset) the connection itself


@dataclass
class Seen:
    conn: int  # 1-based connection number
    nth: int  # 1-based request number on that connection
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)


def response(body: bytes | dict, status: int = 200, content_type: str = "application/fhir+json", **extra) -> bytes:
    """A keep-alive HTTP/1.1 response (no ``Connection: close``)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    head = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(data)}"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a server or load balancer dropping the connection does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return CLOSED


class RawServer:
    """``respond(server, seen, conn)`` returns the bytes to send, or ``CLOSED``.

    ``idle_close``: seconds after a response with no new request before the server closes the
    connection (a FIN, with no ``Connection: close`` announced beforehand).
    """

    def __init__(
        self, respond: Callable[[RawServer, Seen, socket.socket], bytes | None], idle_close: float | None = None
    ) -> None:
        self.respond, self.idle_close = respond, idle_close
        self.log: list[Seen] = []
        self.connections = 0
        self.closed_idle = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"{self.base}{path}"

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def wait_idle_closes(self, n: int, timeout: float = 5.0) -> None:
        end = time.time() + timeout
        while self.closed_idle < n and time.time() < end:
            time.sleep(0.01)
        assert self.closed_idle >= n, f"the server closed {self.closed_idle} idle connections, not {n}"

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle artefact (pitfall H4)
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf, nth, idle = b"", 0, False
        try:
            while not self._stop.is_set():
                conn.settimeout(self.idle_close if (nth and self.idle_close) else 10.0)
                try:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                except TimeoutError:
                    idle = bool(nth and self.idle_close)
                    return
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                nth += 1
                seen = Seen(number, nth, method, target, headers)
                with self._lock:
                    self.log.append(seen)
                out = self.respond(self, seen, conn)
                if out is None:
                    return
                conn.sendall(out)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            if idle:  # counted once closed: a test waiting for it must not race the close itself
                with self._lock:
                    self.closed_idle += 1
