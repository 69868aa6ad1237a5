"""Alert outbox: alerts leave the request through a table drained by a worker (app/audit/outbox.py).

One row per alert and webhook destination, written in the alert's own transaction; rows move
pending → delivered, or pending → dead after the last attempt, and are never deleted.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "alert_id",
            sa.Integer,
            sa.ForeignKey("alerts.id", name="fk_alert_outbox_alert_id"),
            nullable=False,
        ),
        sa.Column("destination", sa.String(2000), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.String(300)),
        sa.Column("claimed_by", sa.String(120)),
        sa.Column("claimed_until", sa.Float),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("delivered_at", sa.String(40)),
    )
    op.create_index("ix_alert_outbox_alert_id", "alert_outbox", ["alert_id"])
    op.create_index("ix_alert_outbox_due", "alert_outbox", ["state", "next_attempt_at"])


def downgrade() -> None:
    """Undelivered alerts would be lost: refuse, like 0001."""
    raise RuntimeError("the alert outbox holds undelivered alerts; downgrading would destroy them")
