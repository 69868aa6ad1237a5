"""Alerts about accesses that need a human to look: recorded reasons, break-glass, conflicts of interest.

Stored next to the audit trail (but not in the chain: alerts get acknowledged, events never change). Each
alert is also sent to the configured webhooks (e.g. the care team's inbox; the sandbox EHR has one) — not
from the user's request: ``raise_alert`` writes the alert and its outbox rows in one transaction and
returns, and the outbox's worker delivers them with retries (app/audit/outbox.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from app.schema import alerts as alerts_table

from .outbox import AlertOutbox
from .store import AuditStore, AuditUnavailable


@dataclass
class Alert:
    id: int | None
    created: str
    kind: str
    recipient: str
    patient_nhs: str | None
    user_name: str
    user_org: str
    message: str
    audit_seq: int | None = None
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None


class AlertBox:
    """Stores alerts, lists and acknowledges them; hands each new one to the outbox in the same transaction."""

    def __init__(self, store: AuditStore, outbox: AlertOutbox | None = None) -> None:
        self.store, self.outbox = store, outbox

    def raise_alert(self, alert: Alert) -> Alert:
        """Store the alert and queue it for every webhook, atomically; no network before returning."""
        try:
            with self.store.engine.begin() as conn:
                values = {k: v for k, v in alert.__dict__.items() if k != "id"}
                result = conn.execute(insert(alerts_table).values(**values))
                alert.id = result.inserted_primary_key[0]
                if self.outbox is not None:
                    self.outbox.enqueue(conn, alert.id)
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"alert could not be stored: {exc.__class__.__name__}") from exc
        if self.outbox is not None:
            self.outbox.nudge()
        return alert

    def list(
        self, recipient: str | None = None, include_acknowledged: bool = False, patient_nhs: str | None = None
    ) -> list[Alert]:
        q = select(alerts_table).order_by(alerts_table.c.id.desc()).limit(500)
        if recipient:
            q = q.where(alerts_table.c.recipient == recipient)
        if patient_nhs:
            q = q.where(alerts_table.c.patient_nhs == patient_nhs)
        if not include_acknowledged:
            q = q.where(alerts_table.c.acknowledged_at.is_(None))
        with self.store.engine.connect() as conn:
            return [Alert(**dict(r._mapping)) for r in conn.execute(q)]

    def acknowledge(self, alert_id: int, by: str) -> bool:
        with self.store.engine.begin() as conn:
            result = conn.execute(
                update(alerts_table)
                .where(alerts_table.c.id == alert_id)
                .where(alerts_table.c.acknowledged_at.is_(None))
                .values(acknowledged_by=by, acknowledged_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            )
            return result.rowcount == 1
