"""README, Scheduling: "a day the site does not collect, 409 `date_not_feasible`", over HTTP with a
signed booking body against the CMO sandbox, on SQLite and PostgreSQL (test_booking checks the
message; a client switches on the code)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from cgthub.scheduling_tables import SlotBooking
from cgthub.store import session_scope
from tests.api_server import api  # noqa: F401 - the fixture
from tests.test_booking import _body, _collection_days, _fresh_breakers, _orders, _places, _sync, world  # noqa: F401


def test_a_day_the_site_does_not_collect_answers_409_date_not_feasible_and_books_nothing(db_url, world, api):  # noqa: F811
    cmo, cmo_state, _ = world
    (order,) = _orders(db_url, 1)
    (day,) = _collection_days(1)
    closed = next(d for d in (day + timedelta(days=i) for i in range(7)) if d.weekday() in (4, 5, 6))
    _places(cmo, *[("CMO-EAST", closed + timedelta(days=k), 3) for k in range(4)])
    _sync(db_url)
    answer = api.client(api.key("operate")).post(f"/orders/{order}/booking", json=_body(closed))
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "date_not_feasible" and "does not collect on" in error["message"]
    assert len(cmo_state.slots) == 0  # no place was reserved at the CMO
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(SlotBooking)) == 0
