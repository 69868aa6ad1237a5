"""``make run``: start the sandbox and the viewer on loopback and print the URL to open.

Development only. The configuration defaults to the sandbox's own (``SANDBOX_CONFIG``), which generates
development keys; ``--only viewer`` starts just the viewer and works with a file that has no ``[sandbox]``
table (the product entry point is ``python -m app``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from app import create_app
from app.__main__ import NoDelayHandler, serve, wait_for_stop
from app.config import ConfigError, load_config
from app.observability import configure_logging
from sandbox import create_sandbox_app

SANDBOX_CONFIG = Path(__file__).resolve().parent / "config.toml"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

__all__ = ["SANDBOX_CONFIG", "NoDelayHandler", "main", "serve"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("SCR_CONFIG") or str(SANDBOX_CONFIG))
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
    # Only the sandbox reads [sandbox]: a viewer-only start works with a file that has none.
    sandbox_url = sandbox.extensions["sandbox_state"].settings.base_url if sandbox is not None else None
    apps = [(url, app) for url, app in ((sandbox_url, sandbox), (config.viewer.base_url, viewer)) if app is not None]
    for url, _ in apps:
        if urlsplit(url).hostname not in LOOPBACK:
            print(f"refusing to bind {url}: the sandbox only listens on loopback", file=sys.stderr)
            return 2
    servers = []
    for url, app in apps:
        parts = urlsplit(url)
        servers.append(serve(app, parts.hostname, parts.port or 80))
    lines = ["", "  Shared care record sandbox is running."]
    if sandbox_url:
        lines += [f"  Open the simulated EHR:   {sandbox_url}/", f"  Launch inspector:         {sandbox_url}/inspector"]
    if viewer is not None:
        lines.append(f"  Viewer:                   {config.viewer.base_url}/")
    print("\n".join([*lines, "  Press Ctrl+C to stop.", ""]), flush=True)
    wait_for_stop()
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
