"""Every record page passes through here: fetch, decide, audit, and only then show.

Nothing clinical is shown before the access decision, and the decision needs every organisation's
answer (an objection may sit at any of them), so until then the page shows only who is being asked.
If the audit trail cannot be written, the page is refused.
"""

from __future__ import annotations

from flask import Response, current_app, g, redirect, render_template, request, url_for

from app.access.policy import DEMOGRAPHICS, DETAILED, NEED_BREAK_GLASS, NEED_REASON, SUMMARY, Decision, is_sensitive
from app.record.service import ConsolidatedRecord, Withholding
from launch.context import LaunchContext

# Sections each scope may open (summary-record users see the summary and its lists only).
SCOPE_SECTIONS = {
    DETAILED: None,  # everything
    SUMMARY: {"summary", "problems", "medications", "allergies", "progress"},
    DEMOGRAPHICS: {"care", "progress"},
}


class Interrupt(Exception):
    """Stop the page and answer with this response instead."""

    def __init__(self, response) -> None:
        super().__init__("interrupt")
        self.response = response


def gather(ctx: LaunchContext, section: str, wait: float):
    """The launch's record once every organisation has answered (decisions need all of them); until then
    the page is the organisations' progress. Returns (fetch entry, unfiltered record)."""
    service = current_app.extensions["record"]
    entry = service.start(ctx, g.request_id, refresh=request.args.get("refresh") == "1")
    current_app.extensions["access"].prepare(ctx, entry.nhs_number, g.request_id)  # in parallel with the fetch
    if entry.job is not None:
        entry.job.wait(wait)
    raw = service.record(entry)
    if raw.nhs_number is not None and not raw.complete:
        raise Interrupt(
            render_template(
                "record/loading.html", ctx=ctx, record=raw, banner=_banner(raw), user=ctx.identity, section=section
            )
        )
    return entry, raw


def open_record(ctx: LaunchContext, section: str, wait: float) -> tuple[ConsolidatedRecord, Decision | None]:
    service = current_app.extensions["record"]
    access = current_app.extensions["access"]
    entry, raw = gather(ctx, section, wait)
    if raw.nhs_number is None:
        return raw, None  # nothing to decide: nothing is fetched without a valid NHS number
    decision = access.evaluate(ctx, raw, g.request_id)
    if decision.outcome == NEED_REASON:
        raise Interrupt(redirect(url_for("access.reason", ctx_id=ctx.id, next=request.path)))
    if decision.outcome == NEED_BREAK_GLASS:
        raise Interrupt(redirect(url_for("access.break_glass", ctx_id=ctx.id, next=request.path)))
    if not decision.permitted:
        from app.access.policy import capabilities

        if capabilities(ctx.identity or {}, access.rules).privacy_officer:
            raise Interrupt(redirect(url_for("privacy.alerts", ctx_id=ctx.id)))
        raise Interrupt(
            (
                render_template(
                    "access/refused.html",
                    ctx=ctx,
                    record=raw,
                    banner=_banner(raw),
                    decision=decision,
                    user=ctx.identity,
                    section=section,
                ),
                403,
            )
        )
    allowed = SCOPE_SECTIONS.get(decision.scope)
    if allowed is not None and section not in allowed:
        target = "record.care" if decision.scope == DEMOGRAPHICS else "record.home"
        if section == "summary" and decision.scope == DEMOGRAPHICS:
            raise Interrupt(redirect(url_for(target, ctx_id=ctx.id)))
        raise Interrupt(
            (
                render_template(
                    "access/refused.html",
                    ctx=ctx,
                    record=raw,
                    banner=_banner(raw),
                    decision=Decision(
                        "refuse",
                        decision.scope,
                        None,
                        "Your role allows only part of the record; this section is not part of it.",
                    ),
                    user=ctx.identity,
                    section=section,
                ),
                403,
            )
        )
    rules = access.rules
    withhold = Withholding(
        (lambda r: is_sensitive(r, rules)) if decision.withhold_sensitive else None, decision.withheld_ods
    )
    view = service.record(entry, withhold)
    current_app.extensions["audit"].record(
        "export" if section == "export" else "view",
        request_id=g.request_id,
        ctx=ctx,
        patient_nhs=raw.nhs_number,
        purpose=decision.purpose,
        what=f"{section} {request.full_path}",
        details={"withheld-items": view.withheld},
    )
    g.decision = decision
    g.break_glass_until = access.break_glass_until(ctx, raw.nhs_number)
    return view, decision


def _banner(record: ConsolidatedRecord) -> dict:
    from .record import patient_banner

    return patient_banner(record.patient)


def interrupt_response(exc: Interrupt) -> Response:
    return exc.response
