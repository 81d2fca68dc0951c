"""The webhook delivery loop's heartbeat, seen over HTTP as a probe and Prometheus see it.

The loop is the real one (`webhooks.run_forever`, as `cgthub api serve` runs it in a thread), on each
backend; the API is served by uvicorn (tests.api_server). While the loop goes round, /health/ready
says `ok` and /metrics shows a fresh beat; once it stops, its last beat grows older than the age the
loop declared, and /health/ready says `down` (the hub `degraded`, still ready: the API serves orders
without it).
"""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cgthub import heartbeat
from cgthub.api import webhooks
from cgthub.store import session_scope
from tests import api_server

api = api_server.api

INTERVAL = 0.1
DOWN_AFTER = 1.0


def _beat_age(client: httpx.Client) -> float | None:
    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    for family in text_string_to_metric_families(scraped.text):
        for sample in family.samples:
            if sample.name == "cgthub_heartbeat_age_seconds" and sample.labels == {"service": "webhook-delivery"}:
                return float(sample.value)
    return None


def _delivery(client: httpx.Client) -> tuple[int, str, dict]:
    answer = client.get("/health/ready")
    state = answer.json()
    return answer.status_code, state["status"], state["delivery"]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def test_ready_reports_the_delivery_loop_down_once_its_heartbeat_is_stale(api, monkeypatch):
    monkeypatch.delenv("CGTHUB_MLLP_LISTENER", raising=False)
    client = api.client()  # no key: probes and Prometheus hold none
    # Before any loop ran on this database: judged by its work alone, no beat to show.
    status, overall, delivery = _delivery(client)
    assert (status, overall, delivery["status"]) == (200, "ok", "ok")
    assert "last_beat_seconds" not in delivery and _beat_age(client) is None

    stop = threading.Event()
    loop = threading.Thread(
        target=webhooks.run_forever,
        args=(api.database_url, stop),
        kwargs={"interval": INTERVAL, "stale_after": DOWN_AFTER},
        daemon=True,
    )
    loop.start()
    try:
        _wait(lambda: _beat_age(client) is not None, 20, "the loop never beat")
        time.sleep(3 * DOWN_AFTER)  # longer than a beat may age: the loop keeps it fresh
        status, overall, delivery = _delivery(client)
        assert (status, overall, delivery["status"]) == (200, "ok", "ok"), delivery
        assert delivery["last_beat_seconds"] < DOWN_AFTER and delivery["down_after_seconds"] == DOWN_AFTER
        assert _beat_age(client) < DOWN_AFTER
        with session_scope(api.database_url, readonly=True) as session:
            beat = heartbeat.last(session, heartbeat.WEBHOOK_DELIVERY)
            assert beat is not None and beat.interval_seconds == INTERVAL
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()

    # The loop has stopped: after DOWN_AFTER its last beat is stale.
    _wait(lambda: _delivery(client)[2]["status"] == "down", 10, "never reported down")
    status, overall, delivery = _delivery(client)
    assert (status, overall) == (200, "degraded"), delivery  # still ready: orders are served without it
    assert delivery["last_beat_seconds"] >= DOWN_AFTER  # shown to a tenth of a second
    assert _beat_age(client) > DOWN_AFTER

    # Started again, it is `ok` at its next beat.
    stop = threading.Event()
    again = threading.Thread(
        target=webhooks.run_forever, args=(api.database_url, stop), kwargs={"interval": INTERVAL}, daemon=True
    )
    again.start()
    try:
        _wait(lambda: _delivery(client)[2]["status"] == "ok", 20, "not ok after a restart")
        assert _delivery(client)[2]["down_after_seconds"] == webhooks.STALE_AFTER_FLOOR  # the default
    finally:
        stop.set()
        again.join(timeout=10)


def test_replicas_share_one_heartbeat_row(db_url):
    """Two loops on one database (the API's own loop beside compose's service): one row, the newest beat."""
    heartbeat.beat(db_url, heartbeat.WEBHOOK_DELIVERY, interval=1.0, stale_after=30.0)
    heartbeat.beat(db_url, heartbeat.WEBHOOK_DELIVERY, interval=2.0, stale_after=30.0)
    with session_scope(db_url, readonly=True) as session:
        rows = session.query(heartbeat.Heartbeat).all()
    assert [(r.service, r.interval_seconds) for r in rows] == [("webhook-delivery", 2.0)]
