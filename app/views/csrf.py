"""A per-session token for the viewer's few forms (reason, break-glass, privacy officer actions)."""

from __future__ import annotations

import secrets

from flask import abort, request, session


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not secrets.compare_digest(sent, session.get("csrf", "") or "-"):
        abort(400, "This form has expired. Go back, reload the page and try again.")
