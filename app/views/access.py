"""The forms the access decision may ask for: a reason for access, or emergency access (break-glass)."""

from __future__ import annotations

from flask import Blueprint, g, redirect, render_template, request, url_for

from app.access.policy import REASON_LABELS, Step
from app.access.service import AccessError
from app.pipeline import Look
from app.security import local_path
from app.services import services
from launch.context import LaunchContext

from .banner import patient_banner
from .csrf import check_csrf
from .record import act_on, load_context

bp = Blueprint("access", __name__, url_prefix="/r/<ctx_id>/access")
FORM_WAIT = 10.0


def _look(ctx: LaunchContext) -> Look:
    """Decisions here need every organisation's answer too: the same pipeline as the record pages,
    without a "view" event (nothing clinical is shown on a form)."""
    return services().pipeline.open(ctx, "access", g.request_id, FORM_WAIT, audit_as=None)


def _next(ctx: LaunchContext) -> str:
    """Only back into this launch's own pages: never an open redirect."""
    return local_path(request.values.get("next"), f"/r/{ctx.id}/") or url_for("record.home", ctx_id=ctx.id)


def _page(template: str, ctx: LaunchContext, look: Look, error: str | None = None, status=200, field=None):
    """``field``: the form field ``error`` is about (the page links the message to it)."""
    rules = services().access.rules
    decision = look.decision
    return render_template(
        template,
        ctx=ctx,
        record=look.record,
        banner=patient_banner(look.record.patient, ctx.need_patient_banner),
        user=ctx.identity,
        decision=decision,
        error=error,
        error_field=field,
        reasons=[(c, REASON_LABELS.get(c, c)) for c in rules.reason_codes],
        min_length=rules.break_glass_min_justification,
        min_words=rules.break_glass_min_words,
        minutes=rules.break_glass_minutes,
        next=_next(ctx),
        section="access",
    ), status


def _form_or_elsewhere(ctx: LaunchContext, look: Look, wanted: Step):
    """None when this form is the decision's next step; otherwise where to go instead."""
    if look.waiting or look.record is None or look.record.nhs_number is None:
        return act_on(ctx, look, "access") if look.waiting else redirect(url_for("record.home", ctx_id=ctx.id))
    if look.verdict.step is not wanted:
        return redirect(_next(ctx))
    return None


@bp.route("/reason", methods=["GET", "POST"])
def reason(ctx_id: str):
    ctx = load_context(ctx_id)
    look = _look(ctx)
    elsewhere = _form_or_elsewhere(ctx, look, Step.ASK_REASON)
    if elsewhere is not None:
        return elsewhere
    if request.method == "POST":
        check_csrf()
        try:
            services().access.record_reason(
                ctx, look.gathering, request.form.get("reason", ""), request.form.get("note", ""), g.request_id
            )
        except AccessError as exc:
            return _page("access/reason.html", ctx, look, str(exc), 400, exc.field)
        return redirect(_next(ctx))
    return _page("access/reason.html", ctx, look)


@bp.get("/not-opened")
def not_opened(ctx_id: str):
    """The way out of the reason form: the record stays closed, and the page says so (nothing is shown, so
    nothing is audited as a view; the decision that asked for a reason is already in the trail)."""
    ctx = load_context(ctx_id)
    elsewhere = _form_or_elsewhere(ctx, _look(ctx), Step.ASK_REASON)  # only the way out of the reason form
    if elsewhere is not None:
        return elsewhere
    return render_template("access/not_opened.html", ctx=ctx, user=ctx.identity, banner=None, section="access")


def _refused(ctx: LaunchContext, look: Look, why: str) -> None:
    """A break-glass attempt that fails validation is a refusal in the trail (one per request, counted)."""
    services().audit.record(
        "refusal",
        request_id=g.request_id,
        ctx=ctx,
        patient_nhs=look.record.nhs_number if look.record else None,
        outcome="minor-failure",
        description=why[:300],
        what="break-glass",
    )


@bp.route("/break-glass", methods=["GET", "POST"])
def break_glass(ctx_id: str):
    ctx = load_context(ctx_id)
    look = _look(ctx)
    elsewhere = _form_or_elsewhere(ctx, look, Step.BREAK_GLASS)
    if elsewhere is not None:
        return elsewhere
    allowed = look.decision.can_break_glass
    if request.method == "POST":
        check_csrf()
        if request.form.get("confirm") != "yes":
            _refused(ctx, look, "break-glass refused: emergency not confirmed")
            return _page(
                "access/break_glass.html",
                ctx,
                look,
                "Confirm that this is an emergency and that you accept the access will be reviewed.",
                400,
                "confirm",
            )
        try:
            services().access.start_break_glass(
                ctx, look.gathering, request.form.get("justification", ""), g.request_id
            )
        except AccessError as exc:
            _refused(ctx, look, f"break-glass refused: {exc}")
            return _page("access/break_glass.html", ctx, look, str(exc), 400 if allowed else 403, exc.field)
        return redirect(_next(ctx))
    return _page("access/break_glass.html", ctx, look, status=200 if allowed else 403)
