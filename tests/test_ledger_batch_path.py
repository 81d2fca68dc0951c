"""What a caller holding an order sees after the batch path wrote it with Core statements."""

from __future__ import annotations

from sqlalchemy import select

from cgthub import ledger
from cgthub.store import session_scope
from cgthub.tables import Order
from tests.factories import happy_path


def test_an_order_loaded_before_an_append_shows_what_the_append_made_of_it(db_url):
    events = happy_path(1)
    with session_scope(db_url) as session:
        ledger.append_many(session, events[:1])
    with session_scope(db_url) as session:
        order = session.scalars(select(Order)).one()
        assert (order.status, order.ledger_length) == ("enrolled", 1)
        results = ledger.append_many(session, events[1:4])
        assert [r.status for r in results] == ["appended"] * 3
        # The session's Order object is reloaded, not left as it was before the UPDATE.
        assert order.ledger_length == 4 and order.status != "enrolled"
        assert order.projected_length == 4
