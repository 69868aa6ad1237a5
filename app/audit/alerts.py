"""Alerts about accesses that need a human to look: recorded reasons, break-glass, conflicts of interest.

Stored next to the audit trail (but not in the chain: alerts get acknowledged, events never change) and
handed to pluggable deliverers — by default a webhook that posts to the care team's inbox (the sandbox
EHR has one); more can be added without touching the access code.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import requests
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from .store import AuditStore, AuditUnavailable

log = logging.getLogger(__name__)
metadata = MetaData()
alerts_table = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created", String(40), nullable=False),
    Column("kind", String(40), nullable=False),  # reason | break-glass | family | colleague
    Column("recipient", String(80), nullable=False, index=True),  # privacy-officer | care-team:<ODS>
    Column("patient_nhs", String(10), index=True),
    Column("user_name", String(200)),
    Column("user_org", String(200)),
    Column("message", Text, nullable=False),
    Column("audit_seq", Integer),
    Column("acknowledged_by", String(200)),
    Column("acknowledged_at", String(40)),
)


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


class Deliverer(Protocol):
    def deliver(self, alert: Alert) -> None: ...


class WebhookDeliverer:
    """POSTs the alert as JSON (e.g. to a care team's inbox); a failed delivery is logged, never fatal."""

    def __init__(self, url: str, timeout: float = 3.0) -> None:
        self.url, self.timeout = url, timeout

    def deliver(self, alert: Alert) -> None:
        try:
            requests.post(
                self.url,
                data=json.dumps(alert.__dict__),
                timeout=self.timeout,
                headers={"Content-Type": "application/json"},
            )
        except requests.RequestException as exc:
            log.warning("alert %s not delivered to %s: %s", alert.id, self.url, exc.__class__.__name__)


class AlertBox:
    def __init__(self, store: AuditStore, deliverers: list[Deliverer] | None = None) -> None:
        self.store = store
        self.deliverers = deliverers or []

    def create_schema(self) -> None:
        metadata.create_all(self.store.engine)

    def raise_alert(self, alert: Alert) -> Alert:
        try:
            with self.store.engine.begin() as conn:
                values = {k: v for k, v in alert.__dict__.items() if k != "id"}
                result = conn.execute(insert(alerts_table).values(**values))
                alert.id = result.inserted_primary_key[0]
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"alert could not be stored: {exc.__class__.__name__}") from exc
        for deliverer in self.deliverers:
            deliverer.deliver(alert)
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
