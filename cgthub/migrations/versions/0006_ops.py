"""operations: reconciliation reports, alert notifications, feed cursors

Revision ID: 0006
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cgthub.tables

revision = "0006"
down_revision = "0001"
branch_labels = ("ops",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = cgthub.tables.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reconciliation_reports",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("orders_checked", sa.Integer(), nullable=False),
        sa.Column("records_checked", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reconciliation_reports_started_at", "reconciliation_reports", ["started_at"])
    op.create_table(
        "alert_notifications",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("alert_id", _ID, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("notified_at", _TS, nullable=False),
        sa.Column("channels", sa.String(100), nullable=False),
        sa.Column("webhook_status", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("alert_id"),
    )
    op.create_table(
        "feed_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
        sa.Column("change_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("feed_cursors")
    op.drop_table("alert_notifications")
    op.drop_index("ix_reconciliation_reports_started_at", table_name="reconciliation_reports")
    op.drop_table("reconciliation_reports")
