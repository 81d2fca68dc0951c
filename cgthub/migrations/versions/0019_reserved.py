"""booking changes: reschedules and cancellations of booked slot chains

One row per change of a booking under a signed decision (`reschedule_slot`, `cancel_booking`): the
slot chain it was (CMO, apheresis, slot day, the CMO's reservation) and, for a reschedule, what it
became. Its request key makes a repeated request answer the same change.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cgthub.tables import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_TS = UTCDateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "slot_booking_changes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(length=40), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("booking_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("request_key", sa.String(length=200), nullable=False),
        sa.Column("booking_request_key", sa.String(length=200), nullable=False),
        sa.Column("cmo", sa.String(length=64), nullable=False),
        sa.Column("apheresis_on", sa.Date(), nullable=False),
        sa.Column("slot_day", sa.Date(), nullable=False),
        sa.Column("cmo_reservation", sa.String(length=64), nullable=False),
        sa.Column("new_cmo", sa.String(length=64), nullable=True),
        sa.Column("new_apheresis_on", sa.Date(), nullable=True),
        sa.Column("new_slot_day", sa.Date(), nullable=True),
        sa.Column("new_cmo_reservation", sa.String(length=64), nullable=True),
        sa.Column("decision_id", _ID, sa.ForeignKey("operator_decisions.id"), nullable=True),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("changed_at", _TS, nullable=False),
        sa.UniqueConstraint("request_key", name="uq_slot_booking_change_request"),
    )
    op.create_index("ix_slot_booking_changes_order", "slot_booking_changes", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_slot_booking_changes_order", table_name="slot_booking_changes")
    op.drop_table("slot_booking_changes")
