"""Booking an order's slot chain: a signed decision that reserves the CMO's manufacturing place,
schedules the apheresis and tells the hospital.

`book` runs in one transaction: it locks the order row and then the slot row (SELECT ... FOR
UPDATE on PostgreSQL; SQLite's writers are serialized by BEGIN IMMEDIATE), re-counts the site's and
the market's quota under a lock of their own, reserves the place through the CMO's slot provider
over its API (the same Idempotency-Key answers the same hold, so a retried booking never takes two),
then records the booking, appends `apheresis.scheduled` (with the planned dates and the decision) to
the order's ledger, and queues the SIU^S12 for the hospital in the outbox, which retries it. Two
bookers for the last place: the second waits for the first's lock, reads the slot full and is
told so (409 `slot_full`) without reaching the CMO.

The same request twice gives one booking: a second request for an order already booked answers
that booking (`replayed`) when it asks for the same date (or carries the same request key), and
409 `already_booked` otherwise.

In-process use (the demo, a DAG): `run_booking(url, order_id, BookingRequest(apheresis_on=day),
signature)`; `slots.options_for(session, order_id)` lists the dates to choose from.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from cgthub import decisions, ledger, outbox, partners, slots
from cgthub.decisions import Action, Signature
from cgthub.hl7.appointment import MESSAGE_TYPE as SIU_S12
from cgthub.model import CanonicalEvent, EventType, Provenance, SourceSystem
from cgthub.scheduling_tables import ManufacturingSlot, SlotBooking
from cgthub.store import session_scope
from cgthub.tables import Order, utcnow

HOSPITAL = "hl7"  # the partner whose push speaks HL7 to the treatment site (connectors/hospital)


class AlreadyBooked(slots.SchedulingError):
    code = "already_booked"


class CmoUnavailable(slots.SchedulingError):
    status, code = 503, "cmo_unavailable"


class CmoFull(slots.SlotTaken):
    """The CMO refused the place the hub's synced count still showed free."""

    def __init__(self, message: str, hint: str, slot: tuple[str, str, date]) -> None:
        super().__init__(message, hint)
        self.slot = slot


class BookingRequest(BaseModel):
    """Which slot chain to book: the apheresis date (from the options) and, if it matters, the CMO."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apheresis_on: date = Field(description="a date from GET /orders/{id}/slots")
    cmo: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    request_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=120,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the caller's idempotency key (the API takes it from Idempotency-Key too)",
    )


class Booked(BaseModel):
    """A booked slot chain, as the API and the CLI show it."""

    booking_id: int
    order_id: str
    site: str
    market: str
    therapy: str
    cmo: str
    apheresis_on: date
    apheresis_at: datetime
    slot_day: date
    release_on: date
    at_site_on: date
    infusion_on: date
    cmo_reservation: str
    booked_by: str
    booked_at: datetime
    decision_id: int | None
    replayed: bool = False


def booked(row: SlotBooking, *, replayed: bool = False) -> Booked:
    return Booked(
        booking_id=row.id,
        order_id=row.order_id,
        site=row.site,
        market=row.market,
        therapy=row.therapy,
        cmo=row.cmo,
        apheresis_on=row.apheresis_on,
        apheresis_at=row.apheresis_at.astimezone(ZoneInfo(slots.config().calendar(row.site).timezone)),
        slot_day=row.slot_day,
        release_on=row.release_on,
        at_site_on=row.at_site_on,
        infusion_on=row.infusion_on,
        cmo_reservation=row.cmo_reservation,
        booked_by=row.booked_by,
        booked_at=row.booked_at,
        decision_id=row.decision_id,
        replayed=replayed,
    )


def booking_of(session: Session, order_id: str) -> SlotBooking | None:
    return session.scalars(select(SlotBooking).where(SlotBooking.order_id == order_id)).first()


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def book(
    session: Session, order_id: str, request: BookingRequest, signature: Signature, *, today: date | None = None
) -> Booked:
    """Book one order's slot chain in the caller's transaction (see the module's docstring)."""
    order = session.get(Order, order_id, with_for_update=_postgres(session), populate_existing=True)
    if order is None:
        raise decisions.SubjectNotFound(f"no order {order_id}", "find it with `cgthub orders list`")
    asked = request.request_key or f"{request.apheresis_on}:{request.cmo or 'any'}"
    key = f"{order_id}:{asked}"
    existing = booking_of(session, order_id)
    if existing is not None:
        same = existing.request_key == key or (
            existing.apheresis_on == request.apheresis_on and request.cmo in (None, existing.cmo)
        )
        if same:
            return booked(existing, replayed=True)
        raise AlreadyBooked(
            f"order {order_id} is booked for an apheresis on {existing.apheresis_on} at {existing.cmo}",
            "a booked order keeps its slot chain; reschedule with the site and the CMO",
        )
    facts = slots.facts(order)
    planner = slots.Planner.load(session, today=today)
    chosen = [
        o for o in planner.options(facts) if o.apheresis_on == request.apheresis_on and request.cmo in (None, o.cmo)
    ]
    if not chosen:
        raise planner.why_not(facts, request.apheresis_on, request.cmo)
    option = chosen[0]
    therapy, site, market = str(facts.therapy), str(facts.site), str(facts.market or "")
    shown = decisions.preview_order(session, order_id)
    decision, reason = decisions.sign_decision(session, Action.BOOK_SLOT, signature, shown, order_id)

    slot = session.scalars(
        select(ManufacturingSlot)
        .where(
            ManufacturingSlot.cmo == option.cmo,
            ManufacturingSlot.therapy == therapy,
            ManufacturingSlot.day == option.slot_day,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if slot.booked >= slot.capacity:
        raise planner.why_not(facts, request.apheresis_on, option.cmo)  # taken while we looked
    month = option.apheresis_on.isoformat()[:7]
    _check_quotas(session, planner.settings, site, market, month)

    provider = slots.provider()
    reference = (order.projection.get("refs") or {}).get("crm_order_id")
    reservation = slots.Reservation(option.cmo, therapy, option.slot_day, order_id, reference, order.coi_id)
    try:
        reserved = provider.reserve(reservation, f"cgthub:{key}")
    except slots.SlotTaken as full:  # the CMO's count differs from the last sync: the CMO is right
        raise CmoFull(full.message, full.hint, (option.cmo, therapy, option.slot_day)) from full
    except partners.PartnerUnavailable as exc:
        raise CmoUnavailable(
            f"the CMO did not confirm the slot ({exc}); nothing was booked",
            "send the same request again: the CMO holds at most one place for it",
        ) from exc
    slot.booked += 1
    row = SlotBooking(
        order_id=order_id,
        request_key=key,
        site=site,
        market=market,
        month=month,
        therapy=therapy,
        cmo=option.cmo,
        apheresis_on=option.apheresis_on,
        apheresis_at=option.apheresis_at,
        slot_day=option.slot_day,
        release_on=option.release_on,
        at_site_on=option.at_site_on,
        infusion_on=option.infusion_on,
        cmo_reservation=reserved.reservation_id,
        decision_id=decision.id,
        booked_by=decision.signer,
        booked_at=utcnow(),
    )
    session.add(row)
    session.flush()
    digest = decisions.decision_digest(decision)
    appended = ledger.append(
        session,
        CanonicalEvent(
            source_system=SourceSystem.HUB,
            source_event_id=f"booking:{row.id}",
            event_type=EventType.APHERESIS_SCHEDULED,
            occurred_at=row.booked_at,
            received_at=row.booked_at,
            order_id=order_id,
            scheduled_for=option.apheresis_at,
            reason=f"{reason.code}: {reason.title}",
            attributes={
                "booking_id": row.id,
                "cmo": row.cmo,
                "slot_day": row.slot_day.isoformat(),
                "release_on": row.release_on.isoformat(),
                "at_site_on": row.at_site_on.isoformat(),
                "infusion_on": row.infusion_on.isoformat(),
                "cmo_reservation": row.cmo_reservation,
                "decision_id": decision.id,
                "decision": decision.action,
                "signer": decision.signer,
                "meaning": decision.meaning,
                "reason_code": decision.reason_code,
                "shown_hash": decision.shown_hash,
                "decision_hash": digest,
            },
            provenance=Provenance(mapping_id="cgthub/booking", mapping_version="1"),
        ),
    )
    _tell_hospital(session, order, row, option)
    outcome: dict[str, Any] = {
        "booking_id": row.id,
        "apheresis_on": row.apheresis_on.isoformat(),
        "cmo": row.cmo,
        "slot_day": row.slot_day.isoformat(),
        "cmo_reservation": row.cmo_reservation,
        "ledger_seq": appended.seq,
    }
    decisions.record_outcome(session, decision, outcome)
    session.flush()
    return booked(row)


def _check_quotas(session: Session, settings: slots.SchedulingConfig, site: str, market: str, month: str) -> None:
    """Count the month's bookings of the site and the market under a lock each (PostgreSQL: an
    advisory lock per site-month and market-month, so two bookers of different slots cannot both
    take a quota's last booking; SQLite's writers are serialized already)."""
    for kind, name, limit, column in (
        ("site", site, settings.quotas.sites.get(site), SlotBooking.site),
        ("market", market, settings.quotas.markets.get(market), SlotBooking.market),
    ):
        if limit is None:
            continue
        if _postgres(session):
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"quota:{kind}:{name}:{month}"})
        used = session.scalar(select(func.count()).where(column == name, SlotBooking.month == month)) or 0
        if used >= limit:
            raise slots.QuotaExhausted(
                f"{kind} {name} has used its quota of {limit} bookings for {month}", "pick a date in another month"
            )


def _tell_hospital(session: Session, order: Order, row: SlotBooking, option: slots.Option) -> None:
    """The SIU^S12 for the site's interface engine, queued with the booking (the outbox retries it)."""
    key = f"{HOSPITAL}:siu:{row.id}"
    payload = {
        "message_type": SIU_S12,
        "idempotency_key": key,
        "order_id": row.order_id,
        "booking_id": row.id,
        "coi_id": order.coi_id,
        "site": row.site,
        "market": row.market,
        "refs": dict(order.projection.get("refs") or {}),
        "apheresis_at": option.apheresis_at.isoformat(),  # in the site's local time, with its offset
        "apheresis_minutes": option.apheresis_minutes,
        "cmo": row.cmo,
        "slot_day": row.slot_day.isoformat(),
        "infusion_on": row.infusion_on.isoformat(),
    }
    outbox.enqueue(session, outbox.Destination(HOSPITAL, HOSPITAL), key, payload)


def run_booking(
    database_url: str | None,
    order_id: str,
    request: BookingRequest,
    signature: Signature,
    *,
    today: date | None = None,
    check: Callable[[Session], object] | None = None,
) -> Booked:
    """`book` in a transaction of its own (after `check`, the caller's own test, e.g. an API key's
    data scope); a refused signature is recorded in the audit trail. A place the CMO refused is
    marked full in the hub at once, so it is not offered again before the next sync."""

    def work(session: Session) -> Booked:
        if check is not None:
            check(session)
        return book(session, order_id, request, signature, today=today)

    try:
        subject = f"order:{order_id}"
        return decisions.run(database_url, work, signer=signature.signer, action=Action.BOOK_SLOT, subject=subject)
    except CmoFull as full:
        cmo, therapy, day = full.slot
        with session_scope(database_url) as session:
            session.execute(
                update(ManufacturingSlot)
                .where(ManufacturingSlot.cmo == cmo, ManufacturingSlot.therapy == therapy, ManufacturingSlot.day == day)
                .values(booked=ManufacturingSlot.capacity, synced_at=utcnow())
            )
        raise
