"""``flask --app app audit verify``: walk the hash chain and report the first broken link."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

audit_cli = AppGroup("audit", help="The audit trail.")


@audit_cli.command("verify")
def verify() -> None:
    """Check every event's hash and link; exit 1 at the first broken one."""
    result = current_app.extensions["audit_store"].verify()
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
    """Create the audit tables (idempotent)."""
    current_app.extensions["audit_store"].create_schema()
    current_app.extensions["alerts"].create_schema()
    current_app.extensions["training"].create_schema()
    click.echo(f"audit store ready at {current_app.extensions['audit_store'].url.split('@')[-1]}")
