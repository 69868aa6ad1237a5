"""``python -m app`` / ``scr-viewer``: the viewer alone, in one process, on a threaded werkzeug server.

For a single host, a demonstration or a smoke test of an installed wheel. Production runs the same factory
under gunicorn (``gunicorn --config gunicorn.conf.py 'app:create_app()'``, the Procfile). The configuration
is required: ``--config`` or ``SCR_CONFIG``; there is no default file. It listens on the host and port of
``[viewer] base_url`` unless ``--host``/``--port`` say otherwise (e.g. behind a TLS proxy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from urllib.parse import urlsplit

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from app import create_app
from app.config import ConfigError, load_config
from app.observability import configure_logging
from app.runtime import tune_gc
from app.startup import check_sources


class NoDelayHandler(WSGIRequestHandler):
    """TCP_NODELAY on every response: without it Nagle + delayed ACK add ~40 ms per keep-alive reply (H4)."""

    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"


def serve(app, host: str, port: int) -> BaseWSGIServer:
    """A threaded HTTP server for ``app`` on ``host:port``, serving from a daemon thread."""
    server = make_server(host, port, app, threaded=True, request_handler=NoDelayHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()
    return server


def wait_for_stop() -> None:
    """Block until Ctrl+C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("SCR_CONFIG"), help="the TOML file (default $SCR_CONFIG)")
    parser.add_argument("--host", help="address to listen on (default: the host of [viewer] base_url)")
    parser.add_argument("--port", type=int, help="port to listen on (default: the port of [viewer] base_url)")
    args = parser.parse_args(argv)
    configure_logging(json_logs=os.environ.get("SCR_LOG_FORMAT") == "json")
    try:
        config = load_config(args.config)
        check_sources(config)
        app = create_app(config)
        tune_gc()  # the same GC settings as gunicorn.conf.py and make run (app/runtime.py)
    except ConfigError as exc:
        hint = "" if args.config else " or run python -m app --config FILE"
        print(f"configuration error: {exc}{hint}", file=sys.stderr)
        return 2
    parts = urlsplit(config.viewer.base_url)
    host = args.host or parts.hostname or "127.0.0.1"
    port = args.port or parts.port or (443 if parts.scheme == "https" else 80)
    try:
        server = serve(app, host, port)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    print(f"Shared care record viewer on http://{host}:{server.server_port}/ (public URL {config.viewer.base_url})")
    print("Press Ctrl+C to stop.", flush=True)
    wait_for_stop()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
