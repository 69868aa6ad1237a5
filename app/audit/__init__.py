"""The audit trail (append-only, hash-chained AuditEvents), alerts and subject access reports.

``init_app`` installs it; other packages call the trail and never the other way round.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, g, request

from app.config import Config
from core.state import MemoryStore, StoreUnavailable

from .alerts import Alert, AlertBox
from .checkpoints import Checkpoints, load_key
from .cli import audit_cli
from .events import now
from .outbox import AlertOutbox
from .refusals import FLAG, BreakGlassEpisodes, Housekeeping, RefusalLedger
from .store import AuditStore, AuditUnavailable
from .trail import AuditTrail

log = logging.getLogger(__name__)
REFUSED = (401, 403)  # responses that refuse access: each is in the trail (counted), whatever the route
HOUSEKEEPING = "scr.audit.housekeeping"


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
    store.checkpoints = _checkpoints(config, alerts)
    trail = AuditTrail(store, observer=config.viewer.base_url)
    launch_services = app.extensions.get("launch")  # installed first: the state store and launch contexts
    state = launch_services.store if launch_services is not None else MemoryStore()
    contexts = launch_services.contexts if launch_services is not None else None
    trail.refusals = RefusalLedger(state, trail.write, window=config.audit.refusal_window_seconds, contexts=contexts)
    trail.break_glass = BreakGlassEpisodes(state, trail.write)
    keeper = Housekeeping(trail.refusals, trail.break_glass, store)
    app.extensions[HOUSEKEEPING] = keeper
    app.before_request(outbox.ensure_started)  # every worker process drains, even one that raises no alert
    app.before_request(keeper.on_request)  # expired break-glass and closed refusal windows, at the next request
    app.after_request(_audit_refusals(trail))
    app.cli.add_command(audit_cli)
    return store, trail, alerts


def _checkpoints(config: Config, alerts: AlertBox) -> Checkpoints:
    settings = config.audit
    try:
        key = load_key(settings.checkpoint_key_path, generate=config.viewer.generate_dev_keys)
    except (OSError, ValueError) as exc:
        log.error("audit checkpoint key %s unusable (%s): no checkpoints", settings.checkpoint_key_path, exc)
        key = None
    if key is None:
        log.error(
            "no audit checkpoint key at %s: events deleted from the end of the trail would not be noticed "
            "(create one with python -m app.audit.checkpoints %s)",
            settings.checkpoint_key_path,
            settings.checkpoint_key_path,
        )

    def send_on(line: dict) -> None:
        alerts.raise_alert(
            Alert(None, now(), "audit-checkpoint", "audit-checkpoint", None, "audit trail", "", json.dumps(line))
        )

    return Checkpoints(
        settings.checkpoint_path,
        key,
        every_events=settings.checkpoint_every_events,
        every_minutes=settings.checkpoint_every_minutes,
        on_written=send_on if settings.checkpoint_alerts else None,
    )


def _audit_refusals(trail: AuditTrail):
    def audit_refusal(resp):
        """A refusing response whose request recorded no refusal (a new route, an abort(403)…) gets one."""
        if resp.status_code in REFUSED and not g.get(FLAG):
            try:
                trail.record(
                    "refusal",
                    request_id=g.get("request_id", ""),
                    outcome="minor-failure",
                    description=f"refused ({resp.status}): {request.method} {request.path}"[:300],
                    what=request.endpoint or request.path,
                )
            except (AuditUnavailable, StoreUnavailable, TimeoutError) as exc:
                log.error("request %s: refusal could not be audited: %s", g.get("request_id"), exc)
        return resp

    return audit_refusal
