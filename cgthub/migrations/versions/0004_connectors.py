"""connectors: sync_state (watermarks and last sync report per partner stream)

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cgthub.tables

revision = "0004"
down_revision = "0001"
branch_labels = ("connectors",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_state",
        sa.Column("partner", sa.String(length=32), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("watermark", cgthub.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cursor", sa.String(length=200), nullable=True),
        sa.Column("updated_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_report", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("partner", "stream"),
    )


def downgrade() -> None:
    op.drop_table("sync_state")
