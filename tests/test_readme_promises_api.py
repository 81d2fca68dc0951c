"""README, Order transparency API and Monitoring, over HTTP against a real uvicorn server on both
databases:

- "Errors are always {"error": {"code", "message", "details"}}", for a failure nobody foresaw too
  (500 `internal_error`, the exception's words not echoed), and that request still "lands in
  `api_access_log`";
- "a running server honours a revocation within 2 s", with the key cache `create_app` makes by
  default (what `cgthub api serve` and the plugin run), not the short one the other API tests use;
- "`/metrics` and `/health` need no key: they carry counts, never order data".
"""

from __future__ import annotations

import time

from sqlalchemy import select

from cgthub import ledger
from cgthub.api import create_app
from cgthub.api.auth import create_key, revoke
from cgthub.api.tables import ApiAccess
from cgthub.store import session_scope
from tests import api_server
from tests.api_server import build_orders
from tests.factories import PATIENTS, coi, din, happy_path

api = api_server.api  # the running-server fixture


def test_an_unforeseen_failure_answers_the_uniform_error_and_lands_in_the_access_log(api, monkeypatch):
    (order_id,) = build_orders(api.database_url, [happy_path(1)[:9]])

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError(f"bundle failed for {PATIENTS[0]['mrn']} at /srv/cgthub/fhir.py")

    monkeypatch.setattr("cgthub.api.fhir.build_bundle", broken)
    token = api.key("custody:read")
    answer = api.client(token).get(f"/orders/{order_id}/fhir")
    assert answer.status_code == 500
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "internal_error" and body["error"]["message"].strip()
    assert PATIENTS[0]["mrn"] not in answer.text and "/srv/cgthub" not in answer.text
    assert "Traceback" not in answer.text and "RuntimeError" not in answer.text
    api.flush_audit()
    with session_scope(api.database_url) as session:
        rows = session.scalars(select(ApiAccess).where(ApiAccess.status_code == 500)).all()
    assert [(r.key_id, r.route, r.order_id) for r in rows] == [
        (token.split("_")[1], "/orders/{order_id}/fhir", order_id)
    ]


def test_a_running_server_honours_a_revocation_within_two_seconds(api):
    served = create_app(api.database_url)  # as `cgthub api serve` and the Airflow plugin build it
    api.app.state.keys = served.state.keys  # the running server now caches keys as they do
    served.state.audit.close()
    with session_scope(api.database_url) as session:
        _, token = create_key(session, name="dashboard", scopes=("status:read",), all_data=True)
    key_id = token.split("_")[1]
    client = api.client(token)
    assert client.get("/orders").status_code == 200  # the key is now in the server's cache
    with session_scope(api.database_url) as session:
        assert revoke(session, key_id)
    time.sleep(2.05)  # a request the server reads 2 s after the revocation is refused, however slow the machine
    assert client.get("/orders").status_code == 401


def test_metrics_and_health_need_no_key_and_carry_no_order_data(api):
    events = happy_path(1)[:9]
    (order_id,) = build_orders(api.database_url, [events])
    with session_scope(api.database_url) as session:  # a second, unmatched order opens quarantine too
        ledger.append(session, happy_path(2)[2])
    anonymous = api.client()
    said = ""
    for path in ("/metrics", "/health", "/health/ready"):
        answer = anonymous.get(path)
        assert answer.status_code == 200, (path, answer.text)
        said += answer.text
    assert "cgthub_quarantine_open" in said  # the counts are there
    for order_data in (order_id, "CRM-00001", "CRM-00002", coi(1), din(1), din(2), "SHP-1-OUT"):
        assert order_data not in said, order_data
    for patient in PATIENTS:
        assert patient["mrn"] not in said
