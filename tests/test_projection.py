"""The stored order is the life cycle folded over its events: however they arrive, the row is the same."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import select

from cgthub import ledger, projection
from cgthub.changes import OrderChange
from cgthub.lifecycle import OrderStatus, project
from cgthub.model import EventType, ExternalRefs, Shipment, SourceSystem
from cgthub.store import session_scope
from cgthub.tables import Alert, Order, OrderKey
from tests.factories import T0, event, happy_path

D = timedelta(days=1)
ARRIVALS = [
    "in order, one batch",
    "enrolled, then the rest reversed one by one",
    "shuffled, in small batches",
    "enrolment last",
]


def _events(n: int):
    """A life cycle with a hold, its release and a late correction of the hold's reason."""
    hold = event(EventType.ORDER_ON_HOLD, n, at=T0 + 3 * D, reason="patient unwell")
    return [
        *happy_path(n),
        hold,
        event(EventType.ORDER_HOLD_RELEASED, n, at=T0 + 4 * D),
        event(
            EventType.TEMPERATURE_EXCURSION,
            n,
            at=T0 + 7 * D + timedelta(hours=9),
            system=SourceSystem.COURIER,
            shipment=Shipment(shipment_id=f"SHP-{n}-OUT"),
            attributes={"extreme_c": -120.0, "limit_c": -150.0},
        ),
    ]


def _batches(events: list, arrival: str, rng: random.Random) -> list[list]:
    if arrival == "in order, one batch":
        return [events]
    if arrival == "enrolled, then the rest reversed one by one":
        return [events[:1]] + [[e] for e in reversed(events[1:])]
    if arrival == "enrolment last":
        return [[e] for e in events[1:]] + [events[:1]]
    shuffled = rng.sample(events, len(events))
    cuts = sorted(rng.sample(range(1, len(shuffled)), 4))
    return [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]


def _order(url: str, n: int) -> Order:
    with session_scope(url) as session:
        key = (OrderKey.kind == "crm_order_id") & (OrderKey.value == f"CRM-{n:05d}")
        order = session.scalars(select(Order).join(OrderKey, OrderKey.order_id == Order.id).where(key)).one()
        session.expunge(order)
        return order


@pytest.mark.parametrize("seed", [1, 2])
def test_any_arrival_order_of_the_same_events_gives_the_same_order(db_url, seed):
    rng = random.Random(seed)
    for n, arrival in enumerate(ARRIVALS, start=1):
        for batch in _batches(_events(n), arrival, rng):
            with session_scope(db_url) as session:
                ledger.append_many(session, batch)
    stored = {n: _order(db_url, n) for n in range(1, len(ARRIVALS) + 1)}
    for n, order in stored.items():
        expected = project(order.id, _events(n))
        assert projection.load(order) == expected, ARRIVALS[n - 1]
        assert (order.status, order.on_hold, order.site, order.coi_id) == (
            expected.status.value,
            expected.on_hold,
            expected.site,
            expected.coi_id,
        )
        assert order.projected_length == order.ledger_length == len(_events(n))
    assert {o.status for o in stored.values()} == {OrderStatus.INFUSED.value}
    with session_scope(db_url) as session:
        excursions = session.scalars(select(Alert.order_id).where(Alert.kind == "temperature_excursion")).all()
    assert sorted(excursions) == sorted(o.id for o in stored.values())  # one alert each, however often refolded


def test_a_late_event_is_folded_where_it_belongs_not_on_top(db_url):
    """The scheduling arrives after the collection it preceded: folded on top it would step the
    order back and raise an impossible-transition alert; in its place it changes nothing visible."""
    events = happy_path(1)[:6]
    scheduled = events.pop(1)
    with session_scope(db_url) as session:
        ledger.append_many(session, events)
    before = _order(db_url, 1)
    with session_scope(db_url) as session:
        ledger.append_many(session, [scheduled])
    order = _order(db_url, 1)
    assert projection.load(order) == project(order.id, [*events, scheduled])
    assert (order.status, order.status_since) == (before.status, before.status_since)
    with session_scope(db_url) as session:
        assert session.scalars(select(Alert.kind)).all() == []
        steps = session.scalars(
            select(OrderChange.status).where(OrderChange.order_id == order.id).order_by(OrderChange.id)
        ).all()
    assert steps[-1] == order.status


def test_a_correction_replaces_what_it_corrects(db_url):
    events = happy_path(1)[:3]
    with session_scope(db_url) as session:
        ledger.append_many(session, events)
    scheduled = events[1]
    fixed = scheduled.model_copy(
        update={
            "source_event_id": "fix-1",
            "supersedes": scheduled.source_event_id,
            "scheduled_for": T0 + 10 * D,
            "refs": ExternalRefs(crm_order_id="CRM-00001"),
        }
    )
    with session_scope(db_url) as session:
        ledger.append_many(session, [fixed])
    order = _order(db_url, 1)
    assert projection.load(order) == project(order.id, [*events, fixed])
