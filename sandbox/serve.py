"""``make run``: start the sandbox and the viewer on loopback and print the URL to open."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler, make_server

from app import create_app
from app.config import ConfigError, load_config
from app.observability import configure_logging
from sandbox import create_sandbox_app


class NoDelayHandler(WSGIRequestHandler):
    """TCP_NODELAY on every response: without it Nagle + delayed ACK add ~40 ms per keep-alive reply (H4)."""

    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"


def serve(app, host: str, port: int):
    server = make_server(host, port, app, threaded=True, request_handler=NoDelayHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=os.environ.get("SCR_CONFIG"))
    parser.add_argument("--only", choices=("sandbox", "viewer"), help="start just one of the two (benchmarks)")
    args = parser.parse_args(argv)
    configure_logging(json_logs=os.environ.get("SCR_LOG_FORMAT") == "json")
    try:
        config = load_config(args.config)
        viewer = create_app(config) if args.only != "sandbox" else None
        sandbox = create_sandbox_app(config) if args.only != "viewer" else None
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    servers = []
    for url, app in ((config.raw["sandbox"]["base_url"], sandbox), (config.viewer.base_url, viewer)):
        if app is None:
            continue
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            print(f"refusing to bind {url}: the sandbox only listens on loopback", file=sys.stderr)
            return 2
        servers.append(serve(app, parts.hostname, parts.port or 80))
    sandbox_url = config.raw["sandbox"]["base_url"]
    print(
        "\n  Shared care record sandbox is running.\n"
        f"  Open the simulated EHR:   {sandbox_url}/\n"
        f"  Launch inspector:         {sandbox_url}/inspector\n"
        f"  Viewer:                   {config.viewer.base_url}/\n"
        "  Press Ctrl+C to stop.\n",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
