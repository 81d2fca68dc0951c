"""order transparency API: change feed, outbox, API keys, access log, webhook subscriptions

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cgthub.tables

revision = "0005"
down_revision = "0001"
branch_labels = ("api",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = cgthub.tables.UTCDateTime(timezone=True)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    tx_default = sa.text("(pg_current_xact_id()::text)::bigint") if postgres else sa.text("0")
    op.create_table(
        "order_changes",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tx", sa.BigInteger(), server_default=tx_default, nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("previous_status", sa.String(length=32), nullable=True),
        sa.Column("on_hold", sa.Boolean(), nullable=False),
        sa.Column("milestones", sa.JSON(), nullable=False),
        sa.Column("changed", sa.JSON(), nullable=False),
        sa.Column("status_since", _TS, nullable=True),
        sa.Column("market", sa.String(length=2), nullable=True),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("cmo", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_order_changes_position", "order_changes", ["tx", "id"])
    op.create_index("ix_order_changes_order_id", "order_changes", ["order_id"])

    op.create_table(
        "outbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("destination_kind", sa.String(length=32), nullable=False),
        sa.Column("destination_id", sa.String(length=100), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_outbox_due", "outbox", ["destination_kind", "status", "next_attempt_at"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("cmos", sa.JSON(), nullable=False),
        sa.Column("markets", sa.JSON(), nullable=False),
        sa.Column("all_data", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "api_access_log",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("key_id", sa.String(length=24), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=300), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=True),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_access_log_at", "api_access_log", ["at"])
    op.create_index("ix_api_access_log_order_id", "api_access_log", ["order_id"])
    op.create_index("ix_api_access_key_at", "api_access_log", ["key_id", "at"])

    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("key_id", sa.String(length=24), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("statuses", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("cursor_tx", _ID, nullable=False),
        sa.Column("cursor_id", _ID, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_subscriptions_key_id", "webhook_subscriptions", ["key_id"])


def downgrade() -> None:
    op.drop_table("webhook_subscriptions")
    op.drop_table("api_access_log")
    op.drop_table("api_keys")
    op.drop_table("outbox")
    op.drop_table("order_changes")
