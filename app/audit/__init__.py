"""The audit trail (append-only, hash-chained AuditEvents), alerts and subject access reports.

``init_app`` installs it; other packages call the trail and never the other way round.
"""

from __future__ import annotations

import logging

from flask import Flask

from app.config import Config

from .alerts import AlertBox
from .cli import audit_cli
from .outbox import AlertOutbox
from .store import AuditStore, AuditUnavailable
from .trail import AuditTrail

log = logging.getLogger(__name__)


def init_app(app: Flask, config: Config) -> tuple[AuditStore, AuditTrail, AlertBox]:
    """The audit store (brought to the latest migration), the trail that writes to it, and the alert box.
    If the database is down at start the viewer still starts, and refuses every record until it is back."""
    store = AuditStore(config.audit.url)
    try:
        store.create_schema()
    except (AuditUnavailable, Exception) as exc:  # noqa: BLE001 - start anyway; every access will be refused
        log.error("audit store unavailable at start (%s): records will not be shown until it is back", exc)
    outbox = AlertOutbox(
        store,
        config.alerts.webhook_urls,
        timeout=config.alerts.timeout,
        max_attempts=config.alerts.max_attempts,
        retry_seconds=config.alerts.retry_seconds,
    )
    alerts = AlertBox(store, outbox)
    app.before_request(outbox.ensure_started)  # every worker process drains, even one that raises no alert
    app.cli.add_command(audit_cli)
    return store, AuditTrail(store, observer=config.viewer.base_url), alerts
