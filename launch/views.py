"""HTTP endpoints of the SMART client: /launch (EHR), /start (standalone), /callback, the public JWKS."""

from __future__ import annotations

import logging
import secrets

from flask import Blueprint, g, jsonify, redirect, request, session, url_for

from . import flow
from .context import MAX_CONTEXTS_PER_SESSION
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
    if services().on_launch:
        services().on_launch(ctx, g.request_id)  # recorded before the user sees anything
    session.rotate()  # a new session id once signed in
    earlier = [c for c in session.get("contexts", []) if c != ctx.id][-(MAX_CONTEXTS_PER_SESSION - 1) :]
    session["contexts"] = [*earlier, ctx.id]
    return redirect(url_for("record.home", ctx_id=ctx.id))


@bp.get("/.well-known/jwks.json")
def jwks():
    resp = jsonify(public_jwks(services().keyset))
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp
