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

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

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
    Column("sds_user_id", String(500), primary_key=True),  # the user id: SDS user id, else the id_token subject
    Column("completed", String(10), nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("recorded_at", String(40), nullable=False),
)

# -- the local access register (app/access/register.py) ---------------------------------------------------
# (issuer, subject) → national RBAC role and activity codes until ``expires`` (YYYY-MM-DD, inclusive, UTC).
# One row per issuer and subject: renewing or re-adding updates it, revoking marks it; every change is in the
# audit trail, which holds the history. Codes are space-separated.
register_entries = Table(
    "register_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("issuer", String(500), nullable=False),
    Column("subject", String(500), nullable=False),  # the id_token sub, the fhirUser as sent, or the SDS user id
    Column("role_codes", String(500), nullable=False),
    Column("activity_codes", String(1000), nullable=False),
    Column("organisation_ods", String(20)),
    Column("expires", String(10), nullable=False),
    Column("added_by", String(200), nullable=False),
    Column("added_at", String(40), nullable=False),
    Column("updated_by", String(200)),
    Column("updated_at", String(40)),
    Column("revoked_by", String(200)),
    Column("revoked_at", String(40)),  # set: revoked
    Column("request_id", Integer, ForeignKey("access_requests.id", name="fk_register_entries_request_id")),
    UniqueConstraint("issuer", "subject", name="uq_register_entries_issuer_subject"),
)

# -- access requests: the service desk's queue (app/access/register.py) ------------------------------------
access_requests = Table(
    "access_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("issuer", String(500), nullable=False),
    Column("system", String(200), nullable=False),  # the EHR's name, as the user saw it
    Column("subject", String(500), nullable=False),  # the key an approval writes: the user id (SDS id, else sub)
    Column("subjects", Text, nullable=False),  # JSON list: every id the user was known by (sub, fhirUser, SDS)
    Column("name", String(200), nullable=False),
    Column("organisation", String(200), nullable=False),
    Column("organisation_ods", String(20)),
    Column("requested_role", String(20), nullable=False),
    Column("reason", Text, nullable=False),
    Column("training_completed", String(10), nullable=False),
    Column("training_confirmed", Boolean, nullable=False),
    Column("status", String(10), nullable=False),  # pending | approved | rejected
    Column("submitted_at", String(40), nullable=False),
    Column("decided_by", String(200)),
    Column("decided_at", String(40)),
    Column("note", Text),
)
Index("ix_access_requests_status", access_requests.c.status)
Index("ix_access_requests_subject", access_requests.c.issuer, access_requests.c.subject)
