"""README, Operators: "Decisions, slot bookings and release signatures check the password in one
function (`decisions.authenticate`), so the lockout holds for each." test_signature_lockout drives
decisions and release approval; here the slot booking, over HTTP against the CMO sandbox, on SQLite
and PostgreSQL: five wrong passwords on `POST /orders/{id}/booking` lock the signer, the right one
then answers 429 `signer_locked` with Retry-After, nothing is booked and the CMO is not asked."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from cgthub.scheduling_tables import SlotBooking
from cgthub.store import session_scope
from tests.api_server import api  # noqa: F401 - the fixture
from tests.test_booking import _body, _collection_days, _orders, _places, _sync, world  # noqa: F401


def test_five_wrong_passwords_on_bookings_lock_the_signer_out_of_booking(db_url, world, api):  # noqa: F811
    cmo, cmo_state, _ = world
    (order,) = _orders(db_url, 1)
    (day,) = _collection_days(1)
    _places(cmo, ("CMO-EAST", day + timedelta(days=2), 3))
    _sync(db_url)
    operator = api.client(api.key("operate"))
    for attempt in range(5):
        wrong = operator.post(f"/orders/{order}/booking", json=_body(day, password=f"not my password {attempt}"))
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "signature_refused", wrong.text
    locked = operator.post(f"/orders/{order}/booking", json=_body(day))
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "signer_locked", locked.text
    assert int(locked.headers["Retry-After"]) > 0
    assert len(cmo_state.slots) == 0 and cmo_state.refused == 0  # the CMO was not asked
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(SlotBooking)) == 0
