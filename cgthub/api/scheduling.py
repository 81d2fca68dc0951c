"""Scheduling over HTTP: an order's feasible slot chains, and booking one (a signed decision).

`GET /orders/{id}/slots` (status:read) answers the order's booking, if it has one, and the
apheresis dates it could be booked for (cgthub.slots). `POST /orders/{id}/booking` (operate, plus
the signer's re-authentication in the body, as every decision) books one: 201 with the booking,
200 with the same booking for a request already answered, 409 `slot_full`, `quota_exhausted`,
`date_not_feasible`, `already_booked` or `not_schedulable` with what to do instead.
`POST /orders/{id}/booking/reschedule` (signed `reschedule_slot`) moves a booking to another date
from `GET /orders/{id}/slots?reschedule=true`, and `POST /orders/{id}/booking/cancel` (signed
`cancel_booking`) cancels it: 201 with the change, 200 with the same change for a request already
answered, 409 `not_booked` for an order without a booking.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from cgthub import booking, decisions, slots
from cgthub.api.auth import Principal, Scope
from cgthub.api.decisions import retry_after_headers
from cgthub.api.deps import authorized, read_session
from cgthub.api.errors import ERROR_RESPONSES, NOT_FOUND_RESPONSE, ApiError
from cgthub.api.orders import OrderId, _visible
from cgthub.booking import Booked, BookingChanged, BookingRequest, CancelRequest, RescheduleRequest
from cgthub.decisions import Signature
from cgthub.tables import Order

_Done = TypeVar("_Done", Booked, BookingChanged)

router = APIRouter(tags=["scheduling"], responses={**ERROR_RESPONSES, 404: NOT_FOUND_RESPONSE})


class SlotOption(BaseModel):
    apheresis_on: date
    apheresis_at: str = Field(description="start of the collection, the site's local time with its offset")
    apheresis_minutes: int
    cmo: str
    slot_day: date = Field(description="the manufacturing slot: the day the CMO receives the material")
    places_left: int
    release_on: date
    at_site_on: date
    infusion_on: date
    vein_to_vein_days: int
    site_quota_left: int | None
    market_quota_left: int | None


class SlotsOut(BaseModel):
    order_id: str
    booking: Booked | None
    options: list[SlotOption]


class BookingBody(Signature):
    """The slot chain to book and the signature: signer, password, meaning, reason code and text."""

    apheresis_on: date
    cmo: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


def _error(exc: slots.SchedulingError | decisions.DecisionError) -> ApiError:
    message = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
    headers = retry_after_headers(exc) if isinstance(exc, decisions.DecisionError) else {}
    return ApiError(exc.status, exc.code, message, headers=headers)  # a locked-out signer is told when


@router.get("/orders/{order_id}/slots", response_model=SlotsOut)
def order_slots(
    order_id: OrderId,
    limit: int = Query(default=50, ge=1, le=500, description="at most this many options, earliest first"),
    reschedule: bool = Query(default=False, description="for a booked order: the dates it could be moved to"),
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = Depends(read_session),
) -> SlotsOut:
    """The order's booking, and the apheresis dates a slot chain could be booked (or moved) for now."""
    order: Order = _visible(session, principal, order_id)
    existing = booking.booking_of(session, order_id)
    options: list[dict[str, Any]] = []
    try:
        if existing is None:
            found = slots.Planner.load(session).options(slots.facts(order), limit=limit)
        elif reschedule:
            found = booking.reschedule_options(session, order_id)[:limit]
        else:
            found = []
    except slots.SchedulingError as exc:
        raise _error(exc) from exc
    options = [o.as_dict() for o in found]
    return SlotsOut(
        order_id=order_id,
        booking=booking.booked(existing) if existing is not None else None,
        options=[SlotOption.model_validate(o) for o in options],
    )


@router.post("/orders/{order_id}/booking", response_model=Booked, status_code=201)
def book_order(
    order_id: OrderId,
    body: BookingBody,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=120, pattern=r"^[A-Za-z0-9_.:-]+$"),
    principal: Principal = Depends(authorized(Scope.OPERATE)),
) -> Booked:
    """Book a slot chain, signed: reserves the CMO's place, schedules the apheresis, tells the hospital."""
    wanted = BookingRequest(apheresis_on=body.apheresis_on, cmo=body.cmo, request_key=idempotency_key)
    return _signed(request, response, principal, order_id, body, booking.run_booking, wanted)


class RescheduleBody(Signature):
    """The date to move the booking to and the signature: signer, password, meaning, reason code and text."""

    apheresis_on: date
    cmo: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


def _signed(
    request: Request,
    response: Response,
    principal: Principal,
    order_id: str,
    body: Signature,
    run: Callable[..., _Done],
    wanted: Any,
) -> _Done:
    """`run` (booking.run_booking or run_change) with the body's signature, for an order the key may
    see; its errors in the API's words, and 200 instead of 201 when it answers an earlier request."""
    signature = Signature(**body.model_dump(include=set(Signature.model_fields)))
    try:
        done = run(
            request.app.state.database_url,
            order_id,
            wanted,
            signature,
            check=lambda session: _visible(session, principal, order_id),  # 404 outside the key's data scope
        )
    except decisions.SubjectNotFound as exc:
        raise ApiError(404, "not_found", "no such order") from exc
    except (decisions.DecisionError, slots.SchedulingError) as exc:
        raise _error(exc) from exc
    if done.replayed:
        response.status_code = 200
    return done


@router.post("/orders/{order_id}/booking/reschedule", response_model=BookingChanged, status_code=201)
def reschedule_order(
    order_id: OrderId,
    body: RescheduleBody,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=120, pattern=r"^[A-Za-z0-9_.:-]+$"),
    principal: Principal = Depends(authorized(Scope.OPERATE)),
) -> BookingChanged:
    """Move a booking to another date, signed: the CMO's place moves, the courier's leg is booked
    again and the hospital gets SIU^S13."""
    wanted = RescheduleRequest(apheresis_on=body.apheresis_on, cmo=body.cmo, request_key=idempotency_key)
    return _signed(request, response, principal, order_id, body, booking.run_change, wanted)


@router.post("/orders/{order_id}/booking/cancel", response_model=BookingChanged, status_code=201)
def cancel_order_booking(
    order_id: OrderId,
    body: Signature,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=120, pattern=r"^[A-Za-z0-9_.:-]+$"),
    principal: Principal = Depends(authorized(Scope.OPERATE)),
) -> BookingChanged:
    """Cancel a booking, signed: the CMO's place is given back, the courier's leg cancelled, the
    hospital gets SIU^S15, and the order waits to be booked again."""
    wanted = CancelRequest(request_key=idempotency_key)
    return _signed(request, response, principal, order_id, body, booking.run_change, wanted)
