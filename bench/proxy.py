"""A latency proxy for benchmarks: a small threaded HTTP/1.1 forwarder that adds a round trip per request.

Run (one proxy per process, as ``bench/launch_bench.py`` starts them)::

    .venv/bin/python -m bench.proxy --listen 127.0.0.1:9001 --upstream 127.0.0.1:9101 --delay-ms 50 --log p.jsonl

**What it simulates.** Every HTTP request is held ``--delay-ms`` after it has fully arrived and is then
forwarded; the response is streamed back at once. So each request/response exchange costs one extra
``delay`` round trip (the delay is put on the request leg only), whatever the sizes. Connection set-up is not
delayed (a kept-alive connection on a real network pays its handshakes once, too), and there is no bandwidth
limit. Both sockets have TCP_NODELAY. One thread per client connection, one upstream connection for each.
**The client's connection is kept alive unless the client asks to close**, as a production FHIR server or
gateway keeps it: the sandbox's servers (werkzeug's development server) answer every request with
``Connection: close``, which would otherwise make the viewer open a new TCP connection for every request, a
cost (~0.2 ms of its CPU each) that no real organisation imposes. The proxy drops that header, closes only its
upstream connection and opens a new one for the next request (on loopback, outside the delay).

**Log.** One JSON line per exchange (``--log``): when the request arrived (epoch seconds), the delay really
applied, ``server_ms`` (from forwarding the request to the last byte of the response forwarded: the
upstream's time plus loopback transfer), method, target, status, response bytes, the User-Agent and
X-Request-Id, and, for GETs, the request headers (so a benchmark can replay them). The log is for benchmarks on
loopback; it holds bearer tokens of the sandbox. For a form POST, its ``grant_type``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from urllib.parse import parse_qs

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024


class Closed(Exception):
    """The peer closed the connection between messages."""


class Stream:
    """A socket with a read buffer: lines, exact lengths, and forwarding of message bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def head(self) -> bytes:
        """Up to and including the blank line that ends a message head."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("message head too large")
            if not self._fill():
                if self.buf:
                    raise ConnectionError("closed inside a message head")
                raise Closed
        end = self.buf.index(b"\r\n\r\n") + 4
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed inside a chunked body")
        end = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed inside a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def copy_exactly(self, n: int, out: socket.socket) -> int:
        """Forward ``n`` body bytes to ``out`` as they arrive."""
        left = n
        while left:
            if not self.buf and not self._fill():
                raise ConnectionError("closed inside a body")
            piece, self.buf = self.buf[:left], self.buf[left:]
            out.sendall(piece)
            left -= len(piece)
        return n

    def copy_chunked(self, out: socket.socket) -> int:
        total = 0
        while True:
            size_line = self.line()
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            out.sendall(size_line)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = self.line()
                    out.sendall(trailer)
                    if trailer == b"\r\n":
                        return total
            total += self.copy_exactly(size + 2, out) - 2

    def copy_to_close(self, out: socket.socket) -> int:
        total = 0
        while True:
            if self.buf:
                out.sendall(self.buf)
                total += len(self.buf)
                self.buf = b""
            if not self._fill():
                return total


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for raw in lines[1:]:
        if raw:
            name, _, value = raw.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    return next((v for k, v in headers if k.lower() == name), None)


def wants_close(version: str, headers: list[tuple[str, str]]) -> bool:
    conn = (header(headers, "connection") or "").lower()
    return "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)


def without_connection_header(head: bytes) -> bytes:
    """The response head without its ``Connection`` lines (HTTP/1.1: the connection stays open)."""
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if not line.lower().startswith(b"connection:")]
    return b"\r\n".join(kept)


class Proxy:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], delay_ms: float, log_path: str | None):
        self.upstream, self.delay = upstream, delay_ms / 1000
        self.server = socket.create_server(listen, backlog=256)
        self.log = open(log_path, "a", buffering=1, encoding="utf-8") if log_path else None  # noqa: SIM115
        self.log_lock = threading.Lock()

    def serve_forever(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.connection, args=(client,), daemon=True).start()

    def write_log(self, entry: dict) -> None:
        if self.log is not None:
            line = json.dumps(entry, separators=(",", ":")) + "\n"
            with self.log_lock:
                self.log.write(line)

    def connection(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream: socket.socket | None = None
        dst: Stream | None = None
        src = Stream(client)
        try:
            while True:
                try:
                    head = src.head()
                except Closed:
                    return
                request_line, headers = parse_head(head)
                method, target, version = request_line.split(" ", 2)
                if (header(headers, "transfer-encoding") or "").lower() == "chunked":
                    raise ValueError("chunked request bodies are not supported")
                length = int(header(headers, "content-length") or 0)
                body = src.exactly(length) if length else b""
                arrived, arrived_wall = time.perf_counter(), time.time()
                hold = arrived + self.delay - time.perf_counter()
                if hold > 0:
                    time.sleep(hold)
                delayed_ms = (time.perf_counter() - arrived) * 1000
                sent = time.perf_counter()
                for attempt in (1, 2):  # a kept-alive upstream connection the server has closed: once more
                    if upstream is None:
                        upstream = socket.create_connection(self.upstream)
                        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        dst = Stream(upstream)
                    try:
                        upstream.sendall(head + body)
                        resp_head = dst.head()
                        break
                    except (Closed, ConnectionResetError, BrokenPipeError):
                        upstream.close()
                        upstream = None
                        if attempt == 2:
                            raise ConnectionError("upstream closed without answering") from None
                status_line, resp_headers = parse_head(resp_head)
                resp_version, status = status_line.split(" ", 2)[:2]
                upstream_closes = wants_close(resp_version, resp_headers)
                if upstream_closes:  # keep the client's connection: drop the header, reopen upstream next time
                    resp_head = without_connection_header(resp_head)
                client.sendall(resp_head)
                no_body = method == "HEAD" or status.startswith("1") or status in ("204", "304")
                te = (header(resp_headers, "transfer-encoding") or "").lower()
                close_after = wants_close(version, headers)
                if no_body:
                    size = 0
                elif "chunked" in te:
                    size = dst.copy_chunked(client)
                elif header(resp_headers, "content-length") is not None:
                    size = dst.copy_exactly(int(header(resp_headers, "content-length")), client)
                else:
                    size = dst.copy_to_close(client)
                    close_after = True
                done = time.perf_counter()
                entry = {
                    "t": round(arrived_wall, 6),
                    "delay_ms": round(delayed_ms, 2),
                    "server_ms": round((done - sent) * 1000, 2),
                    "method": method,
                    "target": target,
                    "status": int(status),
                    "bytes": size,
                    "ua": header(headers, "user-agent"),
                    "request_id": header(headers, "x-request-id"),
                }
                if method == "POST" and b"grant_type=" in body:
                    entry["grant"] = parse_qs(body.decode("latin-1")).get("grant_type", [""])[0]
                if method == "GET":
                    entry["headers"] = [[k, v] for k, v in headers if k.lower() not in HOP_BY_HOP]
                self.write_log(entry)
                if close_after:
                    return
                if upstream_closes and upstream is not None:
                    with contextlib.suppress(OSError):
                        upstream.close()
                    upstream = None
        except (OSError, ValueError) as exc:
            self.write_log({"t": round(time.time(), 6), "error": f"{exc.__class__.__name__}: {exc}"})
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=host_port, help="HOST:PORT to accept on")
    parser.add_argument("--upstream", required=True, type=host_port, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added to every request (default 50)")
    parser.add_argument("--log", help="append one JSON line per exchange here")
    args = parser.parse_args(argv)
    proxy = Proxy(args.listen, args.upstream, args.delay_ms, args.log)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"proxy {args.listen[0]}:{args.listen[1]} -> {args.upstream[0]}:{args.upstream[1]} +{args.delay_ms} ms",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        proxy.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
