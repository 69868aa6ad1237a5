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
    """Check every event's hash and link, and the chain against the signed checkpoints; exit 1 if broken."""
    result = services().audit_store.verify()
    if result.ok:
        click.echo(
            f"audit trail intact: {result.checked} events verified"
            + (f", against {result.checkpoints} signed checkpoint(s)" if result.checkpoints else "")
        )
        if result.warning:
            click.echo(f"warning: {result.warning}", err=True)
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


@audit_cli.command("checkpoint")
def checkpoint() -> None:
    """Sign the chain head now and append it to the checkpoint file (e.g. from cron, besides the automatic ones)."""
    store = services().audit_store
    if store.checkpoints is None or not store.checkpoints.enabled:
        click.echo("no checkpoint key: set [audit] checkpoint_key_file", err=True)
        sys.exit(1)
    head = store.head()
    if head is None:
        click.echo("the audit trail is empty: nothing to checkpoint")
        return
    line = store.checkpoints.write(*head)
    click.echo(f"checkpoint written to {store.checkpoints.path}: {line['seq']} events, head {line['hash'][:12]}…")


@audit_cli.command("refusals")
@click.option("--all", "everything", is_flag=True, help="Also write the windows still open (before a shutdown).")
def refusals(everything: bool) -> None:
    """Write the counted refusals of closed windows (the worker does this every few seconds)."""
    ledger = services().audit.refusals
    click.echo(f"{ledger.flush(force=everything)} refusal event(s) written; {ledger.pending()} still counting")
