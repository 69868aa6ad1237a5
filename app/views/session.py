"""Sessions that end: logout, the session-ended page, the host EHR's sign-out, and the idle and absolute limits.

- ``GET /logout`` asks to confirm; ``POST /logout`` (with the form's CSRF token, 403 without) ends the session.
- ``GET /logout/front-channel?iss=…&sid=…``: OpenID Connect Front-Channel Logout 1.0. The EHR's sign-out
  page loads it (in a hidden iframe) and the viewer session in that browser ends: at once when ``iss`` and
  ``sid`` are absent, otherwise only when they match a launch the session holds.
- ``GET /session/ended?reason=…``: says the session ended, why, and how to open the record again.
- Every request: a session past its idle timeout or absolute lifetime (``[session]``) arrives already ended
  (core/state/session.py); what it held is forgotten here, its end recorded, and a record page or an htmx
  request gets the ended page (401; htmx follows ``HX-Redirect``) instead. Any other 401 to an htmx request
  (a context no longer in the session) gets an ``HX-Redirect`` to the ended page too.

Every end of a session that held a launch is audited (``session-end``: DICOM 110114 / 110123 Logout) with
its reason: logout, idle, absolute, replaced (another user launched in this browser), front-channel.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid

from flask import Blueprint, Response, after_this_request, g, redirect, render_template, request, session, url_for

from app.audit.store import AuditUnavailable
from app.services import services
from core.state.session import ABSOLUTE, END_REASONS, FRONT_CHANNEL, IDLE, LOGOUT, REPLACED, SessionEnd
from launch.context import LaunchContext
from launch.flow import EXTENSION
from launch.views import end_session, forget_session, report_end

from .csrf import csrf_token

log = logging.getLogger(__name__)
bp = Blueprint("session", __name__)

AUDIT_KIND = "session-end"
RECORD_PATHS = "/r/"  # the pages that show a launch's record: an ended session gets the ended page there
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")  # as app/__init__.py accepts an incoming X-Request-Id
WHY = {
    LOGOUT: "the user logged out",
    IDLE: "idle timeout",
    ABSOLUTE: "absolute session lifetime reached",
    REPLACED: "another user launched the viewer in the same browser",
    FRONT_CHANNEL: "the user signed out of the EHR (front-channel logout)",
}


@bp.record_once
def _install(state) -> None:
    app = state.app
    limits = app.config["SCR"].session
    configure = getattr(app.session_interface, "configure", None)
    if configure:
        configure(limits.idle_seconds, limits.absolute_seconds)
    app.extensions[EXTENSION].on_session_end = audit_session_end
    app.before_request(_end_expired_session)
    app.after_request(_htmx_follows_the_end)


def audit_session_end(ended: SessionEnd, contexts: list[LaunchContext], request_id: str, details: dict) -> None:
    """One ``session-end`` AuditEvent for the user whose session ended. Never blocks the end itself: a
    session is ended whether or not the trail can be written (that failure is logged as an error)."""
    ids = [c for c in ended.data.get("contexts", []) if isinstance(c, str)]
    try:
        # Emergency access ends with the session that was granted it (its end is recorded, with why).
        services().audit.break_glass.end_for_contexts(ids, request_id, f"ended with the session ({ended.reason})")
        services().audit.record(
            AUDIT_KIND,
            request_id=request_id,
            ctx=contexts[-1] if contexts else None,
            description=f"session ended: {WHY.get(ended.reason, ended.reason)}",
            details={
                "reason": ended.reason,
                "launch-contexts-ended": " ".join(ids),
                "session-started": _iso(ended.created),
                "last-used": _iso(ended.seen) if ended.seen else None,
                **details,
            },
        )
    except AuditUnavailable:
        log.error("request %s: could not audit the end of a session (%s)", request_id, ended.reason)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _end_expired_session():
    """Runs first on every request: a session that timed out is forgotten and its end recorded."""
    ended = getattr(session, "ended", None)
    if ended is None or ended.closed:
        return None
    contexts = forget_session(ended)
    if request.path.startswith(RECORD_PATHS) or request.headers.get("HX-Request"):
        # Answered here, before the app's own request-id hook runs: take the id the same way it would.
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())
        if contexts is not None:
            report_end(ended, contexts, g.request_id)
        return ended_response(ended.reason, 401)
    if contexts is not None:  # e.g. a new launch after the idle timeout: recorded under that request's id

        @after_this_request
        def _report(resp):
            report_end(ended, contexts, g.get("request_id", ""))
            return resp

    return None


def _htmx_follows_the_end(resp: Response) -> Response:
    """htmx swaps nothing on a 401: an old tab's fragment request whose session ended (logged out in another
    tab, another user, the EHR's sign-out) sends the whole page to the ended page instead."""
    if resp.status_code == 401 and request.headers.get("HX-Request") and "HX-Redirect" not in resp.headers:
        resp.headers["HX-Redirect"] = url_for("session.ended")
    return resp


def ended_response(reason: str, status: int = 200):
    """The ended page; for an htmx request an ``HX-Redirect`` to it, so the whole page shows it."""
    if request.headers.get("HX-Request"):
        resp = Response("", status)
        resp.headers["HX-Redirect"] = url_for("session.ended", reason=reason)
        return resp
    return _ended_page(reason), status


def _ended_page(reason: str | None) -> str:
    config = services().config
    return render_template(
        "session/ended.html",
        reason=reason if reason in END_REASONS else None,
        idle_minutes=config.session.idle_seconds // 60,
        absolute_hours=config.session.absolute_seconds // 3600,
        standalone=[e for e in config.ehrs if e.standalone],
    )


@bp.get("/session/ended")
def ended():
    return _ended_page(request.args.get("reason"))


@bp.get("/logout")
def confirm_logout():
    signed_in = bool(session.get("contexts"))
    return render_template("session/logout.html", signed_in=signed_in, csrf=csrf_token() if signed_in else None)


@bp.post("/logout")
def logout():
    if not session.get("contexts"):  # nothing to end (already ended, or never signed in)
        already = getattr(session, "ended", None)
        return redirect(url_for("session.ended", reason=already.reason if already else LOGOUT), 303)
    sent = request.form.get("csrf", "")
    if not sent or not secrets.compare_digest(sent, session.get("csrf", "") or "-"):
        held = [c for c in session["contexts"] if isinstance(c, str)]
        services().audit.record(  # a refusal like any other form's (app/views/csrf.py), with the session's user
            "refusal",
            request_id=g.request_id,
            ctx=services().launch.contexts.load(held[-1]) if held else None,
            outcome="minor-failure",
            description="logout refused: CSRF token missing or wrong" if sent else "logout refused: no CSRF token",
            what=request.endpoint or request.path,
        )
        page = render_template("session/logout.html", signed_in=True, csrf=csrf_token(), expired_form=True)
        return page, 403
    end_session(LOGOUT, g.request_id)
    return redirect(url_for("session.ended", reason=LOGOUT), 303)


@bp.get("/logout/front-channel")
def front_channel_logout():
    """OpenID Connect Front-Channel Logout 1.0, loaded by the EHR's sign-out page in an iframe."""
    if not services().config.session.front_channel_logout:
        return render_template("session/front_channel.html", ended=False), 404
    iss, sid = request.args.get("iss", "")[:500], request.args.get("sid", "")[:500]
    launch = services().launch
    held = [c for c in (launch.contexts.load(i) for i in session.get("contexts", [])) if c is not None]
    matches = held
    if iss:  # the OpenID Provider's issuer (the id_token's iss); the EHR's FHIR base is accepted too
        matches = [c for c in matches if iss in (c.user_claims.get("iss"), c.iss)]
    if sid:
        matches = [c for c in matches if c.user_claims.get("sid") == sid]
    if not session.get("contexts") or (held and not matches):
        return render_template("session/front_channel.html", ended=False)
    end_session(FRONT_CHANNEL, g.request_id, {"logout-iss": iss or None, "logout-sid": sid or None})
    return render_template("session/front_channel.html", ended=True)
