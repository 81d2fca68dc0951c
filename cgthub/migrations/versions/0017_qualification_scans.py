"""site qualification versions and scan verifications (issue 20)

Each content of the site registry the hub judged by (its version, SHA-256 and text), and each
judgement of an enrolment or hospital order against it. Scans at handoff and bedside are custody
events in the order's ledger and need no table of their own.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_TS = UTCDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "site_registry_versions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("first_loaded_at", _TS, nullable=False),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "qualification_judgements",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("source_system", sa.String(length=32), nullable=False),
        sa.Column("source_event_id", sa.String(length=200), nullable=False),
        sa.Column("registry_version", sa.Integer(), nullable=True),
        sa.Column("registry_sha256", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("therapy", sa.String(length=64), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("qualified", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("raw_id", sa.BigInteger(), nullable=True),
        sa.Column("judged_at", _TS, nullable=False),
        sa.UniqueConstraint("source_system", "source_event_id", "registry_sha256", name="uq_judgement_event_registry"),
    )
    op.create_index("ix_qualification_judgements_site", "qualification_judgements", ["site"])


def downgrade() -> None:
    op.drop_index("ix_qualification_judgements_site", table_name="qualification_judgements")
    op.drop_table("qualification_judgements")
    op.drop_table("site_registry_versions")
