"""Courier booking from the outbound DAG, and the courier's signed webhooks where they really run.

The hub books a leg when the apheresis is scheduled (site -> CMO) and when the product is released
(CMO -> site), over HTTP to the courier sandbox, through the outbox; the courier's answer (shipment
id, air waybill) is archived and mapped into the order, so a tracking event naming only that
shipment finds the order. The webhook receiver runs as `python -m cgthub.services courier-webhook`
and inside Airflow's API server (the plugin), signature checked in both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from cgthub import airflow_env, ledger, outbound, outbox
from cgthub.devtools.samples import T0, event, happy_path
from cgthub.lifecycle import OrderStatus
from cgthub.model import EventType
from cgthub.settings import get_settings
from cgthub.store import session_scope
from cgthub.tables import Order, QuarantineEntry, RawMessage
from connectors.common import breaker
from connectors.common.sandbox import SandboxServer
from connectors.courier import sandbox as courier_sandbox
from connectors.courier.signature import HEADER, sign

SECRET = "whsec-sandbox"  # the courier sandbox signs with it
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


@pytest.fixture
def courier(monkeypatch, tmp_path):
    """The courier sandbox on loopback; the courier reached through its connector, every other
    partner through the file exchange (in this test's own folder)."""
    app = courier_sandbox.create_app()
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_COURIER_API", f"http://cgthub:courier-key@127.0.0.1:{server.port}")
        monkeypatch.setenv("CGTHUB_CONNECTORS", "courier")
        monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
        get_settings.cache_clear()
        server.state = app.sandbox_state
        yield server
    get_settings.cache_clear()


def _apply(url: str, events) -> None:
    for item in events:  # one transaction each, as the connectors commit them: every step is a change
        with session_scope(url) as session:
            ledger.append_many(session, [item])


def _route_and_book(url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:  # on PostgreSQL the change feed serves a change once older transactions ended
        with session_scope(url) as session:
            routed = outbound.route(session)
        if routed.get("courier") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return outbound.drain("courier", database_url=url)


def _order(url: str) -> dict:
    with session_scope(url, readonly=True) as session:
        return session.scalars(select(Order.projection)).one()


def _orders(url: str) -> dict[str, dict]:
    with session_scope(url, readonly=True) as session:
        return {p["refs"]["crm_order_id"]: p for p in session.scalars(select(Order.projection))}


def _soon(n: int):
    """Order n's life cycle with its apheresis booked for six days from now (its pickup ahead)."""
    return happy_path(n, start=datetime.now(UTC) - DAY)


def _track(server, shipment_id: str, status: str, at: datetime, **extra) -> None:
    """The courier's staff record a step; `reference: {}` leaves the order's reference out of the event."""
    body = {"status": status, "timestamp": at.isoformat(), "reference": {}, **extra}
    answer = httpx.post(f"{server.base_url}/sandbox/shipments/{shipment_id}/events", json=body, timeout=5)
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def outbound_dag():
    airflow_env.migrate_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER / "cgthub_outbound.py"))
    assert not bag.import_errors
    return bag.dags["cgthub_outbound"]


@pytest.mark.slow
def test_the_outbound_dag_books_each_leg_with_the_schedules_pickup_window(db_url, courier, outbound_dag):
    from connectors.courier import sync

    now = datetime.now(UTC).replace(microsecond=0)
    scheduled = happy_path(1, start=now - DAY)  # the apheresis is booked for six days from now
    released = happy_path(2, start=now - 24 * DAY - HOUR)  # its product was released an hour ago
    _apply(db_url, scheduled[:2] + released[:3] + released[5:9])
    assert airflow_env.run_dag_test(outbound_dag).state == "success"

    out, back = sorted(courier.state.shipments.values(), key=lambda s: s["direction"])
    assert len(courier.state.shipments) == 2  # order 2 is past its leg to the CMO (released): not booked
    apheresis, release = now + 6 * DAY, now - HOUR
    assert out["reference"]["crmOrderId"] == "CRM-00001" and back["reference"]["crmOrderId"] == "CRM-00002"
    assert (out["pickup"]["location"], out["delivery"]["location"]) == ("US-SITE-1", "CMO-EAST")
    assert datetime.fromisoformat(out["pickup"]["windowStart"]) == apheresis + 4 * HOUR
    assert datetime.fromisoformat(out["pickup"]["windowEnd"]) == apheresis + 12 * HOUR
    assert (back["pickup"]["location"], back["delivery"]["location"]) == ("CMO-EAST", "US-SITE-1")
    assert datetime.fromisoformat(back["pickup"]["windowStart"]) == release + 12 * HOUR
    assert datetime.fromisoformat(back["pickup"]["windowEnd"]) == release + 36 * HOUR  # README: 12 to 36 hours
    orders = _orders(db_url)
    assert out["reference"]["hubOrderId"] == orders["CRM-00001"]["order_id"]
    assert orders["CRM-00001"]["refs"]["courier_shipment_ids"] == [out["shipmentId"]]  # the booking's id
    assert back["shipmentId"] in orders["CRM-00002"]["refs"]["courier_shipment_ids"]
    assert orders["CRM-00002"]["shipments"][back["shipmentId"]]["tracking_id"] == back["trackingNumber"]
    with session_scope(db_url, readonly=True) as session:
        kinds = session.execute(select(RawMessage.kind, RawMessage.channel).where(RawMessage.system == "courier"))
        assert kinds.all() == [("booking", "rest")] * 2  # the courier's answers, archived as received

    # the courier's tracking names the shipment only: the booked id finds the order
    _track(courier, back["shipmentId"], "PICKED_UP", release + DAY)
    assert sync.pull().appended == 1
    assert _orders(db_url)["CRM-00002"]["status"] == OrderStatus.IN_TRANSIT_TO_SITE.value


def test_a_leg_is_booked_once_however_often_the_order_passes_its_status(db_url, courier):
    story = _soon(2)
    hold = event(EventType.ORDER_ON_HOLD, 2, at=story[1].occurred_at + HOUR, reason="payer review")
    lifted = event(EventType.ORDER_HOLD_RELEASED, 2, at=story[1].occurred_at + 2 * HOUR)
    _apply(db_url, story[:2])
    assert _route_and_book(db_url)["delivered"] == 1
    _apply(db_url, [hold, lifted])  # back to apheresis_scheduled: told again, booked once
    second = _route_and_book(db_url)
    assert second["delivered"] == 1 and second["failed"] == 0
    assert len(courier.state.shipments) == 1
    assert len(_order(db_url)["refs"]["courier_shipment_ids"]) == 1
    with session_scope(db_url, readonly=True) as session:
        booking = session.scalars(select(RawMessage).where(RawMessage.kind == "booking")).one()
        assert booking.receive_count == 2  # the same answer twice: archived once, applied once


def test_a_courier_outage_is_retried_and_an_order_with_no_date_ends_a_dead_letter(db_url, courier):
    _apply(db_url, _soon(3)[:2])
    courier.stop()  # the courier's API is down
    down = _route_and_book(db_url)
    assert (down["delivered"], down["failed"]) == (0, 1)
    with session_scope(db_url) as session:
        (waiting,) = outbox.messages(session, destination_kind="courier")
        assert waiting.status == "failed" and waiting.next_attempt_at > datetime.now(waiting.next_attempt_at.tzinfo)
        session.execute(update(outbox.OutboxMessage).values(next_attempt_at=waiting.created_at))  # time passes
    breaker._breakers.clear()
    with SandboxServer(courier.server.config.app, port=courier.port):  # back up on the same port
        assert outbound.drain("courier", database_url=db_url)["delivered"] == 1
    assert len(_order(db_url)["refs"]["courier_shipment_ids"]) == 1

    undated = event(EventType.APHERESIS_SCHEDULED, 4, at=T0 + DAY)  # no date: nothing to collect after
    _apply(db_url, [happy_path(4)[0], undated])
    first = _route_and_book(db_url)
    assert first["failed"] == 1
    for _ in range(outbox.DEFAULT_MAX_ATTEMPTS - 1):
        with session_scope(db_url) as session:
            session.execute(update(outbox.OutboxMessage).values(next_attempt_at=outbox.OutboxMessage.created_at))
        outbound.drain("courier", database_url=db_url)
    with session_scope(db_url, readonly=True) as session:
        dead = outbox.messages(session, destination_kind="courier", status=outbox.OutboxStatus.DEAD)
        assert len(dead) == 1 and "no booked apheresis date" in (dead[0].last_error or "")
    assert len(courier.state.shipments) == 1  # nothing was booked for it


def test_the_sandbox_refuses_a_pickup_window_that_ends_before_it_starts(courier):
    from connectors.common.http import PartnerError
    from connectors.courier.sync import client

    body = {
        "direction": "TO_SITE",
        "reference": {"crmOrderId": "CRM-00009"},
        "pickup": {"windowStart": "2026-03-10T12:00:00+00:00", "windowEnd": "2026-03-10T08:00:00+00:00"},
    }
    with pytest.raises(PartnerError, match="422"):
        client().book(body, "booking:x:TO_SITE")
    assert courier.state.shipments == {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_service(db_url: str, port: int, secret: str = SECRET) -> subprocess.Popen:
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url, "CGTHUB_COURIER_WEBHOOK_SECRET": secret}
    command = [sys.executable, "-m", "cgthub.services", "courier-webhook", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the courier-webhook service did not become ready")


@pytest.mark.slow
def test_the_courier_webhook_service_takes_the_couriers_signed_events_for_a_booked_shipment(db_url, courier):
    story = _soon(5)
    _apply(db_url, story[:3])  # enrolled, apheresis booked, collected
    _route_and_book(db_url)
    (shipment,) = courier.state.shipments
    port = _free_port()
    service = _start_service(db_url, port)
    try:
        _wait_ready(service, port)
        receiver = f"http://127.0.0.1:{port}/webhooks/courier"
        httpx.post(f"{courier.base_url}/sandbox/webhooks", json={"url": receiver}, timeout=5)
        _track(courier, shipment, "PICKED_UP", story[2].occurred_at + 5 * HOUR)
        body = b'{"eventId": "EVT-FORGED", "shipmentId": "' + shipment.encode() + b'", "status": "DELIVERED"}'
        forged = httpx.post(receiver, content=body, headers={HEADER: sign("not-the-secret", body)}, timeout=5)
        unsigned = httpx.post(receiver, content=body, timeout=5)
    finally:
        service.terminate()
        service.wait(30)
    assert courier.state.deliveries == [202]  # the courier's signed event, taken
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert _order(db_url)["status"] == OrderStatus.IN_TRANSIT_TO_CMO.value


@pytest.mark.slow
def test_the_courier_webhook_service_will_not_start_on_a_database_without_the_hubs_schema(tmp_path):
    empty = tmp_path / "empty.db"
    socket_free = _free_port()
    import sqlite3

    sqlite3.connect(empty).close()
    service = _start_service(f"sqlite:///{empty}", socket_free)
    assert service.wait(60) == 2
    assert "cgthub db upgrade" in service.stderr.read().decode()


def test_the_airflow_api_server_serves_the_couriers_signed_webhooks(db_url, monkeypatch):
    """What `airflow api-server` mounts from the plugin: signed events in, unsigned refused, and
    nothing taken while no secret is configured."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    _apply(db_url, happy_path(6)[:3])
    body = (
        b'{"eventId": "EVT-7001", "shipmentId": "SHP-6-OUT", "status": "PICKED_UP", "direction": "TO_MANUFACTURER",'
        b' "timestamp": "2026-03-09T14:00:00-05:00", "reference": {"crmOrderId": "CRM-00006"}}'
    )
    path = "/cgthub/courier/webhooks/courier"
    with TestClient(create_app(apps="core")) as airflow:
        monkeypatch.setenv("CGTHUB_COURIER_WEBHOOK_SECRET", "")
        get_settings.cache_clear()
        unconfigured = airflow.post(path, content=body, headers={HEADER: sign(SECRET, body)})
        monkeypatch.setenv("CGTHUB_COURIER_WEBHOOK_SECRET", SECRET)
        get_settings.cache_clear()
        unsigned = airflow.post(path, content=body)
        signed = airflow.post(path, content=body, headers={HEADER: sign(SECRET, body)})
    assert unconfigured.status_code == 503 and unsigned.status_code == 401
    assert signed.status_code == 202 and signed.json()["appended"] == 1
    assert _order(db_url)["status"] == OrderStatus.IN_TRANSIT_TO_CMO.value
    with session_scope(db_url, readonly=True) as session:
        assert session.scalars(select(QuarantineEntry)).all() == []
        assert session.scalars(select(RawMessage.channel)).all() == ["webhook"]
