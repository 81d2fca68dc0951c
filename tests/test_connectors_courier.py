"""Courier connector: signed webhooks, the tracking feed, idempotent bookings, over loopback."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
from sqlalchemy import func, select

from cgthub import alerts, ledger
from cgthub.store import session_scope
from cgthub.tables import Order, RawMessage
from connectors.common import breaker
from connectors.common.sandbox import FaultConfig, SandboxServer
from connectors.courier import sandbox as courier_sandbox
from connectors.courier import sync, webhook
from connectors.courier.signature import HEADER, sign
from tests.factories import din, happy_path

SECRET = "whsec-sandbox"


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


def _enrolled_and_collected(url, n=1):
    with session_scope(url) as s:
        ledger.append_many(s, happy_path(n)[:3])


def _leg(state, n=1):
    return state.shipments[f"SHP-{n}-OUT"]


def _book_outbound(server, n=1):
    answer = requests.post(
        f"{server.base_url}/v1/shipments",
        json={
            "shipmentId": f"SHP-{n}-OUT",
            "direction": "TO_MANUFACTURER",
            "reference": {"crmOrderId": f"CRM-{n:05d}"},
        },
        headers={"X-API-Key": "courier-key", "Idempotency-Key": f"book-{n}"},
        timeout=5,
    )
    assert answer.status_code == 200


def _event(server, status, when, **extra):
    body = {"status": status, "timestamp": when, **extra}
    answer = requests.post(f"{server.base_url}/sandbox/shipments/SHP-1-OUT/events", json=body, timeout=5)
    assert answer.status_code == 200, answer.text


def test_signed_webhooks_land_and_unsigned_ones_are_refused(db_url):
    _enrolled_and_collected(db_url)
    receiver = SandboxServer(webhook.create_app(secret=SECRET, database_url=db_url))
    app = courier_sandbox.create_app()
    with receiver, SandboxServer(app) as courier:
        requests.post(
            f"{courier.base_url}/sandbox/webhooks", json={"url": f"{receiver.base_url}/webhooks/courier"}, timeout=5
        )
        _book_outbound(courier)
        _event(courier, "PICKED_UP", "2026-03-09T14:00:00-05:00", contents={"din": din(1)})
        _event(
            courier,
            "TEMPERATURE_EXCURSION",
            "2026-03-10T02:00:00-05:00",
            excursion={"start": "2026-03-10T01:40:00-05:00", "extremeC": -131.5, "limitC": -150.0},
        )
        body = json.dumps({"eventId": "EVT-FORGED", "shipmentId": "SHP-1-OUT", "status": "DELIVERED"}).encode()
        forged = requests.post(
            f"{receiver.base_url}/webhooks/courier", data=body, headers={HEADER: sign("wrong-secret", body)}, timeout=5
        )
        unsigned = requests.post(f"{receiver.base_url}/webhooks/courier", data=body, timeout=5)
    assert app.sandbox_state.deliveries == [202, 202]
    assert forged.status_code == 401 and unsigned.status_code == 401
    with session_scope(db_url) as s:
        order = s.scalars(select(Order)).one()
        assert order.status == "in_transit_to_cmo"
        assert [a.kind for a in alerts.open_alerts(s)] == ["temperature_excursion"]
        assert s.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.system == "courier")) == 2


def test_feed_pull_is_incremental_and_survives_faults(db_url, monkeypatch):
    _enrolled_and_collected(db_url)
    app = courier_sandbox.create_app(
        faults=FaultConfig(error_rate=0.2, rate_limit_rate=0.1, duplicate_rate=0.5, reorder=True)
    )
    with SandboxServer(app) as courier:
        monkeypatch.setenv("AIRFLOW_CONN_COURIER_API", f"http://cgthub:courier-key@127.0.0.1:{courier.port}")
        _book_outbound(courier)
        _event(courier, "PICKED_UP", "2026-03-09T14:00:00-05:00")
        _event(courier, "IN_TRANSIT", "2026-03-09T19:10:00-05:00")
        first = sync.pull()
        _event(courier, "DELIVERED", "2026-03-10T09:30:00-05:00", receivedBy="CMO-EAST receiving")
        second = sync.pull()
    assert first.errors == [] and first.appended == 2
    assert second.appended == 1 and second.duplicates >= 0
    with session_scope(db_url) as s:
        assert s.scalars(select(Order.status)).one() == "received_at_cmo"


def test_booking_is_idempotent_and_only_for_statuses_that_need_a_courier(monkeypatch):
    app = courier_sandbox.create_app()
    with SandboxServer(app) as courier:
        monkeypatch.setenv("AIRFLOW_CONN_COURIER_API", f"http://cgthub:courier-key@127.0.0.1:{courier.port}")
        apheresis = (datetime.now(UTC) + timedelta(days=5)).astimezone(timezone(timedelta(hours=-5)))
        apheresis = apheresis.replace(hour=8, minute=0, second=0, microsecond=0)
        payload = {
            "order_id": "ORD-1",
            "status": "apheresis_scheduled",
            "scheduled": {"apheresis": apheresis.isoformat()},
            "refs": {"crm_order_id": "CRM-00001"},
            "site": "US-BOS-01",
            "cmo": "CMO-NJ",
            "idempotency_key": "courier:ORD-1:3",
        }
        first, again = sync.push(payload), sync.push({**payload, "idempotency_key": "courier:ORD-1:9"})
        assert first is not None and again is not None and first.payload == again.payload
        assert (first.system, first.kind) == ("courier", "booking")
        booked = json.loads(first.payload)
        assert booked["direction"] == "TO_MANUFACTURER" and booked["trackingNumber"].startswith("CRY")
        assert booked["pickup"] == {
            "location": "US-BOS-01",
            "windowStart": apheresis.replace(hour=12).isoformat(),
            "windowEnd": apheresis.replace(hour=20).isoformat(),
        }
        assert sync.push({**payload, "status": "manufacturing"}) is None
        past = (apheresis - timedelta(days=30)).isoformat()
        late = {**payload, "order_id": "ORD-2", "refs": {"crm_order_id": "CRM-00002"}, "scheduled": {"apheresis": past}}
        assert sync.push({**late, "stage": "received_at_cmo"}) is None  # the order is past that leg
        asked = datetime.now(UTC)
        booked_late = json.loads(sync.push(late).payload)  # its window closed: booked for the next pickup
        start, end = (datetime.fromisoformat(booked_late["pickup"][k]) for k in ("windowStart", "windowEnd"))
        assert asked - timedelta(seconds=5) <= start <= datetime.now(UTC) and end - start == timedelta(hours=8)
    assert len(app.sandbox_state.shipments) == 2
