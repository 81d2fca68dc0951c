"""README, Operators: `cgthub orders release-under-exception ORDER ...` and the API's
`POST /orders/{id}/release-under-exception` (operate scope), signed decisions like the others (no test
drove either). Over a real uvicorn server and through `cgthub`, on SQLite and PostgreSQL: an order whose
product QC found out of specification is released under exception, signed, with a reason code allowed
for the action; the decision enters the order's ledger; a code allowed only for other actions and an
order not in OOS review are refused and change nothing."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cgthub import decisions, ledger
from cgthub.model import EventType, SourceSystem
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests import api_server
from tests.factories import T0, event, happy_path
from tests.test_decisions import PASSWORD, _add_operator, _body, _cli

api = api_server.api
SIGN = ["--meaning", "approved", "--text", "QA assessed the deviation", "--password-stdin", "--signer", "qa.lead"]


def _out_of_specification(url: str, *patients: int) -> list[str]:
    """Orders through QC started, then the CMO's out-of-specification result: in OOS review."""
    with session_scope(url) as s:
        for n in patients:
            ledger.append_many(s, happy_path(n)[:8])
            ledger.append(s, event(EventType.PRODUCT_OOS, n, at=T0 + timedelta(days=22), system=SourceSystem.CMO))
        ids = list(s.scalars(select(Order.id).order_by(Order.id)))
        assert {s.get(Order, i).status for i in ids} == {"oos_review"}
        return ids


def _last_event(url: str, order_id: str) -> tuple[str, str, str]:
    with session_scope(url, readonly=True) as s:
        last = s.scalars(
            select(LedgerEntry).where(LedgerEntry.order_id == order_id).order_by(LedgerEntry.seq.desc())
        ).first()
        return last.source_system, last.event_type, last.body


def test_release_under_exception_from_the_cli(db_url):
    (order,) = _out_of_specification(db_url, 1)
    _add_operator(db_url, "qa.lead", "release_under_exception")
    command = ["orders", "release-under-exception", order]

    wrong_code = _cli(*command, "--reason", "HOLD-CAUSE-CLEARED", *SIGN, url=db_url, password=PASSWORD)
    assert wrong_code.returncode == 1 and "QA-EXCEPTION-APPROVED" in wrong_code.stderr  # the codes it may take
    assert _last_event(db_url, order)[1] == EventType.PRODUCT_OOS.value

    signed = _cli(*command, "--reason", "QA-EXCEPTION-APPROVED", *SIGN, url=db_url, password=PASSWORD)
    assert signed.returncode == 0, signed.stderr
    assert "release_under_exception" in signed.stdout and "by qa.lead" in signed.stdout
    system, event_type, body = _last_event(db_url, order)
    assert (system, event_type) == ("cgthub", EventType.OOS_RELEASED_UNDER_EXCEPTION.value)
    assert '"signer":"qa.lead"' in body and '"reason_code":"QA-EXCEPTION-APPROVED"' in body
    with session_scope(db_url, readonly=True) as s:
        assert s.get(Order, order).status == "released"

    again = _cli(*command, "--reason", "QA-EXCEPTION-APPROVED", *SIGN, url=db_url, password=PASSWORD)
    assert again.returncode == 1 and "is not in OOS review" in again.stderr


def test_release_under_exception_over_the_api(api):
    first, second = _out_of_specification(api.database_url, 1, 2)
    with session_scope(api.database_url) as s:
        decisions.add_operator(s, "qa.lead", PASSWORD, ["release_under_exception"])
    operator = api.client(api.key("operate"))
    reader = api.client(api.key("status:read"))
    body = _body(meaning="approved", reason_code="QA-EXCEPTION-APPROVED", reason_text="QA assessed the deviation")

    not_operate = reader.post(f"/orders/{first}/release-under-exception", json=body)
    assert not_operate.status_code == 403
    wrong_code = operator.post(f"/orders/{first}/release-under-exception", json={**body, "reason_code": "FALSE-ALARM"})
    assert wrong_code.status_code == 422 and wrong_code.json()["error"]["code"] != "internal_error"
    released = operator.post(f"/orders/{first}/release-under-exception", json=body)
    assert released.status_code == 201, released.text
    assert released.json()["signer"] == "qa.lead" and released.json()["action"] == "release_under_exception"

    assert reader.get(f"/orders/{first}").json()["status"] == "released"
    assert reader.get(f"/orders/{second}").json()["status"] == "oos_review"  # only the order signed for
    again = operator.post(f"/orders/{first}/release-under-exception", json=body)
    assert again.status_code == 409
