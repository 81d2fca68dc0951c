"""manufacturing slots, bookings and quotas (issue 20)

The CMOs' capacity per therapy and day as last synced (the row a booking locks), and one booked
slot chain per order; quotas are counted from the bookings by site or market and month.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_TS = UTCDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "manufacturing_slots",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("cmo", sa.String(length=64), nullable=False),
        sa.Column("therapy", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("booked", sa.Integer(), nullable=False),
        sa.Column("synced_at", _TS, nullable=False),
        sa.UniqueConstraint("cmo", "therapy", "day", name="uq_manufacturing_slot"),
    )
    op.create_table(
        "slot_bookings",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(length=40), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("request_key", sa.String(length=200), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("market", sa.String(length=2), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("therapy", sa.String(length=64), nullable=False),
        sa.Column("cmo", sa.String(length=64), nullable=False),
        sa.Column("apheresis_on", sa.Date(), nullable=False),
        sa.Column("apheresis_at", _TS, nullable=False),
        sa.Column("slot_day", sa.Date(), nullable=False),
        sa.Column("release_on", sa.Date(), nullable=False),
        sa.Column("at_site_on", sa.Date(), nullable=False),
        sa.Column("infusion_on", sa.Date(), nullable=False),
        sa.Column("cmo_reservation", sa.String(length=64), nullable=False),
        sa.Column("decision_id", _ID, sa.ForeignKey("operator_decisions.id"), nullable=True),
        sa.Column("booked_by", sa.String(length=64), nullable=False),
        sa.Column("booked_at", _TS, nullable=False),
        sa.UniqueConstraint("order_id", name="uq_slot_booking_order"),
        sa.UniqueConstraint("request_key", name="uq_slot_booking_request"),
    )
    op.create_index("ix_slot_bookings_site_month", "slot_bookings", ["site", "month"])
    op.create_index("ix_slot_bookings_market_month", "slot_bookings", ["market", "month"])


def downgrade() -> None:
    op.drop_index("ix_slot_bookings_market_month", table_name="slot_bookings")
    op.drop_index("ix_slot_bookings_site_month", table_name="slot_bookings")
    op.drop_table("slot_bookings")
    op.drop_table("manufacturing_slots")
