"""``make run``: start the sandbox and the viewer on loopback and print the URL to open.

Development only. The configuration defaults to the sandbox's own (``SANDBOX_CONFIG``), which generates
development keys; ``--only viewer`` starts just the viewer and works with a file that has no ``[sandbox]``
table (the product entry point is ``python -m app``).

A sandbox split over processes (``bench/launch_bench.py``: one organisation's FHIR server per process, each
behind its own latency proxy): ``--orgs hospital`` answers only that organisation's FHIR base, ``--listen``
binds another address than ``[sandbox] base_url`` (the public URL is the proxy's), and the environment gives
what every process must agree on: ``SANDBOX_KEYS_FILE`` (the authorisation server's signing keys, shared so
that every process accepts its tokens) and ``SANDBOX_ORG_URLS`` (``gp=http://127.0.0.1:9001,hospital=…``: the
origin each organisation's FHIR base is reached at; the others stay under base_url).
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
from app.runtime import tune_gc
from sandbox import create_sandbox_app
from sandbox.keys import ServerKeys

SANDBOX_CONFIG = Path(__file__).resolve().parent / "config.toml"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

__all__ = ["SANDBOX_CONFIG", "NoDelayHandler", "main", "serve"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("SCR_CONFIG") or str(SANDBOX_CONFIG))
    parser.add_argument("--only", choices=("sandbox", "viewer"), help="start just one of the two (benchmarks)")
    parser.add_argument("--orgs", help="with --only sandbox: answer only these organisations' FHIR bases (a,b)")
    parser.add_argument(
        "--listen", help="with --only sandbox: HOST:PORT to bind instead of base_url's (behind a proxy)"
    )
    args = parser.parse_args(argv)
    if (args.orgs or args.listen) and args.only != "sandbox":
        print("--orgs and --listen need --only sandbox", file=sys.stderr)
        return 2
    configure_logging(json_logs=os.environ.get("SCR_LOG_FORMAT") == "json")
    try:
        config = load_config(args.config)
        viewer = create_app(config) if args.only != "sandbox" else None
        sandbox = create_sandbox_app(config, **split_options(args)) if args.only != "viewer" else None
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"sandbox split: {exc}", file=sys.stderr)
        return 2
    tune_gc()  # the same GC settings as gunicorn.conf.py and python -m app (app/runtime.py)
    # Only the sandbox reads [sandbox]: a viewer-only start works with a file that has none.
    sandbox_url = sandbox.extensions["sandbox_state"].settings.base_url if sandbox is not None else None
    apps = [(url, app) for url, app in ((sandbox_url, sandbox), (config.viewer.base_url, viewer)) if app is not None]
    binds = [(f"http://{args.listen}" if args.listen and app is sandbox else url, app) for url, app in apps]
    for url, _ in binds:
        if urlsplit(url).hostname not in LOOPBACK:
            print(f"refusing to bind {url}: the sandbox only listens on loopback", file=sys.stderr)
            return 2
    servers = []
    for url, app in binds:
        parts = urlsplit(url)
        servers.append(serve(app, parts.hostname, parts.port or 80))
    lines = ["", "  Shared care record sandbox is running."]
    if args.orgs:
        lines.append(f"  FHIR servers of {args.orgs} only, listening on {binds[0][0]}")
    elif sandbox_url:
        lines += [f"  Open the simulated EHR:   {sandbox_url}/", f"  Launch inspector:         {sandbox_url}/inspector"]
    if viewer is not None:
        lines.append(f"  Viewer:                   {config.viewer.base_url}/")
    print("\n".join([*lines, "  Press Ctrl+C to stop.", ""]), flush=True)
    wait_for_stop()
    for server in servers:
        server.shutdown()
    return 0


def split_options(args: argparse.Namespace) -> dict:
    """``create_sandbox_app`` keywords for a sandbox split over processes (empty for a whole sandbox)."""
    options: dict = {}
    if keys_file := os.environ.get("SANDBOX_KEYS_FILE"):
        options["keys"] = ServerKeys.shared(keys_file)
    if org_urls := os.environ.get("SANDBOX_ORG_URLS"):
        pairs = [item.split("=", 1) for item in org_urls.split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("SANDBOX_ORG_URLS is org=http://host:port,… ")
        options["org_urls"] = {org.strip(): url.strip() for org, url in pairs}
    if args.orgs:
        options["orgs"] = [o.strip() for o in args.orgs.split(",") if o.strip()]
    return options


if __name__ == "__main__":
    sys.exit(main())
