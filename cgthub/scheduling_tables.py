"""Tables of scheduling: the CMOs' manufacturing capacity as last synced, and the hub's bookings.

manufacturing_slots  capacity per CMO, therapy and day, and how much of it is taken; the row a
                     booking locks (SELECT ... FOR UPDATE) so two bookers never take its last place
slot_bookings        one booked slot chain per order: apheresis, CMO slot, planned release, product
                     at site and infusion, the CMO's reservation and the signed decision behind it
slot_booking_changes each reschedule or cancellation of a booking: from what to what, signed by whom
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cgthub.tables import Base, BigId, utcnow


class ManufacturingSlot(Base):
    __tablename__ = "manufacturing_slots"
    __table_args__ = (UniqueConstraint("cmo", "therapy", "day", name="uq_manufacturing_slot"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cmo: Mapped[str] = mapped_column(String(64))
    therapy: Mapped[str] = mapped_column(String(64))
    day: Mapped[date] = mapped_column(Date)
    capacity: Mapped[int] = mapped_column(Integer)
    booked: Mapped[int] = mapped_column(Integer, default=0)
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def available(self) -> int:
        return max(self.capacity - self.booked, 0)


class SlotBooking(Base):
    __tablename__ = "slot_bookings"
    __table_args__ = (
        UniqueConstraint("order_id", name="uq_slot_booking_order"),
        UniqueConstraint("request_key", name="uq_slot_booking_request"),
        Index("ix_slot_bookings_site_month", "site", "month"),
        Index("ix_slot_bookings_market_month", "market", "month"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    request_key: Mapped[str] = mapped_column(String(200))
    site: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(2))
    month: Mapped[str] = mapped_column(String(7))  # YYYY-MM of the apheresis: what quotas count
    therapy: Mapped[str] = mapped_column(String(64))
    cmo: Mapped[str] = mapped_column(String(64))
    apheresis_on: Mapped[date] = mapped_column(Date)
    apheresis_at: Mapped[datetime]
    slot_day: Mapped[date] = mapped_column(Date)
    release_on: Mapped[date] = mapped_column(Date)
    at_site_on: Mapped[date] = mapped_column(Date)
    infusion_on: Mapped[date] = mapped_column(Date)
    cmo_reservation: Mapped[str] = mapped_column(String(64))
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("operator_decisions.id"))
    booked_by: Mapped[str] = mapped_column(String(64))
    booked_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlotBookingChange(Base):
    """A booked slot chain moved to another apheresis date or cancelled, under a signed decision:
    what it was and what it became. Its request key answers a repeated request with the same change;
    a cancelled booking's row leaves `slot_bookings` (its quota and place are free again), and this
    row keeps it."""

    __tablename__ = "slot_booking_changes"
    __table_args__ = (
        UniqueConstraint("request_key", name="uq_slot_booking_change_request"),
        Index("ix_slot_booking_changes_order", "order_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    booking_id: Mapped[int] = mapped_column(BigId)  # the booking's id (the SIU's SCH-2), kept when cancelled
    kind: Mapped[str] = mapped_column(String(16))  # rescheduled | cancelled
    request_key: Mapped[str] = mapped_column(String(200))
    booking_request_key: Mapped[str] = mapped_column(String(200))  # the booking's own key, as it was
    cmo: Mapped[str] = mapped_column(String(64))
    apheresis_on: Mapped[date] = mapped_column(Date)
    slot_day: Mapped[date] = mapped_column(Date)
    cmo_reservation: Mapped[str] = mapped_column(String(64))
    new_cmo: Mapped[str | None] = mapped_column(String(64))
    new_apheresis_on: Mapped[date | None] = mapped_column(Date)
    new_slot_day: Mapped[date | None] = mapped_column(Date)
    new_cmo_reservation: Mapped[str | None] = mapped_column(String(64))
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("operator_decisions.id"))
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
