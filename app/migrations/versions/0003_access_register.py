"""The local access register and the access request queue (app/access/register.py).

``register_entries``: (issuer, subject) → national RBAC role and activity codes with an expiry, one row per
issuer and subject. ``access_requests``: what users outside an integrated role source ask for, pending until
the service desk approves (writing a register entry and the training attestation) or rejects it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("system", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("subjects", sa.Text, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("organisation", sa.String(200), nullable=False),
        sa.Column("organisation_ods", sa.String(20)),
        sa.Column("requested_role", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("training_completed", sa.String(10), nullable=False),
        sa.Column("training_confirmed", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("submitted_at", sa.String(40), nullable=False),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("decided_at", sa.String(40)),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status"])
    op.create_index("ix_access_requests_subject", "access_requests", ["issuer", "subject"])
    op.create_table(
        "register_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("role_codes", sa.String(500), nullable=False),
        sa.Column("activity_codes", sa.String(1000), nullable=False),
        sa.Column("organisation_ods", sa.String(20)),
        sa.Column("expires", sa.String(10), nullable=False),
        sa.Column("added_by", sa.String(200), nullable=False),
        sa.Column("added_at", sa.String(40), nullable=False),
        sa.Column("updated_by", sa.String(200)),
        sa.Column("updated_at", sa.String(40)),
        sa.Column("revoked_by", sa.String(200)),
        sa.Column("revoked_at", sa.String(40)),
        sa.Column(
            "request_id",
            sa.Integer,
            sa.ForeignKey("access_requests.id", name="fk_register_entries_request_id"),
        ),
        sa.UniqueConstraint("issuer", "subject", name="uq_register_entries_issuer_subject"),
    )

    # Approval writes a training attestation keyed by the user id, which for users of a generic SMART EHR is
    # the id_token subject (often longer than an SDS user id).
    with op.batch_alter_table("training_attestations") as batch:
        batch.alter_column("sds_user_id", type_=sa.String(500), existing_type=sa.String(40), existing_nullable=False)


def downgrade() -> None:
    """Who was given access, by whom, is governance data: refuse, like 0001 and 0002."""
    raise RuntimeError("the access register and request queue would be lost; downgrading would destroy them")
