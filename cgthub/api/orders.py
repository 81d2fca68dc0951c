"""Order routes: list with filters, detail, timeline, custody (EPCIS 2.0) and FHIR.

Every query is narrowed by the key's data scope; an order outside it answers 404 exactly like an
order that does not exist, so a key cannot probe for orders it may not see.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime
from sqlalchemy import Connection, and_, bindparam, exists, func, select
from sqlalchemy.orm import Session

from cgthub import custody_signing, ledger, projection
from cgthub.api import epcis, fhir
from cgthub.api.auth import Principal, Scope
from cgthub.api.cursor import decode_order_cursor, encode_order_cursor
from cgthub.api.deps import authorized, read_connection, read_session
from cgthub.api.errors import ERROR_RESPONSES, NOT_FOUND_RESPONSE, ApiError, not_found
from cgthub.api.schemas import (
    AlertView,
    CoiSummary,
    LedgerHead,
    Milestone,
    OrderDetail,
    OrderPage,
    PatientView,
    ShipmentSummary,
    Timeline,
    TimelineEntry,
)
from cgthub.lifecycle import OrderStatus, effective_events
from cgthub.model import CanonicalEvent
from cgthub.tables import Alert, Order, QuarantineEntry

router = APIRouter(tags=["orders"], responses=ERROR_RESPONSES | {404: NOT_FOUND_RESPONSE})

MAX_PAGE = 200
OrderId = Annotated[str, Path(min_length=1, max_length=40, description="the hub's order id (ORD-...)")]


def _visible(session: Session, principal: Principal, order_id: str) -> Order:
    order: Order = _in_scope(principal, session.get(Order, order_id))
    return order


def _in_scope(principal: Principal, order: Any) -> Any:
    """The order (ORM object or Core row) if the key's data scope covers it; else 404, as if missing."""
    if order is None or not principal.can_see(site=order.site, cmo=order.cmo, market=order.market):
        raise not_found()
    return order


def _open_alert_counts(session: Session, order_ids: list[str]) -> dict[str, int]:
    if not order_ids:
        return {}
    rows = session.execute(
        select(Alert.order_id, func.count())
        .where(Alert.order_id.in_(order_ids), Alert.status == "open")
        .group_by(Alert.order_id)
    )
    return {order_id: count for order_id, count in rows if order_id}


def _summary(order: Any, open_alerts: int) -> dict[str, Any]:
    """The list fields of an order (an ORM Order, or a Core row of the orders table)."""
    return {
        "id": order.id,
        "therapy": order.therapy,
        "market": order.market,
        "site": order.site,
        "cmo": order.cmo,
        "status": order.status,
        "on_hold": order.on_hold,
        "status_since": order.status_since,
        "last_event_at": order.last_event_at,
        "updated_at": order.updated_at,
        "open_alerts": open_alerts,
    }


@router.get("/orders", response_model=OrderPage, summary="List orders the key may see, filtered, by pages")
def list_orders(
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = Depends(read_session),
    status: OrderStatus | None = Query(None, description="normalized status"),
    market: str | None = Query(None, min_length=2, max_length=2, pattern="^[A-Za-z]{2}$", description="ISO country"),
    site: str | None = Query(None, min_length=1, max_length=64, description="treatment site id"),
    therapy: str | None = Query(None, min_length=1, max_length=64),
    updated_since: AwareDatetime | None = Query(None, description="only orders updated at or after (with offset)"),
    has_open_alerts: bool | None = Query(None, description="only orders with (true) or without (false) open alerts"),
    limit: int = Query(50, ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}"),
    cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page"),
) -> dict[str, Any]:
    query = select(Order).where(*principal.data_filter(Order.site, Order.cmo, Order.market))
    if status is not None:
        query = query.where(Order.status == status.value)
    if market is not None:
        query = query.where(Order.market == market.upper())
    if site is not None:
        query = query.where(Order.site == site)
    if therapy is not None:
        query = query.where(Order.therapy == therapy)
    if updated_since is not None:
        try:
            since = updated_since.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before the first instant a datetime holds
            raise ApiError(422, "invalid_request", "updated_since is out of range") from None
        query = query.where(Order.updated_at >= since)
    if has_open_alerts is not None:
        alerted = exists().where(and_(Alert.order_id == Order.id, Alert.status == "open"))
        query = query.where(alerted if has_open_alerts else ~alerted)
    if cursor is not None:
        query = query.where(Order.id > decode_order_cursor(cursor))
    rows = list(session.scalars(query.order_by(Order.id).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    counts = _open_alert_counts(session, [o.id for o in page])
    return {
        "orders": [_summary(o, counts.get(o.id, 0)) for o in page],
        "next_cursor": encode_order_cursor(page[-1].id) if more and page else None,
    }


# GET /orders/{id} is the API's hot path: one statement in Core, the order with its open alerts
# (through the ORM the same read cost more than twice as much; bench/api_bench.py).
_ALERT_COLUMNS = ("id", "kind", "severity", "message", "opened_at", "details")
_ORDER_WITH_OPEN_ALERTS = (
    select(Order.__table__, *(getattr(Alert, c).label(f"alert_{c}") for c in _ALERT_COLUMNS))
    .select_from(Order.__table__.outerjoin(Alert, and_(Alert.order_id == Order.id, Alert.status == "open")))
    .where(Order.id == bindparam("order_id"))
    .order_by(Alert.id)
)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _linked_orders(connection: Connection, order_id: str, details: Any) -> list[Any]:
    """The other orders an alert's facts link it to: order ids in its details, or in the details of
    the quarantine entry it names (which records every order a conflict involved)."""
    facts = dict(details) if isinstance(details, dict) else {}
    quarantine_id = facts.get("quarantine_id")
    if isinstance(quarantine_id, int):
        entry = connection.execute(
            select(QuarantineEntry.details).where(QuarantineEntry.id == quarantine_id)
        ).scalar_one_or_none()
        facts["quarantine"] = entry or {}
    candidates = {text for text in _strings(facts) if 0 < len(text) <= 40 and text != order_id}
    if not candidates:
        return []
    return list(
        connection.execute(select(Order.id, Order.site, Order.cmo, Order.market).where(Order.id.in_(candidates)))
    )


def _alert_text(connection: Connection, principal: Principal, order_id: str, alert: Any) -> str:
    """The alert's text with the orders its facts link it to, for a key that may see them all; a key
    that may not see one of them reads only what happened to its own order (an alert stored before
    links moved into the facts may name the other order or its identifiers in its text)."""
    if not alert.details:
        return str(alert.message)
    linked = _linked_orders(connection, order_id, alert.details)
    if any(not principal.can_see(site=o.site, cmo=o.cmo, market=o.market) for o in linked):
        return (
            f"{alert.kind.replace('_', ' ')} on this order, involving an order outside this key's data scope; "
            "an operator who may see both has the details"
        )
    unnamed = sorted(o.id for o in linked if o.id not in alert.message)
    return f"{alert.message} (linked orders: {', '.join(unnamed)})" if unnamed else str(alert.message)


@router.get("/orders/{order_id}", response_model=OrderDetail, response_model_exclude_none=False)
async def get_order(
    order_id: OrderId,
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    connection: Connection = Depends(read_connection),
) -> dict[str, Any]:
    """Normalized status, milestones with times, external references, COI summary, open alerts.

    Answered on the event loop, without a thread-pool hop: the reads are short and indexed."""
    rows = connection.execute(_ORDER_WITH_OPEN_ALERTS, {"order_id": order_id}).all()
    order = _in_scope(principal, rows[0] if rows else None)
    state = projection.load(order)
    alerts = [
        SimpleNamespace(**{c: getattr(row, f"alert_{c}") for c in _ALERT_COLUMNS})
        for row in rows
        if row.alert_id is not None
    ]
    refs: dict[str, list[str]] = {}
    for kind, value in state.refs.pairs():
        refs.setdefault(kind, []).append(value)
    detail = _summary(order, len(alerts))
    detail.update(
        stage=state.stage.value,
        hold_reason=state.hold_reason,
        milestones=[
            Milestone(milestone=name, at=at) for name, at in sorted(state.milestones.items(), key=lambda kv: kv[1])
        ],
        scheduled=state.scheduled,
        skipped_milestones=state.skipped_milestones,
        external_refs=refs,
        coi=CoiSummary(
            coi_id=state.coi_id,
            dins=state.dins,
            lot=state.lot,
            bag_count=len(state.bag_ids),
            discrepancy=any(a.kind == "coi_discrepancy" for a in alerts),
        ),
        shipments=[
            ShipmentSummary(
                shipment_id=s.shipment_id,
                direction=s.direction,
                courier=s.courier,
                last_event=s.last_event,
                last_event_at=s.last_event_at,
                customs_hold=s.customs_hold,
                excursions=s.excursions,
            )
            for s in state.shipments.values()
        ],
        alerts=[
            AlertView(
                id=a.id,
                kind=a.kind,
                severity=a.severity,
                message=_alert_text(connection, principal, order.id, a),
                opened_at=a.opened_at,
            )
            for a in alerts
        ],
        vein_to_vein_days=state.vein_to_vein_days(datetime.now(UTC)),
        released_under_exception=state.released_under_exception,
        ledger=LedgerHead(length=order.ledger_length, head=order.ledger_head),
        patient=PatientView(pseudonyms=state.patient_pseudonyms) if principal.has(Scope.CUSTODY_READ) else None,
    )
    return detail


@router.get("/orders/{order_id}/timeline", response_model=Timeline)
def get_timeline(
    order_id: OrderId,
    principal: Principal = Depends(authorized(Scope.TIMELINE_READ)),
    session: Session = Depends(read_session),
) -> dict[str, Any]:
    """Every ledger event of the order: source system, mapping version, occurred vs received time.

    PHI-free: patient identifiers, free-text reasons and attributes are never part of the timeline.
    """
    order = _visible(session, principal, order_id)
    entries = ledger.entries(session, order.id)
    decoded = [(entry, CanonicalEvent.model_validate_json(entry.body)) for entry in entries]
    alive = {event.key for event in effective_events(event for _, event in decoded)}
    return {
        "order_id": order.id,
        "entries": [
            TimelineEntry(
                seq=entry.seq,
                event_type=event.event_type.value,
                source_system=event.source_system.value,
                source_event_id=event.source_event_id,
                occurred_at=event.occurred_at,
                received_at=event.received_at,
                recorded_at=entry.recorded_at,
                mapping_id=event.provenance.mapping_id,
                mapping_version=event.provenance.mapping_version,
                raw_checksum=event.provenance.raw_checksum,
                supersedes=event.supersedes,
                effective=event.key in alive,
                entry_hash=entry.entry_hash,
                prev_hash=entry.prev_hash,
            )
            for entry, event in decoded
        ],
    }


_OBJECT = {"schema": {"type": "object"}}


@router.get(
    "/orders/{order_id}/custody",
    response_class=JSONResponse,
    responses={200: {"description": "EPCIS 2.0 JSON-LD document", "content": {"application/ld+json": _OBJECT}}},
)
def get_custody(
    request: Request,
    order_id: OrderId,
    principal: Principal = Depends(authorized(Scope.CUSTODY_READ)),
    session: Session = Depends(read_session),
) -> JSONResponse:
    """The chain of custody as a GS1 EPCIS 2.0 document, with the ledger entries to verify it offline,
    signed with the hub's Ed25519 key (public keys at /custody/keys)."""
    order = _visible(session, principal, order_id)
    document = epcis.build_document(
        projection.load(order),
        ledger.entries(session, order.id),
        order_id=order.id,
        head=order.ledger_head,
        created=datetime.now(UTC),
    )
    signed = custody_signing.sign(document, database_url=request.app.state.database_url)
    return JSONResponse(signed, media_type="application/ld+json")


@router.get(
    "/orders/{order_id}/fhir",
    response_class=JSONResponse,
    responses={200: {"description": "FHIR R4 Bundle (collection)", "content": {"application/fhir+json": _OBJECT}}},
)
def get_fhir(
    order_id: OrderId,
    principal: Principal = Depends(authorized(Scope.CUSTODY_READ)),
    session: Session = Depends(read_session),
) -> JSONResponse:
    """ServiceRequest, Task for the current step, BiologicallyDerivedProduct for apheresis unit and product."""
    order = _visible(session, principal, order_id)
    bundle = fhir.build_bundle(projection.load(order), updated_at=order.updated_at)
    return JSONResponse(bundle, media_type="application/fhir+json")
