"""HTTP endpoints of the SMART client: /launch (EHR), /start (standalone), /callback, the public JWKS.

Also how a browser session ends (``end_session``, ``forget_session``, ``report_end``): every launch context
the session held, and its tokens, leave the store, so old tabs and copied URLs stop working, and the end is
reported (``LaunchServices.on_session_end``, the viewer's audit trail). A launch completed by a different
user (issuer + subject) in a browser whose session holds another user's contexts ends that session first.
"""

from __future__ import annotations

import logging
import secrets

from flask import Blueprint, current_app, g, jsonify, redirect, request, session, url_for

from core.state.session import REPLACED, SessionEnd

from . import flow
from .context import MAX_CONTEXTS_PER_SESSION, LaunchContext
from .errors import MissingLaunchParameters, UnknownIssuer
from .flow import services
from .keys import public_jwks

log = logging.getLogger(__name__)
bp = Blueprint("launch", __name__)


def _binding() -> str:
    """A random value tying OAuth state to this browser's session (login CSRF protection)."""
    if "binding" not in session:
        session["binding"] = secrets.token_urlsafe(24)
    return session["binding"]


@bp.get("/launch")
def ehr_launch():
    iss, launch = request.args.get("iss", ""), request.args.get("launch", "")
    ehr = services().settings.ehr_for_issuer(iss.rstrip("/")) if iss else None
    if ehr is None:
        # Allow-list first: an unknown iss gets a refusal and no outbound request at all (pitfall A8).
        raise UnknownIssuer(f"iss {iss[:200]!r} is not a registered EHR")
    if not launch or len(launch) > 512:
        raise MissingLaunchParameters("launch parameter missing or oversized")
    return redirect(flow.begin(services(), ehr, launch, _binding()))


@bp.get("/start")
def standalone_launch():
    iss = request.args.get("iss", "")
    ehr = services().settings.ehr_for_issuer(iss.rstrip("/")) if iss else None
    if ehr is None or not ehr.standalone:
        raise UnknownIssuer(f"standalone iss {iss[:200]!r} is not registered for standalone launch")
    return redirect(flow.begin(services(), ehr, None, _binding()))


@bp.get("/callback")
def callback():
    params = {k: request.args.get(k, "") for k in ("state", "code", "error", "error_description")}
    ctx = flow.complete(services(), params, session.get("binding", ""), g.request_id)
    user = user_of(ctx)
    previous = signed_in_user()
    if previous is not None and previous != user:
        # Another user in this browser: nothing of the earlier user's session may stay reachable.
        end_session(REPLACED, g.request_id, {"replaced-by": _user_label(ctx)})
    if services().on_launch:
        services().on_launch(ctx, g.request_id)  # recorded before the user sees anything
    session.rotate()  # a new session id once signed in
    earlier = [c for c in session.get("contexts", []) if c != ctx.id][-(MAX_CONTEXTS_PER_SESSION - 1) :]
    session["user"] = user
    session["contexts"] = [*earlier, ctx.id]
    return redirect(url_for("record.home", ctx_id=ctx.id))


def user_of(ctx: LaunchContext) -> dict:
    """Who completed a launch: the id_token's issuer and subject (OpenID Connect's unique user)."""
    claims = ctx.user_claims or {}
    sub = claims.get("sub") or (ctx.identity.user_id if ctx.identity else None)
    return {"iss": claims.get("iss") or ctx.iss, "sub": sub}


def _user_label(ctx: LaunchContext) -> str:
    identity = ctx.identity
    return (identity.user_id if identity else None) or str(user_of(ctx)["sub"])


def signed_in_user() -> dict | None:
    """The user this browser session belongs to; None while it holds no launch context."""
    if not session.get("contexts"):
        return None
    if isinstance(session.get("user"), dict):
        return session["user"]
    for ctx_id in reversed(session["contexts"]):  # a session from before the user was kept beside the contexts
        ctx = services().contexts.load(ctx_id)
        if ctx is not None:
            return user_of(ctx)
    return None


def end_session(reason: str, request_id: str, details: dict | None = None) -> SessionEnd:
    """End this browser's session now (logout, another user, the EHR's sign-out), forget what it held and
    report the end. The request carries on with a new, empty session."""
    ended = session.end(reason)
    contexts = forget_session(ended)
    if contexts is not None:
        report_end(ended, contexts, request_id, details)
    return ended


def forget_session(ended: SessionEnd) -> list[LaunchContext] | None:
    """Delete every launch context the ended session held, and its tokens, from the store.

    Returns the contexts (as they were) when this request is the one to report the end; None when there is
    nothing to report (the session held no context) or another request already took it."""
    if ended.closed:
        return None
    ended.closed = True
    ids = [c for c in ended.data.get("contexts", []) if isinstance(c, str)]
    claim = getattr(current_app.session_interface, "claim", None)
    first = claim(ended) if claim else True
    contexts = [c for c in (services().contexts.load(i) for i in ids) if c is not None]
    for ctx_id in ids:
        services().contexts.delete(ctx_id)
    if ids:
        log.info("session ended (%s): %d launch context(s) forgotten", ended.reason, len(ids))
    return contexts if first and ids else None


def report_end(ended: SessionEnd, contexts: list[LaunchContext], request_id: str, details: dict | None = None) -> None:
    if services().on_session_end:
        services().on_session_end(ended, contexts, request_id, dict(details or {}))


@bp.get("/.well-known/jwks.json")
def jwks():
    resp = jsonify(public_jwks(services().keyset))
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp
