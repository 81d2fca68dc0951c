"""The order projection: the `orders` row is the life cycle folded over the order's ledger.

Recomputed from the whole ledger of the order on every append (`lifecycle.project` is pure), so
late and out-of-order events land where they belong. New anomalies and excursions raise alerts.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cgthub import alerts, changes, ledger
from cgthub.lifecycle import OrderProjection, can_advance, fold_onto, project
from cgthub.model import CanonicalEvent
from cgthub.tables import Order, utcnow


def refresh(session: Session, order_id: str, *, new_events: list[CanonicalEvent] | None = None) -> OrderProjection:
    """Bring the order row up to date with its ledger.

    `new_events` are the entries just appended: when they all happened after everything already
    folded, they are folded onto the stored projection instead of re-reading the whole ledger.
    """
    order = session.get(Order, order_id)
    if order is None:
        raise LookupError(f"order {order_id} does not exist")
    return refresh_order(session, order, new_events=new_events)


def refresh_order(session: Session, order: Order, *, new_events: list[CanonicalEvent] | None = None) -> OrderProjection:
    """`refresh` for an order row the caller already holds (the ledger's batch writer)."""
    before = order.projection
    state = None
    if new_events and order.projected_length + len(new_events) == order.ledger_length:
        if order.projected_length == 0:
            state = project(order.id, new_events)  # a new order: these are all its events
        else:
            stored = load(order)
            if can_advance(stored, new_events):
                state = fold_onto(stored, new_events)
    if state is None:
        state = project(order.id, ledger.events(session, order.id))
    order.projected_length = order.ledger_length
    order.status = state.status.value
    order.on_hold = state.on_hold
    order.status_since = state.status_since
    order.therapy, order.market, order.site, order.cmo = state.therapy, state.market, state.site, state.cmo
    order.coi_id = state.coi_id
    order.last_event_at = state.last_event_at
    order.projection = state.model_dump(mode="json")
    changes.record(session, order, before, order.projection)
    order.updated_at = utcnow()
    if state.anomalies or state.excursions:
        _raise_alerts(session, state)
    return state


def load(order: Order) -> OrderProjection:
    return OrderProjection.model_validate(order.projection)


def _raise_alerts(session: Session, state: OrderProjection) -> None:
    for anomaly in state.anomalies:
        alerts.raise_alert(
            session,
            kind="impossible_transition",
            order_id=state.order_id,
            message=f"{anomaly.message} ({anomaly.source_system} event {anomaly.source_event_id}); "
            "the event is kept in the ledger but did not change the order",
            dedupe_key=f"anomaly:{state.order_id}:{anomaly.source_system}:{anomaly.source_event_id}",
        )
    for excursion in state.excursions:
        alerts.raise_alert(
            session,
            kind="temperature_excursion",
            severity=alerts.Severity.CRITICAL,
            order_id=state.order_id,
            message=f"temperature excursion on shipment {excursion.get('shipment_id', '?')}",
            dedupe_key=f"excursion:{state.order_id}:{excursion['source_event_id']}",
            details=excursion,
        )
