"""release bundles, approvals and promotions (issue 23)

A bundle (id: SHA-256 of its manifest of file hashes) with its release notes, the signed approvals
over it, and each promotion to an environment (a rollback is a promotion back to an older bundle).
The ORM is cgthub/release_tables.py.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_TS = UTCDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "release_bundles",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("built_at", _TS, nullable=False),
        sa.Column("built_by", sa.String(length=100), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("compared_with", sa.String(length=64), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
    )
    op.create_table(
        "release_approvals",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("bundle_id", sa.String(length=64), sa.ForeignKey("release_bundles.id"), nullable=False),
        sa.Column("signer", sa.String(length=64), nullable=False),
        sa.Column("meaning", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=40), nullable=False),
        sa.Column("reason_text", sa.Text(), nullable=False),
        sa.Column("signed_at", _TS, nullable=False),
        sa.Column("signature_hash", sa.String(length=64), nullable=False),
    )
    op.create_index("ix_release_approvals_bundle_id", "release_approvals", ["bundle_id"])
    op.create_table(
        "release_promotions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("bundle_id", sa.String(length=64), sa.ForeignKey("release_bundles.id"), nullable=False),
        sa.Column("environment", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("by", sa.String(length=100), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("replaced_id", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
    )
    op.create_index("ix_release_promotions_environment", "release_promotions", ["environment", "id"])


def downgrade() -> None:
    op.drop_index("ix_release_promotions_environment", table_name="release_promotions")
    op.drop_table("release_promotions")
    op.drop_index("ix_release_approvals_bundle_id", table_name="release_approvals")
    op.drop_table("release_approvals")
    op.drop_table("release_bundles")
