"""The viewer's database: every table, defined once; Alembic's target_metadata.

``migrations/`` creates and changes these tables (``alembic upgrade head``, run at start by
``AuditStore.create_schema`` and by ``make migrate``); nothing calls ``metadata.create_all``.
``tests/app/audit/test_schema.py`` fails when the migrations and this module disagree (``alembic check``).

Not SQLAlchemy objects, so not compared: the triggers that make ``audit_events`` append-only
(migration 0001).

Times: ``created``/``recorded``/``*_at`` columns meant for people are ISO-8601 UTC strings; the outbox's
scheduling columns (``next_attempt_at``, ``claimed_until``) are epoch seconds so that "due" and "lease
expired" are plain numeric comparisons on every database.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

# -- the audit trail: append-only, hash-chained (app/audit/store.py) --------------------------------------
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("recorded", String(40), nullable=False),
    Column("patient_nhs", String(10), index=True),  # ix_audit_events_patient_nhs
    Column("user_id", String(200), index=True),  # ix_audit_events_user_id
    Column("org_ods", String(20), index=True),  # ix_audit_events_org_ods
    Column("purpose", String(20), index=True),  # ix_audit_events_purpose
    Column("action_code", String(80), nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("event_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)
Index("ix_audit_recorded", audit_events.c.recorded)

# -- alerts: acknowledged by a person, so not in the chain (app/audit/alerts.py) --------------------------
alerts = Table(
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

# -- the alert outbox: one row per alert and webhook destination (app/audit/outbox.py) --------------------
# Written in the same transaction as the alert; drained by a worker thread; never deleted.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", Integer, ForeignKey("alerts.id", name="fk_alert_outbox_alert_id"), nullable=False, index=True),
    Column("destination", String(2000), nullable=False),  # the webhook URL
    Column("state", String(10), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),  # epoch seconds: due when <= now
    Column("last_error", String(300)),
    Column("claimed_by", String(120)),  # the worker holding the lease: host:pid:thread
    Column("claimed_until", Float),  # epoch seconds: the lease ends
    Column("created", String(40), nullable=False),
    Column("delivered_at", String(40)),
)
Index("ix_alert_outbox_due", alert_outbox.c.state, alert_outbox.c.next_attempt_at)

# -- training attestations (app/access/training.py) -------------------------------------------------------
training_attestations = Table(
    "training_attestations",
    metadata,
    Column("sds_user_id", String(40), primary_key=True),
    Column("completed", String(10), nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("recorded_at", String(40), nullable=False),
)
