"""operator decisions and the audit trail of people

Operators (a user id and a scrypt hash of a password, re-entered at each signature), the decisions
they sign (meaning, reason code and text, a hash of the state they saw), and the audit trail: one
row per action of a person, each sealed under the ledger key and chained to the row before.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

_TS = UTCDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("disabled_at", _TS, nullable=True),
    )
    op.create_table(
        "operator_decisions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("signer", sa.String(length=64), nullable=False),
        sa.Column("meaning", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=40), nullable=False),
        sa.Column("reason_text", sa.Text(), nullable=False),
        sa.Column("shown_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", _TS, nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=False),
    )
    op.create_index("ix_operator_decisions_order_id", "operator_decisions", ["order_id"])
    op.create_table(
        "audit_trail",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_mac", sa.String(length=64), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.UniqueConstraint("seq", name="uq_audit_trail_seq"),
    )


def downgrade() -> None:
    op.drop_table("audit_trail")
    op.drop_index("ix_operator_decisions_order_id", table_name="operator_decisions")
    op.drop_table("operator_decisions")
    op.drop_table("operators")
