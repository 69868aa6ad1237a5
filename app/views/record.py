"""The record pages, addressed by launch context: ``/r/<ctx_id>/…``.

A context id is honoured only in the browser session that completed that launch, and always shows the
patient of that launch — never whoever was launched last.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, render_template, session

from app.record.nhs_number import NHS_NUMBER_SYSTEM, format_nhs_number, is_valid, normalise
from launch.context import LaunchContext
from launch.ehr_client import EhrFhirClient
from launch.errors import SessionExpired

bp = Blueprint("record", __name__, url_prefix="/r/<ctx_id>")


def load_context(ctx_id: str) -> LaunchContext:
    if ctx_id not in session.get("contexts", []):
        raise SessionExpired(f"context {ctx_id[:6]}… is not part of this browser session")
    ctx = current_app.extensions["launch"].contexts.load(ctx_id)
    if ctx is None:
        raise SessionExpired(f"context {ctx_id[:6]}… has expired")
    return ctx


def patient_banner(patient: dict) -> dict:
    """What the banner shows; an invalid or missing NHS number is said plainly, never hidden."""
    name = (patient.get("name") or [{}])[0]
    nhs = next(
        (
            normalise(i.get("value", ""))
            for i in patient.get("identifier") or []
            if i.get("system") == NHS_NUMBER_SYSTEM
        ),
        None,
    )
    return {
        "name": name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip() or "Unknown",
        "family": name.get("family", ""),
        "birth_date": patient.get("birthDate"),
        "gender": patient.get("gender"),
        "nhs_number": format_nhs_number(nhs) if nhs else None,
        "nhs_number_valid": bool(nhs and is_valid(nhs)),
        "deceased": patient.get("deceasedDateTime") or patient.get("deceasedBoolean"),
    }


@bp.get("/")
def home(ctx_id: str):
    ctx = load_context(ctx_id)
    services = current_app.extensions["launch"]
    client = EhrFhirClient(services.tokens, ctx.id, ctx.iss, g.request_id)
    patient = client.get(f"Patient/{ctx.patient}")
    return render_template("viewer/record.html", ctx=ctx, banner=patient_banner(patient), user=ctx.identity)
