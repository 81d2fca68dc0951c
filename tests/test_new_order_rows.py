"""A batch's new orders go into the store with their projection (`projection.new_order_rows`): the
row holds what a refresh would have written (state, columns, chain head, the change row at the same
moment), and the refresh runs no UPDATE for them; an order known before is still updated."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cgthub import ledger, projection
from cgthub.changes import OrderChange
from cgthub.lifecycle import project
from cgthub.model import EventType
from cgthub.store import session_scope
from cgthub.tables import Order
from tests.factories import T0, enrolment, event


def _updated_orders(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The ids of the orders each refresh UPDATE writes, as they are written."""
    written: list[str] = []
    build = projection._update_orders

    class Recording:
        def __init__(self, statement: projection.BulkWrite) -> None:
            self.statement = statement

        def run(self, connection, rows):  # type: ignore[no-untyped-def]
            written.extend(row["oid"] for row in rows)
            return self.statement.run(connection, rows)

    monkeypatch.setattr(projection, "_update_orders", lambda changed: Recording(build(changed)))
    return written


def test_new_orders_are_inserted_projected_and_not_updated(db_url, monkeypatch):
    updated = _updated_orders(monkeypatch)
    batch = []
    for n in (1, 2, 3):
        batch += [enrolment(n), event(EventType.APHERESIS_SCHEDULED, n, at=T0 + timedelta(days=1))]
    with session_scope(db_url) as session:
        results = ledger.append_many(session, batch)
    assert [r.status for r in results] == ["appended"] * 6
    assert updated == []  # three new orders, no UPDATE
    with session_scope(db_url) as session:
        for n, order_id in ((n, results[2 * (n - 1)].order_id) for n in (1, 2, 3)):
            order = session.get(Order, order_id)
            assert order is not None
            expected = project(order_id, batch[2 * (n - 1) : 2 * n])
            assert order.projection == expected.model_dump(mode="json")
            assert (order.status, order.site, order.therapy, order.coi_id) == (
                "apheresis_scheduled",
                "US-SITE-1",
                "CART-19",
                expected.coi_id,
            )
            assert (order.ledger_length, order.projected_length) == (2, 2)
            assert order.ledger_head == ledger.entries(session, order_id)[-1].entry_hash
            (change,) = session.scalars(select(OrderChange).where(OrderChange.order_id == order_id))
            assert change.status == "apheresis_scheduled" and change.recorded_at == order.updated_at
        assert ledger.verify(session) == (3, [])


def test_an_order_known_before_is_updated_beside_a_new_one(db_url, monkeypatch):
    with session_scope(db_url) as session:
        (first,) = ledger.append_many(session, [enrolment(1)])
    updated = _updated_orders(monkeypatch)
    with session_scope(db_url) as session:
        later, new = ledger.append_many(
            session, [event(EventType.APHERESIS_SCHEDULED, 1, at=T0 + timedelta(days=1)), enrolment(2)]
        )
    assert updated == [first.order_id] and later.order_id == first.order_id and new.order_id != first.order_id
    with session_scope(db_url) as session:
        known, fresh = session.get(Order, first.order_id), session.get(Order, new.order_id)
        assert known is not None and fresh is not None
        assert known.status == "apheresis_scheduled" and fresh.status == "enrolled"
        assert known.updated_at == fresh.updated_at  # one moment for the batch's rows
        assert ledger.verify(session) == (2, [])
