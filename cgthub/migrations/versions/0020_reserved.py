"""service heartbeats

One row per long-running loop (the webhook delivery loop first): when it last went round, its
interval and how old a beat may grow before `/health/ready` reports it down. The ORM is
cgthub/heartbeat.py.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_heartbeats",
        sa.Column("service", sa.String(length=64), primary_key=True),
        sa.Column("beat_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("stale_after_seconds", sa.Float(), nullable=False),
        sa.Column("instance", sa.String(length=200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_heartbeats")
