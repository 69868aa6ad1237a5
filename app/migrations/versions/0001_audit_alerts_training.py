"""Audit trail (append-only, hash-chained), alerts and training attestations.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("recorded", sa.String(40), nullable=False),
        sa.Column("patient_nhs", sa.String(10), index=True),
        sa.Column("user_id", sa.String(200), index=True),
        sa.Column("org_ods", sa.String(20), index=True),
        sa.Column("purpose", sa.String(20), index=True),
        sa.Column("action_code", sa.String(80), nullable=False),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("event_json", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_index("ix_audit_recorded", "audit_events", ["recorded"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_events "
                   "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END")
        op.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_events "
                   "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END")
    else:
        op.execute("CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS $$ "
                   "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit_events "
                   "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()")
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("recipient", sa.String(80), nullable=False, index=True),
        sa.Column("patient_nhs", sa.String(10), index=True),
        sa.Column("user_name", sa.String(200)),
        sa.Column("user_org", sa.String(200)),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("audit_seq", sa.Integer),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("acknowledged_at", sa.String(40)),
    )
    op.create_table(
        "training_attestations",
        sa.Column("sds_user_id", sa.String(40), primary_key=True),
        sa.Column("completed", sa.String(10), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    """Audit data is never dropped by a migration: refuse."""
    raise RuntimeError("the audit trail is append-only; downgrading would destroy it")
