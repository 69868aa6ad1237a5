"""The forms the access decision may ask for: a reason for access, or emergency access (break-glass)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from app.access.policy import NEED_BREAK_GLASS, NEED_REASON, REASON_LABELS
from app.access.service import AccessError
from app.record.service import ConsolidatedRecord
from launch.context import LaunchContext

from .csrf import check_csrf
from .gate import Interrupt, gather
from .record import load_context, patient_banner

bp = Blueprint("access", __name__, url_prefix="/r/<ctx_id>/access")


def _record(ctx: LaunchContext) -> ConsolidatedRecord:
    """Decisions here need every organisation's answer too: the same gathering as the record pages."""
    _entry, record = gather(ctx, "access", 10.0)
    if record.nhs_number is None:
        raise Interrupt(redirect(url_for("record.home", ctx_id=ctx.id)))
    return record


def _next(ctx: LaunchContext) -> str:
    """Only back into this launch's own pages: never an open redirect."""
    target = request.values.get("next", "")
    if target.startswith(f"/r/{ctx.id}/") and not urlsplit(target).netloc:
        return target
    return url_for("record.home", ctx_id=ctx.id)


def _page(
    template: str, ctx: LaunchContext, record: ConsolidatedRecord, decision, error: str | None = None, status=200
):
    rules = current_app.extensions["access"].rules
    return render_template(
        template,
        ctx=ctx,
        record=record,
        banner=patient_banner(record.patient),
        user=ctx.identity,
        decision=decision,
        error=error,
        reasons=[(c, REASON_LABELS.get(c, c)) for c in rules.reason_codes],
        min_length=rules.break_glass_min_justification,
        minutes=rules.break_glass_minutes,
        next=_next(ctx),
        section="access",
    ), status


@bp.route("/reason", methods=["GET", "POST"])
def reason(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx)
    access = current_app.extensions["access"]
    decision = access.evaluate(ctx, record, g.request_id)
    if decision.outcome != NEED_REASON:
        return redirect(_next(ctx))
    if request.method == "POST":
        check_csrf()
        try:
            access.record_reason(
                ctx, record, request.form.get("reason", ""), request.form.get("note", ""), g.request_id
            )
        except AccessError as exc:
            return _page("access/reason.html", ctx, record, decision, str(exc), 400)
        return redirect(_next(ctx))
    return _page("access/reason.html", ctx, record, decision)


@bp.route("/break-glass", methods=["GET", "POST"])
def break_glass(ctx_id: str):
    ctx = load_context(ctx_id)
    record = _record(ctx)
    access = current_app.extensions["access"]
    decision = access.evaluate(ctx, record, g.request_id)
    if decision.outcome != NEED_BREAK_GLASS:
        return redirect(_next(ctx))
    if request.method == "POST":
        check_csrf()
        if request.form.get("confirm") != "yes":
            return _page(
                "access/break_glass.html",
                ctx,
                record,
                decision,
                "Confirm that this is an emergency and that you accept the access will be reviewed.",
                400,
            )
        try:
            access.start_break_glass(ctx, record, request.form.get("justification", ""), g.request_id)
        except AccessError as exc:
            return _page(
                "access/break_glass.html", ctx, record, decision, str(exc), 400 if decision.can_break_glass else 403
            )
        return redirect(_next(ctx))
    return _page("access/break_glass.html", ctx, record, decision, status=200 if decision.can_break_glass else 403)


def minutes_left(until: float | None) -> int:
    return max(0, int((until - time.time()) // 60)) if until else 0
