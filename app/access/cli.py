"""``flask --app app access …``: the local access register and its request queue from the command line.

Every change names its operator (``--by``), who is recorded in the register and in the audit trail; a change
the audit trail cannot record is refused (exit 1), as in the console.
"""

from __future__ import annotations

import sys
import uuid

import click
from flask.cli import AppGroup

from app.audit.store import AuditUnavailable

from .register import PENDING, AccessRegister, RegisterEntry, RegisterError, operator

access_cli = AppGroup("access", help="Who may use the viewer: the local access register and access requests.")
register_cli = AppGroup("register", help="Register entries: (issuer, user id) → role and activity codes.")
requests_cli = AppGroup("requests", help="Access requests waiting for the service desk.")
access_cli.add_command(register_cli)
access_cli.add_command(requests_cli)

BY = click.option("--by", required=True, help="Who is making the change (recorded with it and audited).")


def _register() -> AccessRegister:
    from app.services import services  # imported late: app.services imports this package

    return services().register


def _request_id() -> str:
    return f"cli-{uuid.uuid4()}"


def _run(change):
    """Run a change; plain-words errors and an unavailable audit trail exit 1 with nothing changed."""
    try:
        return change()
    except RegisterError as exc:
        for field, problem in exc.problems.items():
            click.echo(f"error: {problem}" if field == "form" else f"error ({field}): {problem}", err=True)
        sys.exit(1)
    except AuditUnavailable as exc:
        click.echo(f"error: the audit trail cannot be written ({exc}); nothing was changed", err=True)
        sys.exit(1)


def _show(e: RegisterEntry) -> str:
    org = f" org {e.organisation_ods}" if e.organisation_ods else ""
    acts = " ".join(e.activity_codes) or "-"
    line = f"#{e.id} {e.state:<8} {e.issuer} {e.subject}: roles {' '.join(e.role_codes)} activities {acts}{org}"
    line += f" until {e.expires} (added by {e.added_by} {e.added_at}"
    if e.updated_by:
        line += f"; changed by {e.updated_by} {e.updated_at}"
    if e.revoked_by:
        line += f"; revoked by {e.revoked_by} {e.revoked_at}"
    return line + ")"


@register_cli.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include expired and revoked entries.")
@click.option("--issuer", help="Only this EHR's entries.")
def register_list(show_all: bool, issuer: str | None) -> None:
    """The register's entries (current ones unless --all)."""
    entries = _run(lambda: _register().entries(issuer=issuer, include_inactive=show_all))
    for e in entries:
        click.echo(_show(e))
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")


@register_cli.command("add")
@click.option("--issuer", required=True, help="The EHR's issuer (its FHIR base URL, as in [[ehr]] issuer).")
@click.option("--subject", required=True, help="The user's id: SDS user id, id_token sub, or fhirUser as sent.")
@click.option("--roles", required=True, help="Role codes, e.g. R8000 (space- or comma-separated).")
@click.option("--activities", default="", help="Activity codes, e.g. 'B0360 B0370'.")
@click.option("--expires", help="The last day of access (YYYY-MM-DD); default: [access] register_default_days.")
@click.option("--ods", help="The user's organisation (ODS code).")
@BY
def register_add(
    issuer: str, subject: str, roles: str, activities: str, expires: str | None, ods: str | None, by: str
) -> None:
    """Add an entry, or replace the one for this issuer and subject (reinstating it if revoked)."""
    register = _register()
    entry = _run(
        lambda: register.add(
            issuer,
            subject,
            roles,
            activities,
            expires or register.default_expiry(),
            by=operator(by),
            request_id=_request_id(),
            organisation_ods=ods,
        )
    )
    click.echo(_show(entry))


@register_cli.command("renew")
@click.argument("entry_id", type=int)
@click.option("--expires", help="The new last day of access; default: [access] register_default_days from today.")
@BY
def register_renew(entry_id: int, expires: str | None, by: str) -> None:
    """Give an entry a new expiry date."""
    register = _register()
    entry = _run(
        lambda: register.renew(
            entry_id, expires or register.default_expiry(), by=operator(by), request_id=_request_id()
        )
    )
    click.echo(_show(entry))


@register_cli.command("revoke")
@click.argument("entry_id", type=int)
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@BY
def register_revoke(entry_id: int, reason: str, by: str) -> None:
    """Revoke an entry: the user's next launch gets no codes from the register."""
    entry = _run(lambda: _register().revoke(entry_id, by=operator(by), request_id=_request_id(), reason=reason))
    click.echo(_show(entry))


@requests_cli.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "approved", "rejected", "all"]),
    default=PENDING,
    show_default=True,
)
def requests_list(status: str) -> None:
    """Access requests, oldest first."""
    found = _run(lambda: _register().requests(None if status == "all" else status))
    for r in found:
        click.echo(
            f"#{r.id} {r.status:<8} {r.submitted_at} {r.name} ({r.subject} at {r.system}): {r.requested_role} "
            f"{r.requested_role_label}; {r.organisation}{f' ({r.organisation_ods})' if r.organisation_ods else ''}; "
            f"training {r.training_completed}; why: {r.reason}"
            + (f" — {r.status} by {r.decided_by} {r.decided_at}: {r.note or ''}" if r.decided_by else "")
        )
    click.echo(f"{len(found)} request(s)")


@requests_cli.command("approve")
@click.argument("number", type=int)
@click.option("--roles", help="Role codes to grant; default: the role requested.")
@click.option("--activities", help="Activity codes to grant; default: those suggested for the role requested.")
@click.option("--expires", help="The last day of access; default: [access] register_default_days from today.")
@click.option("--ods", help="The user's organisation (ODS code); default: the one given in the request.")
@click.option("--note", default="", help="A note kept with the decision.")
@BY
def requests_approve(
    number: int,
    roles: str | None,
    activities: str | None,
    expires: str | None,
    ods: str | None,
    note: str,
    by: str,
) -> None:
    """Approve a request: writes the register entry and the user's training attestation."""
    register = _register()
    req = _run(lambda: register.get_request(number))
    if req is None:
        click.echo(f"error: there is no access request {number}", err=True)
        sys.exit(1)
    entry = _run(
        lambda: register.approve(
            number,
            roles if roles is not None else req.requested_role,
            activities if activities is not None else req.suggested_activities,
            expires or register.default_expiry(),
            by=operator(by),
            request_id=_request_id(),
            organisation_ods=ods,
            note=note,
        )
    )
    click.echo(f"request {number} approved; training attested for {req.subject}")
    click.echo(_show(entry))


@requests_cli.command("reject")
@click.argument("number", type=int)
@click.option("--note", required=True, help="Why (for the service desk's reply to the user).")
@BY
def requests_reject(number: int, note: str, by: str) -> None:
    """Reject a request."""
    req = _run(lambda: _register().reject(number, by=operator(by), request_id=_request_id(), note=note))
    click.echo(f"request {req.id} rejected by {req.decided_by}: {req.note}")
