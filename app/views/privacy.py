"""Privacy officer pages (R0001 with B0015/B0016): alert queue, audit search, subject access reports,
training attestations. Every use is itself audited."""

from __future__ import annotations

import csv
import io
import re

from flask import Blueprint, Response, abort, g, jsonify, redirect, render_template, request, url_for

from app.access.policy import capabilities
from app.access.service import AlertNotAddressed, AlertNotFound
from app.services import services
from core.nhs_number import is_valid, normalise
from core.rbac import PURPOSE_NAMES, ROLE_NAMES, named
from launch.context import LaunchContext

from . import dateinput
from .csrf import check_csrf
from .record import load_context, refused

bp = Blueprint("privacy", __name__, url_prefix="/r/<ctx_id>/privacy")
ACCESS_KINDS = (
    "view",
    "export",
    "access-decision",
    "reason-recorded",
    "break-glass",
    "break-glass-end",
    "refusal",
    "refusal-summary",
)


def _officer(ctx_id: str) -> LaunchContext:
    ctx = load_context(ctx_id)
    if not capabilities(ctx.identity, services().access.rules).privacy_officer:
        refused(ctx, "privacy pages refused: not a privacy officer", None, request.endpoint or "privacy")
        abort(403, "These pages are for privacy officers.")
    return ctx


def _audit(ctx: LaunchContext, what: str, patient_nhs: str | None = None) -> None:
    services().audit.record(
        "privacy-officer", request_id=g.request_id, ctx=ctx, patient_nhs=patient_nhs, purpose="HOPERAT", what=what
    )


@bp.get("/alerts")
def alerts(ctx_id: str):
    ctx = _officer(ctx_id)
    show_all = request.args.get("all") == "1"
    _audit(ctx, "alert queue")
    items = services().alerts.list("privacy-officer", include_acknowledged=show_all)
    return render_template("privacy/alerts.html", ctx=ctx, alerts=items, show_all=show_all, user=ctx.identity)


@bp.post("/alerts/<int:alert_id>/acknowledge")
def acknowledge(ctx_id: str, alert_id: int):
    ctx = _officer(ctx_id)
    check_csrf()
    by = (ctx.identity.name if ctx.identity else None) or "privacy officer"
    try:  # only an existing alert, and only one addressed to privacy officers (not a care team's)
        services().access.acknowledge_alert(alert_id, by)
    except AlertNotFound:
        abort(404, "There is no such alert.")
    except AlertNotAddressed:
        abort(403, "That alert is addressed to a care team, not to privacy officers.")
    _audit(ctx, f"acknowledged alert {alert_id}")
    return redirect(url_for("privacy.alerts", ctx_id=ctx.id))


def _date(name: str) -> str | None:
    value = dateinput.read(request.args, name)
    return value if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None


@bp.get("/audit")
def audit_search(ctx_id: str):
    ctx = _officer(ctx_id)
    nhs = normalise(request.args.get("nhs", "")) or None
    filters = {
        "patient_nhs": nhs,
        "user_id": request.args.get("user") or None,
        "org_ods": request.args.get("org") or None,
        "purpose": request.args.get("purpose") or None,
        "date_from": _date("from"),
        "date_to": _date("to"),
    }
    searched = any(filters.values())
    events = services().audit_store.search(**filters) if searched else []
    if searched:
        _audit(ctx, f"audit search {request.query_string.decode()[:200]}", nhs)
    return render_template(
        "privacy/audit.html",
        ctx=ctx,
        events=[_row(e) for e in events],
        args=request.args,
        dates={"from": filters["date_from"] or "", "to": filters["date_to"] or ""},
        searched=searched,
        user=ctx.identity,
    )


@bp.get("/subject-access")
def subject_access(ctx_id: str):
    ctx = _officer(ctx_id)
    nhs = normalise(request.args.get("nhs", ""))
    if not nhs:
        return render_template("privacy/sar.html", ctx=ctx, nhs="", rows=None, user=ctx.identity)
    if not is_valid(nhs):
        return render_template(
            "privacy/sar.html", ctx=ctx, nhs=nhs, rows=None, user=ctx.identity, error="That is not a valid NHS number."
        ), 400
    events = [
        e
        for e in services().audit_store.search(patient_nhs=nhs, limit=100_000)
        if e.event["subtype"][-1]["code"] in ACCESS_KINDS
    ]
    _audit(ctx, f"subject access report ({request.args.get('format', 'page')})", nhs)
    rows = [_row(e) for e in events]
    fmt = request.args.get("format")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["when", "who", "role", "organisation", "why", "what", "outcome", "event"])
        for r in rows:
            writer.writerow([r["when"], r["who"], r["role"], r["org"], r["why"], r["what"], r["outcome"], r["seq"]])
        return Response(
            out.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="subject-access-{nhs}.csv"'},
        )
    if fmt == "fhir":
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "total": len(events),
            "entry": [{"fullUrl": f"urn:uuid:audit-{e.seq}", "resource": e.event} for e in events],
        }
        for entry in bundle["entry"]:
            entry["fullUrl"] = f"{services().config.viewer.base_url}/audit/AuditEvent/{entry['resource']['id']}"
        resp = jsonify(bundle)
        resp.headers["Content-Type"] = "application/fhir+json; charset=utf-8"
        return resp
    return render_template("privacy/sar.html", ctx=ctx, nhs=nhs, rows=rows, user=ctx.identity)


@bp.route("/training", methods=["GET", "POST"])
def training(ctx_id: str):
    ctx = _officer(ctx_id)
    register = services().training
    error = None
    if request.method == "POST":
        check_csrf()
        sds, completed = request.form.get("sds_user_id", "").strip(), dateinput.read(request.form, "completed")
        if not re.fullmatch(r"\d{6,20}", sds) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", completed):
            error = "Give the user's SDS user id (digits) and the date training was completed."
        else:
            register.record(sds, completed, (ctx.identity.name if ctx.identity else None) or "privacy officer")
            _audit(ctx, f"training attestation recorded for {sds}")
            return redirect(url_for("privacy.training", ctx_id=ctx.id))
    return render_template("privacy/training.html", ctx=ctx, rows=register.list(), error=error, user=ctx.identity), (
        400 if error else 200
    )


def _row(e) -> dict:
    """One event in words a person can read: role and purpose by name with their code, what was done without
    the viewer's internal addresses (a subject access report goes to the patient)."""
    ev = e.event
    user = ev["agent"][0]
    purpose = ((ev.get("purposeOfEvent") or [{}])[0].get("coding") or [{}])[0].get("code", "")
    what = next((ent.get("description") for ent in ev.get("entity", []) if ent.get("description")), "")
    patient = next(
        (
            ent["what"].get("identifier", {}).get("value")
            for ent in ev.get("entity", [])
            if ent.get("role", {}).get("code") == "1"
        ),
        "",
    )
    kind = ev["subtype"][-1]["code"]
    return {
        "seq": e.seq,
        "when": ev["recorded"],
        "who": user["who"].get("display", ""),
        "role": ", ".join(named(c["coding"][0]["code"], ROLE_NAMES) for c in user.get("role", [])),
        "org": user.get("location", {}).get("display", ""),
        "why": named(purpose, PURPOSE_NAMES) if purpose else "",
        "what": EVENT_WORDS.get(kind, kind)
        + (f": {plain(what)}" if plain(what) else "")
        + (f" – {plain(ev['outcomeDesc'])}" if ev.get("outcomeDesc") else ""),
        "outcome": {"0": "success", "4": "refused", "8": "failed"}.get(ev["outcome"], ev["outcome"]),
        "patient": patient,
    }


# What each kind of event means to the person reading a subject access report.
EVENT_WORDS = {
    "launch": "Opened from a clinical system",
    "access-decision": "Access decided",
    "reason-recorded": "Reason for access recorded",
    "break-glass": "Emergency access started",
    "break-glass-end": "Emergency access ended",
    "view": "Viewed",
    "export": "Downloaded the record",
    "refusal": "Refused",
    "refusal-summary": "Refused (repeated)",
    "error": "Error",
    "privacy-officer": "Privacy officer search",
    "register-change": "Access register changed",
    "access-request": "Access requested",
    "session-end": "Session ended",
}
_INTERNAL_PATH = re.compile(r"\s*/r/[A-Za-z0-9_-]+/[^\s]*")


def plain(text: str) -> str:
    """Without the viewer's internal addresses (``/r/<launch>/results?page=2``) and with section names in words."""
    text = _INTERNAL_PATH.sub("", text or "").strip()
    return text.replace("_", " ")
