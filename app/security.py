"""Response headers every viewer page carries.

The CSP allows only our own origin (no inline script or style) and lets only the registered EHRs frame
the viewer. Patient data must never be cached, and the callback URL (with its code) must never leak in
a Referer.
"""

from __future__ import annotations

from flask import Flask


def content_security_policy(frame_origins: list[str]) -> str:
    ancestors = " ".join(frame_origins) or "'none'"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )


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
