"""What every request and response passes through: size limits on what comes in, headers on what goes out.

The CSP allows only our own origin (no inline script or style) and lets only the registered EHRs frame
the viewer. Patient data must never be cached, and the callback URL (with its code) must never leak in
a Referer. Requests larger than any form the viewer has (bodies, header lines) are refused with a 4xx
before any view runs; ``local_path`` keeps redirect targets inside the viewer.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Flask, abort, request

MAX_BODY_BYTES = 64 * 1024  # the largest form (an access request) is a few KB
MAX_HEADER_BYTES = 8 * 1024  # per header line, as gunicorn's limit_request_field_size
MAX_HEADERS_TOTAL = 32 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters (CR/LF) and backslashes


def local_path(target: str | None, prefix: str) -> str | None:
    """``target`` when it is a plain path under ``prefix`` on this viewer; None for anything else (another
    host, a scheme, ``//``, backslashes, CR/LF or other control characters): never an open redirect."""
    if not target or _UNSAFE.search(target) or not target.startswith(prefix) or target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "/../" in f"{parts.path}/" or "/./" in f"{parts.path}/":
        return None
    return target


def content_security_policy(frame_origins: list[str]) -> str:
    ancestors = " ".join(frame_origins) or "'none'"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )


def install_request_limits(app: Flask) -> None:
    """413 for bodies over MAX_BODY_BYTES (Flask stops reading there), 431 for oversized header lines."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.before_request
    def _header_sizes():
        total = 0
        for name, value in request.headers.items():
            size = len(name) + len(value) + 4
            total += size
            if size > MAX_HEADER_BYTES or total > MAX_HEADERS_TOTAL:
                abort(431)


def install_security_headers(app: Flask) -> None:
    config = app.config["SCR"]
    csp = content_security_policy(sorted({o for e in config.ehrs for o in e.frame_origins}))

    @app.after_request
    def _headers(resp):
        resp.headers["Content-Security-Policy"] = csp
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp
