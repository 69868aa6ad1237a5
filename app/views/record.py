"""The record pages, addressed by launch context: ``/r/<ctx_id>/…``.

A context id is honoured only in the browser session that completed that launch, and always shows the
patient of that launch — never whoever was launched last. The first screen waits briefly for the
organisations to answer, then shows what has arrived with each organisation's state; htmx keeps the
state panel current and reloads the page once every organisation has answered.
"""

from __future__ import annotations

import base64
import binascii
import re

import nh3
from flask import Blueprint, Response, abort, current_app, g, jsonify, render_template, request, session
from markupsafe import Markup

from app.record import sections as views
from app.record.charts import legend, trend_svg
from app.record.export import export_bundle
from core.nhs_number import format_nhs_number, from_identifiers, is_valid
from launch.context import LaunchContext
from launch.errors import SessionExpired

from .gate import SCOPE_SECTIONS, open_record

bp = Blueprint("record", __name__, url_prefix="/r/<ctx_id>")

FIRST_SCREEN_WAIT = 1.5  # seconds the first page waits for the organisations before showing progress
SECTION_WAIT = 10.0
ALLOWED_TAGS = {
    "p",
    "br",
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ul",
    "ol",
    "li",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "div",
    "span",
    "pre",
    "blockquote",
    "hr",
    "dl",
    "dt",
    "dd",
}


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
    nhs = from_identifiers(patient.get("identifier"))
    address = (patient.get("address") or [{}])[0]
    gp = (patient.get("generalPractitioner") or [{}])[0]
    return {
        "name": name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip() or "Unknown",
        "birth_date": patient.get("birthDate"),
        "gender": patient.get("gender"),
        "nhs_number": format_nhs_number(nhs) if nhs else None,
        "nhs_number_valid": bool(nhs and is_valid(nhs)),
        "deceased": patient.get("deceasedDateTime") or patient.get("deceasedBoolean"),
        "address": ", ".join([*address.get("line", []), address.get("city", ""), address.get("postalCode", "")]).strip(
            ", "
        ),
        "gp": gp.get("display") or (gp.get("identifier") or {}).get("value"),
    }


def _record(ctx: LaunchContext, wait: float, section: str):
    record, _decision = open_record(ctx, section, wait)
    return record


def _render(template: str, ctx: LaunchContext, record, section: str, **kw) -> str:
    decision = g.get("decision")
    allowed = SCOPE_SECTIONS.get(decision.scope) if decision else None
    shown = [(k, label) for k, label in views.SECTIONS if allowed is None or k in allowed]
    return render_template(
        template,
        ctx=ctx,
        record=record,
        banner=patient_banner(record.patient),
        user=ctx.identity,
        section=section,
        sections=shown,
        decision=decision,
        break_glass_until=g.get("break_glass_until"),
        **kw,
    )


@bp.get("/")
def home(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, FIRST_SCREEN_WAIT, "summary")
    return _render("record/summary.html", ctx, record, "summary", summary=views.summary(record))


@bp.get("/progress")
def progress(ctx_id: str):
    """The organisations' state, polled by htmx; tells htmx to reload once everything has arrived."""
    ctx = load_context(ctx_id)
    service = current_app.extensions["record"]
    record = service.record(service.start(ctx, g.request_id))  # states only: nothing clinical
    resp = Response(render_template("record/_sources.html", record=record, ctx=ctx))
    if record.complete:
        resp.headers["HX-Refresh"] = "true"
    return resp


@bp.get("/<any(problems, medications, allergies, immunisations, procedures):name>")
def section(ctx_id: str, name: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, name)
    page = views.paginate(record.section(name), request.args.get("page", 1, type=int))
    if request.headers.get("HX-Request") and request.args.get("fragment"):
        return render_template("record/_rows.html", page=page, name=name, ctx=ctx)
    return _render("record/section.html", ctx, record, name, name=name, page=page)


@bp.get("/encounters")
def encounters(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "encounters")
    date_from = _date_arg("from")
    date_to = _date_arg("to")
    org = request.args.get("org") or None
    if org and org not in {r.source.id for r in record.results}:
        org = None
    rows = views.filter_rows(record.section("encounters"), date_from, date_to, org)
    page = views.paginate(rows, request.args.get("page", 1, type=int))
    filters = {"from": date_from or "", "to": date_to or "", "org": org or ""}
    if request.headers.get("HX-Request") and request.args.get("fragment"):
        return render_template("record/_rows.html", page=page, name="encounters", ctx=ctx, filters=filters)
    return _render("record/encounters.html", ctx, record, "encounters", page=page, filters=filters)


def _date_arg(name: str) -> str | None:
    value = request.args.get(name, "")
    return value if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None


@bp.get("/results")
def results(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "results")
    trends = views.trends(record)
    charts = [(t, trend_svg(t.name, t.unit, t.points, t.sources), legend(t.sources)) for t in trends[:12]]
    page = views.paginate(record.section("results"), request.args.get("page", 1, type=int))
    if request.headers.get("HX-Request") and request.args.get("fragment"):
        return render_template("record/_rows.html", page=page, name="results", ctx=ctx)
    return _render(
        "record/results.html",
        ctx,
        record,
        "results",
        charts=charts,
        page=page,
        reports=record.section("reports"),
        more_trends=len(trends) > 12,
    )


@bp.get("/results/trend/<slug>")
def trend(ctx_id: str, slug: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "results")
    found = next((t for t in views.trends(record) if t.slug == slug), None)
    if found is None:
        abort(404)
    chart = trend_svg(found.name, found.unit, found.points, found.sources)
    return _render("record/trend.html", ctx, record, "results", trend=found, chart=chart, legend=legend(found.sources))


@bp.get("/documents")
def documents(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "documents")
    by_org: dict[str, list] = {}
    for row in record.section("documents"):
        for src in row.sources:
            by_org.setdefault(src.name, []).append(row)
    return _render("record/documents.html", ctx, record, "documents", by_org=by_org)


@bp.get("/documents/<row_id>")
def document(ctx_id: str, row_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "documents")
    row = next((r for r in record.section("documents") if r.id == row_id), None)
    if row is None:
        abort(404)
    return _render("record/document.html", ctx, record, "documents", row=row, body=document_body(row.resources[0]))


def document_body(resource: dict) -> Markup:
    """The letter's text, sanitised with an allow-list (no script, no event handlers, no remote images)."""
    for content in resource.get("content") or []:
        attachment = content.get("attachment") or {}
        data = attachment.get("data")
        if not data:
            continue
        try:
            text = base64.b64decode(data, validate=False).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return Markup("<p>This document could not be decoded.</p>")
        kind = (attachment.get("contentType") or "").split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            return Markup(  # noqa: S704 - sanitised by nh3 with an allow-list
                nh3.clean(
                    text,
                    tags=ALLOWED_TAGS,
                    attributes={"td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan", "scope"}},
                    url_schemes=set(),
                    link_rel=None,
                )
            )
        return Markup("<pre class='document-text'>") + text + Markup("</pre>")
    div = (resource.get("text") or {}).get("div")
    if div:
        return Markup(  # noqa: S704 - sanitised by nh3 with an allow-list
            nh3.clean(
                div,
                tags=ALLOWED_TAGS,
                attributes={},
                url_schemes=set(),
                link_rel=None,
            )
        )
    return Markup("<p>This document has no readable content in the record.</p>")


@bp.get("/care")
def care(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "care")
    return _render("record/care.html", ctx, record, "care", services=views.involved_services(record))


@bp.get("/export.json")
def export(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx, SECTION_WAIT, "export")
    resp = jsonify(export_bundle(record, current_app.config["SCR"].viewer.base_url))
    resp.headers["Content-Type"] = "application/fhir+json; charset=utf-8"
    resp.headers["Content-Disposition"] = (
        f'attachment; filename="shared-care-record-{record.nhs_number or "unknown"}.json"'
    )
    return resp
