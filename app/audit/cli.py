"""``flask --app app audit …``: verify the hash chain, migrate the database, look after the alert outbox."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

audit_cli = AppGroup("audit", help="The audit trail.")


def services():
    from app.services import services as running  # imported late: app.services imports this package

    return running()


@audit_cli.command("verify")
def verify() -> None:
    """Check every event's hash and link; exit 1 at the first broken one."""
    result = services().audit_store.verify()
    if result.ok:
        click.echo(f"audit trail intact: {result.checked} events verified")
        return
    click.echo(
        f"audit trail BROKEN at event {result.first_broken}: {result.reason} "
        f"({result.checked} events verified before it)",
        err=True,
    )
    sys.exit(1)


@audit_cli.command("init")
def init() -> None:
    """Bring every table to the latest migration (``alembic upgrade head``; idempotent)."""
    store = services().audit_store
    store.create_schema()
    click.echo(f"audit store ready at {store.url.split('@')[-1]}")


def _outbox():
    """The app's outbox when it has webhooks, else one on the same database with no worker thread."""
    from .outbox import AlertOutbox

    running = services()
    return running.alerts.outbox or AlertOutbox(running.audit_store, background=False)


@audit_cli.command("outbox")
@click.option("--retry-dead", is_flag=True, help="Put dead (undeliverable) rows back to pending, due now.")
@click.option("--drain", is_flag=True, help="Deliver the rows due now, in this process, before reporting.")
@click.option("--show", "show", type=click.Choice(["pending", "delivered", "dead"]), help="List recent rows.")
def outbox(retry_dead: bool, drain: bool, show: str | None) -> None:
    """Alert deliveries: rows per state; optionally retry the dead ones, drain, or list recent rows."""
    box = _outbox()
    if retry_dead:
        click.echo(f"{box.retry_dead()} dead row(s) back to pending")
    if drain:
        total = 0
        while handled := box.drain_once():
            total += handled
        click.echo(f"{total} row(s) attempted")
    for state, n in box.counts().items():
        click.echo(f"{state:<10} {n}")
    if show:
        from .outbox import redact

        for row in box.entries(show):
            click.echo(
                f"#{row['id']} alert {row['alert_id']} → {redact(row['destination'])}: {row['state']}, "
                f"{row['attempts']} attempt(s)" + (f", last error: {row['last_error']}" if row["last_error"] else "")
            )
