"""The record pages, addressed by launch context: ``/r/<ctx_id>/…``.

A context id is honoured only in the browser session that completed that launch, and always shows the
patient of that launch — never whoever was launched last. Every page asks the pipeline for one look at
the record and renders it, or acts on the decision's verdict (wait, ask a reason, break-glass, refuse…).
The table pages are one route, derived from the record catalogue.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import nh3
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup

from app.access.policy import UNTRAINED, Step
from app.pipeline import Look
from app.record import find
from app.record import sections as views
from app.record.catalogue import TABLE, Section
from app.record.charts import legend, trend_svg
from app.record.export import export_bundle
from app.services import services
from app.views import dateinput
from app.views.banner import patient_banner
from launch.context import LaunchContext
from launch.errors import SessionExpired
from launch.roles import IDENTITY_SOURCE_LABELS

bp = Blueprint("record", __name__, url_prefix="/r/<ctx_id>")

FIRST_SCREEN_WAIT = 1.5  # seconds the first page waits for the organisations before showing progress
SECTION_WAIT = 10.0
# Lists a page shortens, each with "showing N of M" and a link to all of it.
TRENDS_SHOWN = 12
REPORTS_SHOWN = 50
DOCUMENTS_SHOWN = 200  # per organisation
CARE_PLANS_SHOWN = 50
SEARCH_SHOWN = 25  # hits per section; "showing N of M" links to all of a section's
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
    ctx = services().launch.contexts.load(ctx_id)
    if ctx is None:
        raise SessionExpired(f"context {ctx_id[:6]}… has expired")
    return ctx


def page_url(ctx: LaunchContext, name: str) -> str:
    section = services().catalogue.get(name)
    if section is None or section.page is None:
        return url_for("record.home", ctx_id=ctx.id)
    if section.page == TABLE:
        return url_for("record.section", ctx_id=ctx.id, name=name)
    return url_for("record.home" if name == services().pipeline.landing else section.endpoint, ctx_id=ctx.id)


def look_at(ctx: LaunchContext, section: str, wait: float, audit_as: str = "view", what: str = "") -> Look:
    """``what``: how the trail describes this look (the request path when not given)."""
    look = services().pipeline.open(
        ctx,
        section,
        g.request_id,
        wait,
        refresh=request.args.get("refresh") == "1",
        audit_as=audit_as,
        what=what or request.full_path,
    )
    g.refresh_note = look.refresh_note  # a refresh asked for too soon: record/_sources.html says so
    return look


def refused(ctx: LaunchContext, why: str, nhs: str | None, section: str) -> None:
    """Every refused page, fragment and export is in the trail: the request's first refusal (usually the access
    decision's) is written, identical ones are counted (app/audit/refusals.py)."""
    services().audit.record(
        "refusal",
        request_id=g.request_id,
        ctx=ctx,
        patient_nhs=nhs,
        outcome="minor-failure",
        description=why[:300],
        what=section,
    )


def act_on(ctx: LaunchContext, look: Look, section: str):
    """Everything but "show": the decision says where to go, the view only goes there."""
    step = look.verdict.step
    if step is Step.WAIT:
        return render_template(
            "record/loading.html",
            ctx=ctx,
            record=look.record,
            banner=patient_banner(look.record.patient, ctx.need_patient_banner),
            user=ctx.identity,
            section=section,
            disclose=look.disclose,  # the organisations' names and states, only for users who may learn them
        )
    if step is Step.ASK_REASON:
        return redirect(url_for("access.reason", ctx_id=ctx.id, next=request.path))
    if step is Step.BREAK_GLASS:
        return redirect(url_for("access.break_glass", ctx_id=ctx.id, next=request.path))
    if step is Step.ACCESS_REGISTER:
        return redirect(url_for("register.entries", ctx_id=ctx.id))
    if step is Step.PRIVACY_CONSOLE:
        return redirect(url_for("privacy.alerts", ctx_id=ctx.id))
    if step is Step.GO_TO:
        return redirect(page_url(ctx, look.verdict.target or ""))
    refused(ctx, f"refused: {look.verdict.basis}", look.record.nhs_number if look.record else None, section)
    return render_template(
        "access/refused.html",
        ctx=ctx,
        record=look.record,
        banner=patient_banner(look.record.patient if look.record else None, ctx.need_patient_banner),
        basis=look.verdict.basis,
        user=ctx.identity,
        section=section,
        source_labels=IDENTITY_SOURCE_LABELS,
        untrained=look.verdict.basis == UNTRAINED,
        view_functions=current_app.view_functions,
    ), 403


def render(template: str, ctx: LaunchContext, look: Look, section: str, **kw) -> str:
    decision = look.decision
    pages = [s for s in services().catalogue.pages if decision is None or s.name in decision.sections]
    return render_template(
        template,
        ctx=ctx,
        record=look.record,
        banner=patient_banner(look.record.patient, ctx.need_patient_banner),
        user=ctx.identity,
        section=section,
        sections=[(s.name, s.label, page_url(ctx, s.name)) for s in pages],
        decision=decision,
        break_glass_until=look.break_glass_until,
        **kw,
    )


@bp.get("/")
def home(ctx_id: str):
    ctx = load_context(ctx_id)
    landing = services().pipeline.landing
    look = look_at(ctx, landing, FIRST_SCREEN_WAIT)
    if not look.shown:
        return act_on(ctx, look, landing)
    return render("record/summary.html", ctx, look, landing, summary=views.summary(look.record))


@bp.get("/progress")
def progress(ctx_id: str):
    """The organisations' state, polled by htmx; tells htmx to reload once everything has arrived."""
    ctx = load_context(ctx_id)
    look = services().pipeline.progress(ctx, g.request_id)  # states only: nothing clinical
    if look is None:  # refused on identity alone: nothing is fetched; the page itself says why
        refused(ctx, "progress refused: refused on identity alone", None, "progress")
        resp = Response("")
        resp.headers["HX-Refresh"] = "true"
        return resp
    record = look.record
    # Who holds a record is said only to users who may learn it; everyone else sees a neutral "checking".
    template = "record/_sources.html" if look.disclose else "record/_checking.html"
    resp = Response(render_template(template, record=record, ctx=ctx))
    if record.complete:
        again = _without_refresh(ctx, request.headers.get("HX-Current-URL", ""))
        if again:  # the page asked for a refresh: reload it without asking for another one
            resp.headers["HX-Redirect"] = again
        else:
            resp.headers["HX-Refresh"] = "true"
    return resp


def _without_refresh(ctx: LaunchContext, current: str) -> str | None:
    """This launch's page at ``current`` without ``refresh=1`` (a local path), when it had one; else None."""
    parts = urlsplit(current)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not parts.path.startswith(f"/r/{ctx.id}/") or ("refresh", "1") not in query:
        return None
    rest = urlencode([(k, v) for k, v in query if k != "refresh"])
    return parts.path + (f"?{rest}" if rest else "")


@bp.get("/<name>")
def section(ctx_id: str, name: str):
    """Every table page of the catalogue (problems, medications, …): one route, one template."""
    spec = services().catalogue.get(name)
    if spec is None or spec.page != TABLE:
        abort(404)
    ctx = load_context(ctx_id)
    look = look_at(ctx, name, SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, name)
    order = _sorting(spec)
    rows = find.sort_rows(look.record.section(name), order)
    kept = order.args()  # "Show more" and the other pages of the list keep the sort
    if spec.groups:  # one paged table per group (current and past medicines): each says how many it holds
        groups = [
            views.Group(key, heading, views.paginate([r for r in rows if r.status == key], _page_number(f"{key}-page")))
            for key, heading in spec.groups
        ]
        fragment = next((gr for gr in groups if gr.key == request.args.get("fragment")), None)
        if request.headers.get("HX-Request") and fragment is not None:
            return render_template(
                "record/_rows.html", page=fragment.page, spec=spec, ctx=ctx, group=fragment, filters=kept
            )
        return render(
            "record/section.html", ctx, look, name, spec=spec, groups=groups, page=None, filters=kept, sorting=order
        )
    page = views.paginate(rows, _page_number("page"))
    if request.headers.get("HX-Request") and request.args.get("fragment"):
        return render_template("record/_rows.html", page=page, spec=spec, ctx=ctx, filters=kept)
    return render("record/section.html", ctx, look, name, spec=spec, page=page, filters=kept, sorting=order)


def _sorting(spec: Section) -> find.Sorting:
    """``?sort=<key>&dir=asc|desc``, when the section sorts by that key (anything else: its default order)."""
    return find.sorting(spec, request.args.get("sort"), request.args.get("dir"))


def _may_open(look: Look, page: str) -> bool:
    """May this user open ``page``? Links to another page are offered only when they may."""
    return look.decision is None or page in look.decision.sections


def _page_number(arg: str) -> int:
    return request.args.get(arg, 1, type=int)


@bp.get("/encounters")
def encounters(ctx_id: str):
    ctx = load_context(ctx_id)
    look = look_at(ctx, "encounters", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "encounters")
    record = look.record
    date_from = _date_arg("from")
    date_to = _date_arg("to")
    org = request.args.get("org") or None
    if org and org not in {r.source.id for r in record.results}:
        org = None
    spec = services().catalogue.get("encounters")
    order = _sorting(spec)
    rows = find.sort_rows(views.filter_rows(record.section("encounters"), date_from, date_to, org), order)
    page = views.paginate(rows, _page_number("page"))
    filters = {"from": date_from or "", "to": date_to or "", "org": org or "", **order.args()}
    documents = (
        find.documents_by_encounter(page.rows, record.section("documents")) if _may_open(look, "documents") else {}
    )
    if request.headers.get("HX-Request") and request.args.get("fragment"):
        return render_template(
            "record/_rows.html", page=page, spec=spec, ctx=ctx, filters=filters, encounter_documents=documents
        )
    return render(
        "record/encounters.html",
        ctx,
        look,
        "encounters",
        spec=spec,
        page=page,
        filters=filters,
        sorting=order,
        encounter_documents=documents,
    )


def _wants_all(name: str) -> bool:
    """``?all=<list>``: the whole of a list the page otherwise shortens (and says it shortened)."""
    return request.args.get("all") == name


def _date_arg(name: str) -> str | None:
    value = dateinput.read(request.args, name)
    return value if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None


@bp.get("/results")
def results(ctx_id: str):
    ctx = load_context(ctx_id)
    look = look_at(ctx, "results", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "results")
    record = look.record
    every = views.trends(record)
    key = legend(s for t in every for s in t.sources)  # one marker per organisation on every chart of the page
    trends = views.excerpt(every, TRENDS_SHOWN, "trends", _wants_all("trends"))
    charts = [
        (t, trend_svg(t.name, t.unit, t.points, key, ident=t.slug, band=t.band), key.entries(t.sources, t.band, t.unit))
        for t in trends.items
    ]
    everything = record.section("results")
    tests, categories = find.result_tests(everything), find.result_categories(everything)
    test = _choice("test", {code for code, _ in tests})
    category = _choice("category", set(categories))
    rows = find.filter_results(everything, test, category)
    page = views.paginate(rows, _page_number("page"))
    spec = services().catalogue.get("results")
    filters = {k: v for k, v in (("test", test), ("category", category)) if v}
    if request.headers.get("HX-Request") and request.args.get("fragment"):
        return render_template("record/_rows.html", page=page, spec=spec, ctx=ctx, filters=filters)
    reports = views.excerpt(record.section("reports"), REPORTS_SHOWN, "reports", _wants_all("reports"))
    return render(
        "record/results.html",
        ctx,
        look,
        "results",
        spec=spec,
        charts=charts,
        trends=trends,
        page=page,
        reports=reports,
        report_results=find.report_results(reports.items, everything),
        latest=find.latest_each(rows),
        tests=tests,
        categories=categories,
        filters=filters,
    )


def _choice(arg: str, allowed: set[str]) -> str | None:
    """A filter's value when it is one of the page's own choices; anything else filters nothing."""
    value = request.args.get(arg) or None
    return value if value in allowed else None


@bp.get("/print")
def print_summary(ctx_id: str):
    """The summary as clinicians print it: the patient banner on every page, no navigation, no link addresses.
    Audited as a view of the summary ("print summary")."""
    ctx = load_context(ctx_id)
    look = look_at(ctx, "summary", SECTION_WAIT, what="printed")
    if not look.shown:
        return act_on(ctx, look, "summary")
    summary = views.summary(look.record, everything=True)
    return render("record/print.html", ctx, look, "summary", summary=summary, printed_at=time.time())


@bp.get("/results/trend/<slug>")
def trend(ctx_id: str, slug: str):
    ctx = load_context(ctx_id)
    look = look_at(ctx, "results", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "results")
    every = views.trends(look.record)
    found = next((t for t in every if t.slug == slug), None)
    if found is None:
        abort(404)
    key = legend(s for t in every for s in t.sources)  # the same markers as on the results page
    chart = trend_svg(found.name, found.unit, found.points, key, ident=found.slug, band=found.band, width=720)
    entries = key.entries(found.sources, found.band, found.unit)
    return render("record/trend.html", ctx, look, "results", trend=found, chart=chart, legend=entries)


@bp.get("/search")
def search(ctx_id: str):
    """Search every section this user may open; audited as a view of the record like any page."""
    ctx = load_context(ctx_id)
    look = look_at(ctx, "search", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "search")
    query = (request.args.get("q") or "").strip()
    problem = find.query_problem(query) if query else None
    groups = []
    if query and problem is None:
        allowed = [s for s in services().catalogue.searched if _may_open(look, s.opened_by or "")]
        groups = [
            (group, views.excerpt(group.hits, SEARCH_SHOWN, group.section.name, _wants_all(group.section.name)))
            for group in find.search(look.record, allowed, query)
        ]
    return render(
        "record/search.html",
        ctx,
        look,
        "search",
        query=query,
        problem=problem,
        groups=groups,
        hit_url=_hit_url,
        key_value=find.key_value,
    )


def _hit_url(ctx: LaunchContext, spec: Section, hit: find.Hit) -> str:
    """Where a search hit is shown: its row on the page (and page of the list) that holds it; a document's own
    page."""
    if spec.name == "documents":
        return url_for("record.document", ctx_id=ctx.id, row_id=hit.row.id)
    page = services().catalogue.get(spec.opened_by or "")
    args: dict[str, object] = {"name": page.name} if page.page == TABLE else {}
    if spec.name == "reports":  # the results page shows the first REPORTS_SHOWN reports unless asked for all
        if hit.index >= REPORTS_SHOWN:
            args["all"] = "reports"
    elif hit.index >= views.PAGE_ROWS:
        args[f"{hit.group}-page" if hit.group else "page"] = hit.index // views.PAGE_ROWS + 1
    return url_for(page.endpoint, ctx_id=ctx.id, **args) + f"#row-{hit.row.id}"


@bp.get("/documents")
def documents(ctx_id: str):
    ctx = load_context(ctx_id)
    look = look_at(ctx, "documents", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "documents")
    every = look.record.section("documents")
    holders = {s.source_id: s.name for row in every for s in row.sources}
    kind = _choice("type", set(find.document_types(every)))
    org = _choice("org", set(holders))
    by_org: dict[str, list] = {}
    for row in find.filter_documents(every, kind, org):
        for src in row.sources:
            if org is None or src.source_id == org:
                by_org.setdefault(src.name, []).append(row)
    everything = _wants_all("documents")
    shown = {name: views.excerpt(rows, DOCUMENTS_SHOWN, "documents", everything) for name, rows in by_org.items()}
    filters = {k: v for k, v in (("type", kind), ("org", org)) if v}
    return render(
        "record/documents.html",
        ctx,
        look,
        "documents",
        by_org=shown,
        total=len(every),
        matched=len({r.id for rows in by_org.values() for r in rows}),
        types=find.document_types(every),
        holders=sorted(holders.items(), key=lambda kv: kv[1]),
        filters=filters,
    )


@bp.get("/documents/<row_id>")
def document(ctx_id: str, row_id: str):
    ctx = load_context(ctx_id)
    look = look_at(ctx, "documents", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "documents")
    row = next((r for r in look.record.section("documents") if r.id == row_id), None)
    if row is None:
        abort(404)
    return render("record/document.html", ctx, look, "documents", row=row, body=document_body(row.resources[0]))


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
    look = look_at(ctx, "care", SECTION_WAIT)
    if not look.shown:
        return act_on(ctx, look, "care")
    plans = views.excerpt(look.record.section("care_plans"), CARE_PLANS_SHOWN, "care-plans", _wants_all("care-plans"))
    return render("record/care.html", ctx, look, "care", services=views.involved_services(look.record), plans=plans)


@bp.get("/export.json")
def export(ctx_id: str):
    ctx = load_context(ctx_id)
    look = look_at(ctx, "export", SECTION_WAIT, audit_as="export")
    if not look.shown:
        return act_on(ctx, look, "export")
    record = look.record
    resp = jsonify(export_bundle(record, services().config.viewer.base_url))
    resp.headers["Content-Type"] = "application/fhir+json; charset=utf-8"
    resp.headers["Content-Disposition"] = (
        f'attachment; filename="shared-care-record-{record.nhs_number or "unknown"}.json"'
    )
    return resp
