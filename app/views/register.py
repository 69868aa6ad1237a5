"""The local access register's pages.

- ``/access-request/<ctx_id>``: a user refused for having no role (or, standalone, no recorded training)
  asks for access; then a confirmation with the service desk's contacts.
- ``/r/<ctx_id>/register/…``: privacy officers and registration authority staff (``[access]
  register_manager_roles``) list, add, renew and revoke entries, and approve or reject the request queue.

Pages are reached from a launch context, like the privacy console; every form posts a CSRF token, and every
change is audited by the register itself (app/access/register.py), which refuses it when the audit trail
cannot be written.
"""

from __future__ import annotations

from flask import Blueprint, abort, g, redirect, render_template, request, url_for

from app.access.policy import Step, capabilities
from app.access.register import REQUESTABLE_ROLES, TRAINING_KEY_MAX, AccessRegister, RegisterError, manages_register
from app.services import services
from launch.context import LaunchContext

from . import dateinput
from .csrf import check_csrf
from .record import load_context, refused

bp = Blueprint("register", __name__)
MANAGE = "/r/<ctx_id>/register"


def _register() -> AccessRegister:
    return services().register


# -- the access request form ----------------------------------------------------------------------------------
def _requester(ctx_id: str) -> tuple[LaunchContext, bool]:
    """The launch, and whether its user may ask: refused on identity alone (no role, or untrained standalone
    use) — not privacy officers, who have their console, nor anyone the access decision already lets in."""
    ctx = load_context(ctx_id)
    if ctx.identity is None:
        abort(403, "Your clinical system did not say who you are, so access cannot be requested here.")
    refusal = services().access.screen(ctx)
    return ctx, refusal is not None and refusal.next is Step.REFUSE


@bp.route("/access-request/<ctx_id>", methods=["GET", "POST"])
def request_form(ctx_id: str):
    ctx, may_ask = _requester(ctx_id)
    if not may_ask:
        return redirect(url_for("record.home", ctx_id=ctx.id))
    register = _register()
    if register.pending_for(ctx.iss, ctx.identity.subjects) is not None:
        return redirect(url_for("register.request_sent", ctx_id=ctx.id))
    form, problems = {}, {}
    if request.method == "POST":
        check_csrf()
        form = _form(_REQUEST_FIELDS)
        try:
            register.submit(
                ctx.identity,
                ctx.iss,
                ctx.ehr_name,
                requested_role=form["requested_role"],
                organisation=form["organisation"],
                organisation_ods=form["organisation_ods"],
                reason=form["reason"],
                training_completed=form["training_completed"],
                training_confirmed=form["training_confirmed"] == "yes",
                request_id=g.request_id,
                ctx=ctx,
            )
        except RegisterError as exc:
            problems = exc.problems
        else:
            return redirect(url_for("register.request_sent", ctx_id=ctx.id))
    elif ctx.identity.organisation:
        org = ctx.identity.organisation
        form = {"organisation": org.name or "", "organisation_ods": org.ods or ""}
    return render_template(
        "register/request_form.html",
        ctx=ctx,
        user=ctx.identity,
        roles=REQUESTABLE_ROLES,
        form=form,
        problems=problems,
        today=register.today().isoformat(),
    ), (400 if problems else 200)


DATE_FIELDS = ("expires", "training_completed")  # typed as day, month and year boxes (dateinput.py)


def _form(fields: tuple[str, ...]) -> dict[str, str]:
    return {k: dateinput.read(request.form, k) if k in DATE_FIELDS else request.form.get(k, "") for k in fields}


_REQUEST_FIELDS = (
    "requested_role",
    "organisation",
    "organisation_ods",
    "reason",
    "training_completed",
    "training_confirmed",
)


@bp.get("/access-request/<ctx_id>/sent")
def request_sent(ctx_id: str):
    ctx = load_context(ctx_id)
    if ctx.identity is None:
        abort(403)
    pending = _register().pending_for(ctx.iss, ctx.identity.subjects)
    if pending is None:
        return redirect(url_for("register.request_form", ctx_id=ctx.id))
    return render_template("register/request_sent.html", ctx=ctx, user=ctx.identity, req=pending)


# -- the register, for privacy officers and registration authority staff ---------------------------------------
def _manager(ctx_id: str) -> LaunchContext:
    ctx = load_context(ctx_id)
    if not manages_register(ctx.identity, services().access.rules):
        refused(ctx, "access register refused: does not manage the register", None, request.endpoint or "register")
        abort(403, "These pages are for privacy officers and registration authority staff.")
    return ctx


def _page(template: str, ctx: LaunchContext, status: int = 200, **kw):
    rules = services().access.rules
    return render_template(
        template,
        ctx=ctx,
        user=ctx.identity,
        privacy_officer=capabilities(ctx.identity, rules).privacy_officer,
        **kw,
    ), status


def _entries_page(ctx: LaunchContext, status: int = 200, form: dict | None = None, problems: dict | None = None):
    register = _register()
    show_all = request.values.get("all") == "1"
    return _page(
        "register/entries.html",
        ctx,
        status,
        entries=register.entries(include_inactive=show_all),
        show_all=show_all,
        ehrs=services().config.ehrs,
        form=form or {"expires": register.default_expiry()},
        problems=problems or {},
        default_expiry=register.default_expiry(),
        pending=len(register.requests()),
    )


@bp.get(f"{MANAGE}/")
def entries(ctx_id: str):
    return _entries_page(_manager(ctx_id))


@bp.post(f"{MANAGE}/add")
def add(ctx_id: str):
    ctx = _manager(ctx_id)
    check_csrf()
    fields = ("issuer", "subject", "role_codes", "activity_codes", "expires", "organisation_ods")
    form = _form(fields)
    if services().config.ehr_for_issuer(form["issuer"].strip().rstrip("/")) is None:
        return _entries_page(ctx, 400, form, {"issuer": "Choose one of the registered clinical systems."})
    try:
        _register().add(
            form["issuer"],
            form["subject"],
            form["role_codes"],
            form["activity_codes"],
            form["expires"],
            by=ctx.identity,
            request_id=g.request_id,
            organisation_ods=form["organisation_ods"],
            ctx=ctx,
        )
    except RegisterError as exc:
        return _entries_page(ctx, 400, form, exc.problems)
    return redirect(url_for("register.entries", ctx_id=ctx.id))


@bp.post(f"{MANAGE}/<int:entry_id>/renew")
def renew(ctx_id: str, entry_id: int):
    ctx = _manager(ctx_id)
    check_csrf()
    try:
        expires = dateinput.read(request.form, "expires")
        _register().renew(entry_id, expires, by=ctx.identity, request_id=g.request_id, ctx=ctx)
    except RegisterError as exc:
        return _entries_page(ctx, 400, problems={f"entry-{entry_id}": f"Entry {entry_id}: {exc}"})
    return redirect(url_for("register.entries", ctx_id=ctx.id))


@bp.post(f"{MANAGE}/<int:entry_id>/revoke")
def revoke(ctx_id: str, entry_id: int):
    ctx = _manager(ctx_id)
    check_csrf()
    try:
        _register().revoke(
            entry_id, by=ctx.identity, request_id=g.request_id, reason=request.form.get("reason", ""), ctx=ctx
        )
    except RegisterError as exc:
        return _entries_page(ctx, 400, problems={f"entry-{entry_id}": f"Entry {entry_id}: {exc}"})
    return redirect(url_for("register.entries", ctx_id=ctx.id))


@bp.get(f"{MANAGE}/requests")
def requests(ctx_id: str):
    ctx = _manager(ctx_id)
    show_all = request.args.get("all") == "1"
    found = _register().requests(None if show_all else "pending")
    return _page(
        "register/requests.html", ctx, requests=list(reversed(found)) if show_all else found, show_all=show_all
    )


def _review(ctx: LaunchContext, number: int, status: int = 200, form: dict | None = None, problems: dict | None = None):
    register = _register()
    req = register.get_request(number)
    if req is None:
        abort(404)
    form = form or {
        "role_codes": req.requested_role,
        "activity_codes": " ".join(req.suggested_activities),
        "expires": register.default_expiry(),
        "organisation_ods": req.organisation_ods or "",
    }
    existing = next((e for e in register.entries(issuer=req.issuer) if e.subject == req.subject), None)
    return _page(
        "register/request.html",
        ctx,
        status,
        req=req,
        form=form,
        problems=problems or {},
        existing=existing,
        training_key_too_long=len(req.subject) > TRAINING_KEY_MAX,
    )


@bp.get(f"{MANAGE}/requests/<int:number>")
def review(ctx_id: str, number: int):
    return _review(_manager(ctx_id), number)


@bp.post(f"{MANAGE}/requests/<int:number>/approve")
def approve(ctx_id: str, number: int):
    ctx = _manager(ctx_id)
    check_csrf()
    fields = ("role_codes", "activity_codes", "expires", "organisation_ods", "note")
    form = _form(fields)
    try:
        _register().approve(
            number,
            form["role_codes"],
            form["activity_codes"],
            form["expires"],
            by=ctx.identity,
            request_id=g.request_id,
            organisation_ods=form["organisation_ods"],
            note=form["note"],
            ctx=ctx,
        )
    except RegisterError as exc:
        return _review(ctx, number, 400, form, exc.problems)
    return redirect(url_for("register.requests", ctx_id=ctx.id))


@bp.post(f"{MANAGE}/requests/<int:number>/reject")
def reject(ctx_id: str, number: int):
    ctx = _manager(ctx_id)
    check_csrf()
    try:
        _register().reject(number, by=ctx.identity, request_id=g.request_id, note=request.form.get("note", ""), ctx=ctx)
    except RegisterError as exc:
        return _review(ctx, number, 400, None, {"reject_" + k: v for k, v in exc.problems.items()})
    return redirect(url_for("register.requests", ctx_id=ctx.id))
