"""Courier webhooks held while the release is not in force are applied when Airflow serves the webhook.

The receiver is mounted in Airflow's API server as the hub's plugin mounts it (Airflow runs no
mounted app's lifespan, so the receiver's own 30-second loop never runs there). A held payload
(503, archived) is applied by the `cgthub_courier_held` DAG (run with `dag.test()`) once the
release is in force again, once: not again by the receiver's own loop, the courier's resend or the
next run. Meanwhile the API's `/metrics` and `/health/ready` show what waits. On SQLite and
PostgreSQL, on a temporary copy of config/ and mappings/ (tests/test_release.py's hub).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cgthub import airflow_env, ledger
from cgthub.api import create_app
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, RawMessage
from connectors.courier import sandbox as courier_sandbox
from connectors.courier import webhook
from connectors.courier.signature import HEADER, sign
from tests import test_plugin, test_release
from tests.factories import din, happy_path
from tests.test_metrics import _samples
from tests.test_release import Hub
from tests.test_release_guard import SECRET, Drift, _courier_raw, _in_force, _shipment_events

pytestmark = pytest.mark.slow

hub = test_release.hub
airflow_api = test_plugin.airflow_api  # Airflow's API server, the plugin mounted as `airflow api-server` does
MOUNTED = "/cgthub/courier/webhooks/courier"  # where the plugin mounts the receiver in Airflow's API server


@pytest.fixture(scope="module")
def held_dag() -> Any:
    airflow_env.migrate_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER / "cgthub_courier_held.py"))
    assert bag.import_errors == {}
    return bag.dags["cgthub_courier_held"]


class Courier:
    """The courier's sandbox makes each tracking event as the courier sends it; it is signed and
    posted to the receiver inside Airflow's API server."""

    def __init__(self, airflow_api: TestClient) -> None:
        self.airflow_api = airflow_api
        self.sandbox = TestClient(courier_sandbox.create_app())
        booked = self.sandbox.post(
            "/v1/shipments",
            json={"shipmentId": "SHP-1-OUT", "direction": "TO_MANUFACTURER", "reference": {"crmOrderId": "CRM-00001"}},
            headers={"X-API-Key": "courier-key", "Idempotency-Key": "book-1"},
        )
        assert booked.status_code == 200, booked.text

    def event(self, status: str, when: str, **extra: Any) -> dict[str, Any]:
        answer = self.sandbox.post(
            "/sandbox/shipments/SHP-1-OUT/events", json={"status": status, "timestamp": when, **extra}
        )
        assert answer.status_code == 200, answer.text
        made: dict[str, Any] = answer.json()
        return made

    def send(self, event: dict[str, Any]) -> Any:
        body = json.dumps(event).encode()
        headers = {HEADER: sign(SECRET, body), "content-type": "application/json"}
        return self.airflow_api.post(MOUNTED, content=body, headers=headers)


@pytest.fixture
def courier(hub: Hub, airflow_api: TestClient, monkeypatch: pytest.MonkeyPatch) -> Courier:
    """A hub in production whose release is in force, an order the courier picks up, and its webhook
    secret in the environment of Airflow's API server."""
    monkeypatch.setenv("CGTHUB_COURIER_WEBHOOK_SECRET", SECRET)
    _in_force(hub)
    with session_scope(hub.url) as s:
        ledger.append_many(s, happy_path(1)[:3])
    return Courier(airflow_api)


def _scrape(url: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], dict[str, Any]]:
    """The API's /metrics and /health/ready, as Prometheus and a probe read them."""
    with TestClient(create_app(url)) as api:
        return _samples(api.get("/metrics").text), api.get("/health/ready").json()


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_a_held_webhook_is_applied_by_the_dag_once_when_airflow_serves_the_webhook(
    hub: Hub, courier: Courier, held_dag: Any
) -> None:
    picked = courier.event("PICKED_UP", "2026-03-09T14:00:00-05:00", contents={"din": din(1)})
    assert courier.send(picked).status_code == 202 and _shipment_events(hub.url) == 1

    drift = Drift(hub)
    drift.edit()  # the release is no longer in force: the courier's last two scans are held
    in_transit = courier.event("IN_TRANSIT", "2026-03-09T18:00:00-05:00")
    delivered = courier.event("DELIVERED", "2026-03-10T09:00:00-05:00", receivedBy="cmo")
    for body in (in_transit, delivered):
        answer = courier.send(body)
        assert answer.status_code == 503 and answer.json()["archived"] is True
        assert "SHP-1-OUT" not in answer.text and "CRM-00001" not in answer.text
    assert _courier_raw(hub.url, "received") == 2 and _shipment_events(hub.url) == 1

    refused = airflow_env.run_dag_test(held_dag)  # still drifted: the run fails, nothing is applied
    assert refused.state == "failed" and _states(refused)["apply_held"] == "failed"
    assert _courier_raw(hub.url, "received") == 2 and _shipment_events(hub.url) == 1

    with session_scope(hub.url) as s:  # the courier sends nothing more for 20 minutes
        for row in s.scalars(select(RawMessage).where(RawMessage.status == "received")):
            row.received_at = row.received_at - timedelta(minutes=20)
    series, ready = _scrape(hub.url)
    assert series[("cgthub_held_payloads", (("partner", "courier"),))] == 2
    assert 1200 <= series[("cgthub_held_payload_oldest_age_seconds", (("partner", "courier"),))] < 1200 + 300
    assert ready["status"] == "degraded" and ready["held"]["status"] == "behind"
    assert ready["held"]["waiting"] == {"courier": 2} and ready["held"]["oldest_seconds"] >= 1200

    drift.restore()  # in force again; no webhook comes, Airflow runs the DAG on its schedule
    assert held_dag.timetable.expression == "*/5 * * * *"  # every 5 minutes, whatever serves the webhook
    applied = airflow_env.run_dag_test(held_dag)
    assert applied.state == "success"
    assert _states(applied) == {"apply_held": "success", "landed_new_events": "success", "announce": "success"}
    assert _courier_raw(hub.url, "received") == 0 and _shipment_events(hub.url) == 3

    # applied once: not by the receiver's own loop (as the courier-webhook service runs it), not by
    # the courier's resend of a held scan, not by the next run
    with TestClient(webhook.create_app(secret=SECRET, database_url=hub.url, drain_every=0.05)):
        time.sleep(0.5)
    assert webhook.drain(hub.url) == 0
    resent = courier.send(in_transit)
    assert resent.status_code == 202 and resent.json()["duplicate"] is True
    again = airflow_env.run_dag_test(held_dag)
    assert again.state == "success" and _states(again)["announce"] == "skipped"
    assert _shipment_events(hub.url) == 3

    series, ready = _scrape(hub.url)
    assert ("cgthub_held_payloads", (("partner", "courier"),)) not in series
    assert ready["held"] == {"status": "ok", "waiting": {}, "oldest_seconds": 0.0}


def test_the_dag_and_the_receivers_own_loop_at_once_apply_each_held_payload_once(hub: Hub, courier: Courier) -> None:
    picked = courier.event("PICKED_UP", "2026-03-09T14:00:00-05:00", contents={"din": din(1)})
    assert courier.send(picked).status_code == 202
    drift = Drift(hub)
    drift.edit()
    scans = [courier.event("IN_TRANSIT", f"2026-03-09T{10 + n // 60:02d}:{n % 60:02d}:00-05:00") for n in range(40)]
    assert all(courier.send(scan).status_code == 503 for scan in scans)
    assert _courier_raw(hub.url, "received") == 40
    drift.restore()

    applied: dict[str, int] = {}

    def dag_task() -> None:  # what the DAG's task calls, in small batches to interleave with the loop
        applied["dag"] = webhook.apply_held(limit=5).payloads

    def receivers_loop() -> None:
        applied["loop"] = webhook.drain(hub.url, limit=5)

    threads = [threading.Thread(target=dag_task), threading.Thread(target=receivers_loop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert applied["dag"] + applied["loop"] == 40, applied
    assert _courier_raw(hub.url, "received") == 0 and _courier_raw(hub.url, "processed") == 41
    with session_scope(hub.url) as s:
        sources = s.scalars(select(LedgerEntry.raw_id).where(LedgerEntry.event_type.like("shipment.%"))).all()
    assert len(sources) == len(set(sources)) == 41  # one ledger entry per scan: none applied twice
