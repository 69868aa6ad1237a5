"""A per-session token for the viewer's few forms (reason, break-glass, privacy officer actions).

A missing or wrong token is a refusal, and is in the audit trail like any other (counted when repeated)."""

from __future__ import annotations

import secrets

from flask import abort, g, request, session

from app.services import services


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not secrets.compare_digest(sent, session.get("csrf", "") or "-"):
        services().audit.record(  # the user comes from the page's launch context (app/audit/refusals.py)
            "refusal",
            request_id=g.get("request_id", ""),
            outcome="minor-failure",
            description="form refused: CSRF token missing or wrong" if sent else "form refused: no CSRF token",
            what=request.endpoint or request.path,
        )
        abort(400, "This form has expired. Go back, reload the page and try again.")
