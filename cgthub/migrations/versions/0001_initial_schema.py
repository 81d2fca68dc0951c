"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import cgthub.tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=300), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", cgthub.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key", name="uq_alert_dedupe"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_status"), ["status"], unique=False)

    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("therapy", sa.String(length=64), nullable=True),
        sa.Column("market", sa.String(length=2), nullable=True),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("cmo", sa.String(length=64), nullable=True),
        sa.Column("coi_id", sa.String(length=20), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("on_hold", sa.Boolean(), nullable=False),
        sa.Column("status_since", cgthub.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("projection", sa.JSON(), nullable=False),
        sa.Column("last_event_at", cgthub.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ledger_length", sa.Integer(), nullable=False),
        sa.Column("ledger_head", sa.String(length=64), nullable=False),
        sa.Column("projected_length", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orders_market"), ["market"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_site"), ["site"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "raw_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("system", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("received_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("receive_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("processed_at", cgthub.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("system", "dedupe_key", name="uq_raw_system_dedupe"),
    )
    with op.batch_alter_table("raw_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_raw_messages_checksum"), ["checksum"], unique=False)
        batch_op.create_index(batch_op.f("ix_raw_messages_received_at"), ["received_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_raw_messages_status"), ["status"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("source_system", sa.String(length=32), nullable=False),
        sa.Column("source_event_id", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.ForeignKeyConstraint(
            ["raw_id"],
            ["raw_messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "seq", name="uq_ledger_order_seq"),
        sa.UniqueConstraint("source_system", "source_event_id", name="uq_ledger_source_event"),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_entries_order_id"), ["order_id"], unique=False)

    op.create_table(
        "order_keys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "value", name="uq_order_key"),
    )
    with op.batch_alter_table("order_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_keys_order_id"), ["order_id"], unique=False)

    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("system", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("first_seen", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", cgthub.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("resolved_at", cgthub.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["raw_id"],
            ["raw_messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantine_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_quarantine_raw_id"), ["raw_id"], unique=False)
        batch_op.create_index("ix_quarantine_status_stage", ["status", "stage"], unique=False)
        batch_op.create_index(batch_op.f("ix_quarantine_subject"), ["subject"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantine_subject"))
        batch_op.drop_index("ix_quarantine_status_stage")
        batch_op.drop_index(batch_op.f("ix_quarantine_raw_id"))
        batch_op.drop_index(batch_op.f("ix_quarantine_order_id"))

    op.drop_table("quarantine")
    with op.batch_alter_table("order_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_keys_order_id"))

    op.drop_table("order_keys")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_order_id"))

    op.drop_table("ledger_entries")
    with op.batch_alter_table("raw_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_raw_messages_status"))
        batch_op.drop_index(batch_op.f("ix_raw_messages_received_at"))
        batch_op.drop_index(batch_op.f("ix_raw_messages_checksum"))

    op.drop_table("raw_messages")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_updated_at"))
        batch_op.drop_index(batch_op.f("ix_orders_status"))
        batch_op.drop_index(batch_op.f("ix_orders_site"))
        batch_op.drop_index(batch_op.f("ix_orders_market"))

    op.drop_table("orders")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_status"))
        batch_op.drop_index(batch_op.f("ix_alerts_order_id"))

    op.drop_table("alerts")
