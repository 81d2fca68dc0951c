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
from dataclasses import replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from cgthub import decisions, ledger, outbox, partners, slots
from cgthub.decisions import Action, Signature
from cgthub.hl7.appointment import CANCELLED as SIU_S15
from cgthub.hl7.appointment import MESSAGE_TYPE as SIU_S12
from cgthub.hl7.appointment import RESCHEDULED as SIU_S13
from cgthub.model import CanonicalEvent, EventType, Provenance, SourceSystem
from cgthub.scheduling_tables import ManufacturingSlot, SlotBooking, SlotBookingChange
from cgthub.store import session_scope
from cgthub.tables import Order, utcnow

HOSPITAL = "hl7"  # the partner whose push speaks HL7 to the treatment site (connectors/hospital)
COURIER = "courier"  # the partner whose push books the dry shipper's legs (connectors/courier)
RESCHEDULED, CANCELLED = "rescheduled", "cancelled"  # the kinds of a booking change


class AlreadyBooked(slots.SchedulingError):
    code = "already_booked"


class BookingCancelled(slots.SchedulingError):
    """A booking request (by its key) whose booking was cancelled since: not booked again by a retry."""

    code = "booking_cancelled"


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
    if existing is None and request.request_key is not None:
        gone = session.scalars(
            select(SlotBookingChange.id).where(
                SlotBookingChange.booking_request_key == key, SlotBookingChange.kind == CANCELLED
            )
        ).first()
        if gone is not None:
            raise BookingCancelled(
                f"the booking made for request {request.request_key} was cancelled (change #{gone})",
                "book again with a new Idempotency-Key",
            )
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

    slot = _slot_row(session, option.cmo, therapy, option.slot_day)
    if slot is None or slot.booked >= slot.capacity:
        raise planner.why_not(facts, request.apheresis_on, option.cmo)  # taken while we looked
    month = option.apheresis_on.isoformat()[:7]
    _check_quotas(session, planner.settings, site, market, month)

    provider = slots.provider()
    reference = (order.projection.get("refs") or {}).get("crm_order_id")
    reservation = slots.Reservation(option.cmo, therapy, option.slot_day, order_id, reference, order.coi_id)
    cancelled_before = _cancellations(session, order_id)  # a booking again after one was cancelled: a new hold
    cmo_key = f"cgthub:{key}" if not cancelled_before else f"cgthub:{key}:{cancelled_before}"
    reserved = _reserve(provider, reservation, cmo_key, "slot")
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
    _tell_hospital(session, order, row, SIU_S12, f"{HOSPITAL}:siu:{row.id}")
    if cancelled_before:  # the leg booked for the cancelled booking was cancelled with it: book it anew
        _tell_courier(session, order, row, "book", f"b{row.id}")
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


def _check_quotas(
    session: Session,
    settings: slots.SchedulingConfig,
    site: str,
    market: str,
    month: str,
    *,
    excluding: int | None = None,
) -> None:
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
        counted = select(func.count()).where(column == name, SlotBooking.month == month)
        if excluding is not None:  # the booking being moved does not count against its own new month
            counted = counted.where(SlotBooking.id != excluding)
        used = session.scalar(counted) or 0
        if used >= limit:
            raise slots.QuotaExhausted(
                f"{kind} {name} has used its quota of {limit} bookings for {month}", "pick a date in another month"
            )


def _tell_hospital(session: Session, order: Order, row: SlotBooking, message_type: str, key: str) -> None:
    """The SIU (S12 booked, S13 moved, S15 cancelled) for the site's interface engine, queued with the
    change (the outbox retries it)."""
    payload = {
        "message_type": message_type,
        "idempotency_key": key,
        "order_id": row.order_id,
        "booking_id": row.id,
        "coi_id": order.coi_id,
        "site": row.site,
        "market": row.market,
        "refs": dict(order.projection.get("refs") or {}),
        "apheresis_at": _local(row).isoformat(),  # in the site's local time, with its offset
        "apheresis_minutes": slots.config().calendar(row.site).minutes,
        "cmo": row.cmo,
        "slot_day": row.slot_day.isoformat(),
        "infusion_on": row.infusion_on.isoformat(),
    }
    outbox.enqueue(session, outbox.Destination(HOSPITAL, HOSPITAL), key, payload)


def _local(row: SlotBooking) -> datetime:
    return row.apheresis_at.astimezone(ZoneInfo(slots.config().calendar(row.site).timezone))


def _tell_courier(session: Session, order: Order, row: SlotBooking, action: str, change: str) -> None:
    """The courier's leg to the CMO booked, moved (cancelled and booked again) or cancelled, queued
    with the change (connectors/courier `push`, idempotent per change)."""
    if COURIER not in partners.pushed():
        return
    key = f"{COURIER}:{row.order_id}:booking:{change}"
    payload = {
        "idempotency_key": key,
        "courier_action": action,
        "change_id": change,
        "order_id": row.order_id,
        "status": "apheresis_scheduled",
        "stage": order.projection.get("stage"),
        "refs": dict(order.projection.get("refs") or {}),
        "scheduled": {"apheresis": row.apheresis_at.isoformat()},
        "site": row.site,
        "market": row.market,
        "cmo": row.cmo,
    }
    outbox.enqueue(session, outbox.Destination(COURIER, COURIER), key, payload)


# reschedule and cancel -----------------------------------------------------------------------------


class RescheduleRequest(BaseModel):
    """Where to move a booked slot chain: another apheresis date (from the options) and, if it matters, the CMO."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apheresis_on: date = Field(description="a date from GET /orders/{id}/slots?reschedule=true")
    cmo: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    request_key: str | None = Field(default=None, min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.:-]+$")


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_key: str | None = Field(default=None, min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.:-]+$")


class BookingChanged(BaseModel):
    """A booking moved or cancelled: what it was, and (moved) the booking it is now."""

    change_id: int
    kind: str = Field(description="rescheduled or cancelled")
    order_id: str
    booking_id: int
    was_cmo: str
    was_apheresis_on: date
    was_slot_day: date
    was_cmo_reservation: str
    booking: Booked | None = Field(description="the booking as it is now (none once cancelled)")
    changed_by: str
    changed_at: datetime
    decision_id: int | None
    replayed: bool = False


def changed(session: Session, row: SlotBookingChange, *, replayed: bool = False) -> BookingChanged:
    now = booking_of(session, row.order_id) if row.kind == RESCHEDULED else None
    return BookingChanged(
        change_id=row.id,
        kind=row.kind,
        order_id=row.order_id,
        booking_id=row.booking_id,
        was_cmo=row.cmo,
        was_apheresis_on=row.apheresis_on,
        was_slot_day=row.slot_day,
        was_cmo_reservation=row.cmo_reservation,
        booking=booked(now) if now is not None and now.id == row.booking_id else None,
        changed_by=row.changed_by,
        changed_at=row.changed_at,
        decision_id=row.decision_id,
        replayed=replayed,
    )


def _cancellations(session: Session, order_id: str) -> int:
    counted = select(func.count()).where(SlotBookingChange.order_id == order_id, SlotBookingChange.kind == CANCELLED)
    return int(session.scalar(counted) or 0)


def _locked_order(session: Session, order_id: str) -> Order:
    order = session.get(Order, order_id, with_for_update=_postgres(session), populate_existing=True)
    if order is None:
        raise decisions.SubjectNotFound(f"no order {order_id}", "find it with `cgthub orders list`")
    return order


def _change_by_key(session: Session, key: str) -> SlotBookingChange | None:
    return session.scalars(select(SlotBookingChange).where(SlotBookingChange.request_key == key)).first()


def _changeable(order: Order, what: str) -> None:
    """A booking is moved or cancelled only before the apheresis took place."""
    stage = str((order.projection or {}).get("stage") or order.status)
    if stage != "apheresis_scheduled":
        raise slots.NotSchedulable(
            f"order {order.id} is {stage}: its booking can no longer be {what}",
            "a collected order's material is on its way; talk to the CMO",
        )


def _slot_row(session: Session, cmo: str, therapy: str, day: date) -> ManufacturingSlot | None:
    return session.scalars(
        select(ManufacturingSlot)
        .where(ManufacturingSlot.cmo == cmo, ManufacturingSlot.therapy == therapy, ManufacturingSlot.day == day)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def _cmo_call(call: Callable[[], Any], what: str) -> Any:
    try:
        return call()
    except partners.PartnerUnavailable as exc:
        raise CmoUnavailable(
            f"the CMO did not confirm the {what} ({exc}); nothing was changed",
            "send the same request again: the CMO applies it at most once",
        ) from exc


def _reserve(provider: Any, reservation: slots.Reservation, key: str, what: str) -> Any:
    """Hold a place at the CMO (idempotent per key). A CMO that says it is full is right, whatever
    the last sync counted; one that does not answer booked nothing."""
    try:
        return _cmo_call(lambda: provider.reserve(reservation, key), what)
    except slots.SlotTaken as full:
        raise CmoFull(full.message, full.hint, (reservation.cmo, reservation.therapy, reservation.slot_day)) from full


def _give_back(session: Session, provider: Any, booking: SlotBooking, key: str, what: str) -> None:
    """Release a booking's place at the CMO (idempotent per key) and count it free in the slot row."""
    _cmo_call(lambda: provider.release(booking.cmo_reservation, f"cgthub:release:{key}"), what)
    slot = _slot_row(session, booking.cmo, booking.therapy, booking.slot_day)
    if slot is not None:
        slot.booked = max(slot.booked - 1, 0)


def _change_row(booking: SlotBooking, kind: str, key: str, decision: Any, **moved_to: Any) -> SlotBookingChange:
    """A reschedule or cancellation of `booking`, as it was before the change (and where it moved)."""
    return SlotBookingChange(
        order_id=booking.order_id,
        booking_id=booking.id,
        kind=kind,
        request_key=key,
        booking_request_key=booking.request_key,
        cmo=booking.cmo,
        apheresis_on=booking.apheresis_on,
        slot_day=booking.slot_day,
        cmo_reservation=booking.cmo_reservation,
        decision_id=decision.id,
        changed_by=decision.signer,
        changed_at=utcnow(),
        **moved_to,
    )


def _move_planner(
    session: Session, order: Order, existing: SlotBooking, today: date | None
) -> tuple[slots.Planner, slots.OrderFacts]:
    _changeable(order, "rescheduled")
    facts = replace(slots.facts(order), status="enrolled")  # offered as if not booked (a hold still counts)
    planner = slots.Planner.load(session, today=today)
    planner.site_use[(existing.site, existing.month)] -= 1  # its own booking does not use up a quota
    planner.market_use[(existing.market, existing.month)] -= 1
    return planner, facts


def reschedule_options(session: Session, order_id: str, *, today: date | None = None) -> list[slots.Option]:
    """The dates a booked order could be moved to (its own booking's place and quota counted free)."""
    order = session.get(Order, order_id)
    if order is None:
        raise slots.NotSchedulable(f"no order {order_id}")
    existing = booking_of(session, order_id)
    if existing is None:
        raise slots.NotBooked(f"order {order_id} has no booking to reschedule", "book it first")
    planner, facts = _move_planner(session, order, existing, today)
    return [o for o in planner.options(facts) if (o.apheresis_on, o.cmo) != (existing.apheresis_on, existing.cmo)]


def reschedule(
    session: Session, order_id: str, request: RescheduleRequest, signature: Signature, *, today: date | None = None
) -> BookingChanged:
    """Move an order's booked slot chain to another apheresis date, in the caller's transaction.

    The new place is reserved at the CMO before the old one is given back (both idempotent per
    request), so a failure between the two never leaves the order without a place; the booking row
    is updated, the change recorded, `order.rescheduled` with the new date appended to the ledger,
    and the hospital's SIU^S13 and the courier's leg (cancelled and booked for the new date) queued.
    """
    order = _locked_order(session, order_id)
    asked = request.request_key or f"{request.apheresis_on}:{request.cmo or 'any'}"
    key = f"{order_id}:reschedule:{asked}"
    done = _change_by_key(session, key)
    if done is not None:
        return changed(session, done, replayed=True)
    existing = booking_of(session, order_id)
    if existing is None:
        raise slots.NotBooked(f"order {order_id} has no booking to reschedule", "book it first")
    if existing.apheresis_on == request.apheresis_on and request.cmo in (None, existing.cmo):
        raise AlreadyBooked(
            f"order {order_id} is booked for an apheresis on {existing.apheresis_on} at {existing.cmo} already",
            "pick another date from GET /orders/{id}/slots?reschedule=true",
        )
    planner, facts = _move_planner(session, order, existing, today)
    chosen = [
        o for o in planner.options(facts) if o.apheresis_on == request.apheresis_on and request.cmo in (None, o.cmo)
    ]
    if not chosen:
        raise planner.why_not(facts, request.apheresis_on, request.cmo)
    option = chosen[0]
    shown = decisions.preview_order(session, order_id)
    decision, reason = decisions.sign_decision(session, Action.RESCHEDULE_SLOT, signature, shown, order_id)

    slot = _slot_row(session, option.cmo, existing.therapy, option.slot_day)
    if slot is None or slot.booked >= slot.capacity:
        raise planner.why_not(facts, request.apheresis_on, option.cmo)
    month = option.apheresis_on.isoformat()[:7]
    _check_quotas(session, planner.settings, existing.site, existing.market, month, excluding=existing.id)
    provider = slots.provider()
    reference = (order.projection.get("refs") or {}).get("crm_order_id")
    reservation = slots.Reservation(option.cmo, existing.therapy, option.slot_day, order_id, reference, order.coi_id)
    reserved = _reserve(provider, reservation, f"cgthub:{key}", "new slot")
    _give_back(session, provider, existing, key, "release of the old slot")
    slot.booked += 1
    change = _change_row(
        existing,
        RESCHEDULED,
        key,
        decision,
        new_cmo=option.cmo,
        new_apheresis_on=option.apheresis_on,
        new_slot_day=option.slot_day,
        new_cmo_reservation=reserved.reservation_id,
    )
    session.add(change)
    for name in ("cmo", "apheresis_on", "apheresis_at", "slot_day", "release_on", "at_site_on", "infusion_on"):
        setattr(existing, name, getattr(option, name))
    existing.month = month
    existing.cmo_reservation = reserved.reservation_id
    session.flush()
    appended = _record(session, existing, change, decision, reason, option.apheresis_at)
    _tell_hospital(session, order, existing, SIU_S13, f"{HOSPITAL}:siu:{existing.id}:{change.id}")
    _tell_courier(session, order, existing, "rebook", f"c{change.id}")
    outcome = {
        "change_id": change.id,
        "booking_id": existing.id,
        "apheresis_on": option.apheresis_on.isoformat(),
        "cmo": option.cmo,
        "slot_day": option.slot_day.isoformat(),
        "cmo_reservation": reserved.reservation_id,
        "released": change.cmo_reservation,
        "ledger_seq": appended,
    }
    decisions.record_outcome(session, decision, outcome)
    session.flush()
    return changed(session, change)


def cancel(session: Session, order_id: str, request: CancelRequest, signature: Signature) -> BookingChanged:
    """Cancel an order's booked slot chain, in the caller's transaction: the CMO's place is given
    back (idempotent per request), the booking leaves `slot_bookings` (its place and quota are free
    again) and is kept as a change, `order.rescheduled` (cancelled) puts the order back to
    `enrolled` in its ledger, and the hospital's SIU^S15 and the courier's cancellation are queued.
    Asked again, it answers the same cancellation."""
    order = _locked_order(session, order_id)
    existing = booking_of(session, order_id)
    key = f"{order_id}:cancel:{request.request_key or (existing.id if existing is not None else '')}"
    done = _change_by_key(session, key) if request.request_key or existing is not None else None
    if done is None and existing is None:  # the booking is gone: the last change answers if it cancelled it
        last = session.scalars(
            select(SlotBookingChange)
            .where(SlotBookingChange.order_id == order_id)
            .order_by(SlotBookingChange.id.desc())
            .limit(1)
        ).first()
        done = last if last is not None and last.kind == CANCELLED and not request.request_key else None
    if done is not None:
        return changed(session, done, replayed=True)
    if existing is None:
        raise slots.NotBooked(f"order {order_id} has no booking to cancel")
    _changeable(order, "cancelled")
    shown = decisions.preview_order(session, order_id)
    decision, reason = decisions.sign_decision(session, Action.CANCEL_BOOKING, signature, shown, order_id)
    _give_back(session, slots.provider(), existing, key, "release of the slot")
    change = _change_row(existing, CANCELLED, key, decision)
    session.add(change)
    session.flush()
    appended = _record(session, existing, change, decision, reason, None)
    _tell_hospital(session, order, existing, SIU_S15, f"{HOSPITAL}:siu:{existing.id}:{change.id}")
    _tell_courier(session, order, existing, "cancel", f"c{change.id}")
    session.delete(existing)
    outcome = {
        "change_id": change.id,
        "booking_id": change.booking_id,
        "released": change.cmo_reservation,
        "ledger_seq": appended,
    }
    decisions.record_outcome(session, decision, outcome)
    session.flush()
    return changed(session, change)


def _record(
    session: Session,
    row: SlotBooking,
    change: SlotBookingChange,
    decision: Any,
    reason: Any,
    scheduled_for: datetime | None,
) -> int:
    """`order.rescheduled` in the order's ledger: the new date, or (cancelled) none; the ledger's seq."""
    attributes: dict[str, Any] = {
        "what": "apheresis",
        "booking_id": row.id,
        "change_id": change.id,
        "was_apheresis_on": change.apheresis_on.isoformat(),
        "was_cmo": change.cmo,
        "was_slot_day": change.slot_day.isoformat(),
        "released_reservation": change.cmo_reservation,
        "decision_id": decision.id,
        "decision": decision.action,
        "signer": decision.signer,
        "meaning": decision.meaning,
        "reason_code": decision.reason_code,
        "shown_hash": decision.shown_hash,
        "decision_hash": decisions.decision_digest(decision),
    }
    if change.kind == CANCELLED:
        attributes["cancelled"] = True
    else:
        attributes.update(
            cmo=row.cmo,
            slot_day=row.slot_day.isoformat(),
            release_on=row.release_on.isoformat(),
            at_site_on=row.at_site_on.isoformat(),
            infusion_on=row.infusion_on.isoformat(),
            cmo_reservation=row.cmo_reservation,
        )
    appended = ledger.append(
        session,
        CanonicalEvent(
            source_system=SourceSystem.HUB,
            source_event_id=f"booking-change:{change.id}",
            event_type=EventType.ORDER_RESCHEDULED,
            occurred_at=change.changed_at,
            received_at=change.changed_at,
            order_id=row.order_id,
            scheduled_for=scheduled_for,
            reason=f"{reason.code}: {reason.title}",
            attributes=attributes,
            provenance=Provenance(mapping_id="cgthub/booking", mapping_version="1"),
        ),
    )
    return int(appended.seq or 0)


def run_change(
    database_url: str | None,
    order_id: str,
    request: RescheduleRequest | CancelRequest,
    signature: Signature,
    *,
    today: date | None = None,
    check: Callable[[Session], object] | None = None,
) -> BookingChanged:
    """`reschedule` or `cancel` in a transaction of its own (after `check`, the caller's own test);
    a refused signature is recorded in the audit trail, as for a booking."""
    is_move = isinstance(request, RescheduleRequest)

    def work(session: Session) -> BookingChanged:
        if check is not None:
            check(session)
        if isinstance(request, RescheduleRequest):
            return reschedule(session, order_id, request, signature, today=today)
        return cancel(session, order_id, request, signature)

    action = Action.RESCHEDULE_SLOT if is_move else Action.CANCEL_BOOKING
    try:
        return decisions.run(database_url, work, signer=signature.signer, action=action, subject=f"order:{order_id}")
    except CmoFull as full:
        _mark_full(database_url, full)
        raise


def _mark_full(database_url: str | None, full: CmoFull) -> None:
    cmo, therapy, day = full.slot
    with session_scope(database_url) as session:
        session.execute(
            update(ManufacturingSlot)
            .where(ManufacturingSlot.cmo == cmo, ManufacturingSlot.therapy == therapy, ManufacturingSlot.day == day)
            .values(booked=ManufacturingSlot.capacity, synced_at=utcnow())
        )


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
        _mark_full(database_url, full)
        raise
