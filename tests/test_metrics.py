"""Prometheus metrics and health, scraped as Prometheus and compose would after a small story.

The listener runs as `cgthub hl7 listen --metrics-port` in a subprocess and receives HL7 over a real
loopback socket; the API is served by uvicorn (tests.api_server) and scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgthub import ledger, outbox
from cgthub.alerts import raise_alert
from cgthub.api import create_app
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.store import session_scope
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from tests import api_server
from tests.factories import enrolment
from tests.test_mapping_engine import _crm as _crm_record

api = api_server.api

FIXTURES = Path(__file__).resolve().parent.parent / "mappings" / "hl7"
ORM = (FIXTURES / "ORM_O01" / "fixtures" / "new_apheresis.hl7").read_bytes()
SIU = (FIXTURES / "SIU_S12" / "fixtures" / "apheresis_booked.hl7").read_bytes()
UNKNOWN_ORDER = (
    ORM.replace(b"CRM-00001", b"CRM-99999")
    .replace(b"PL-1001", b"PL-9999")
    .replace(b"BOS0000101", b"B2")
    .replace(b"CHW123426000001", b"CHW999999999999")
)
NO_MSH = b"PID|1||MRN48213377^^^US-BOS-01^MR||Smithson^Johanna"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class ListenerProcess:
    """`cgthub hl7 listen` as the mllp-listener container runs it, with its metrics port."""

    def __init__(self, database_url: str, *options: str) -> None:
        self.port, self.metrics_port = _free_port(), _free_port()
        cgthub = str(Path(sys.executable).parent / "cgthub")
        command = [cgthub, "hl7", "listen", "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        command += options
        env = {**os.environ, "CGTHUB_DATABASE_URL": database_url}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url("/health/ready"), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.process.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        self.stop()
        pytest.fail("the listener did not become ready")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def send(self, *messages: bytes) -> list[bytes]:
        """One connection, each message waiting for its ACK, as a hospital interface sends."""
        acks = []
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            for message in messages:
                sock.sendall(frame(message))
                decoder, answer = FrameDecoder(), []
                while not answer:
                    answer = list(decoder.feed(sock.recv(65536)))
                acks.append(answer[0])
        return acks

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _story(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What the database-side gauges report: an outbox with a backlog and a dead letter, a real CRM
    pull over HTTP from its sandbox whose newest record changed an hour ago, and an open alert.
    Returns the CRM stream's name."""
    now = datetime.now(UTC)
    with session_scope(database_url) as session:
        for n in range(3):
            outbox.enqueue(session, outbox.Destination("webhook", "sub-1"), f"change-{n}", {"n": n})
        dead = outbox.enqueue(session, outbox.Destination("crm", "crm"), "crm-1", {"n": 1}, max_attempts=1)
        outbox.mark_failed(session, dead, "HTTP 500")
        raise_alert(session, kind="partner_down", message="CRM unreachable", dedupe_key="crm-down")
    crm = crm_sandbox.create_app()
    with SandboxServer(crm) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        record = json.loads(_crm_record(7))
        crm.sandbox_state.upsert(record, modified_at=now - timedelta(hours=1))
        report = crm_sync.pull(database_url=database_url)
    assert report.appended == 1 and report.errors == [], report
    return report.stream


@pytest.mark.slow
def test_listener_and_api_metrics_after_a_story(db_url, api, monkeypatch):
    with session_scope(db_url) as session:
        ledger.append(session, enrolment(1))
    monkeypatch.setenv("CGTHUB_MLLP_MAX_CONNECTIONS_PER_ADDRESS", "5")
    listener = ListenerProcess(db_url, "--max-connections", "9", "--max-in-flight", "4")
    try:
        acks = listener.send(ORM, SIU, UNKNOWN_ORDER, NO_MSH)
        assert [ack_code(a) for a in acks] == ["AA", "AA", "AE", "AR"]
        scraped = httpx.get(listener.url("/metrics"), timeout=5)
        health = httpx.get(listener.url("/health/ready"), timeout=5)
    finally:
        listener.stop()
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    series = _samples(scraped.text)
    assert series[("cgthub_hl7_messages_received_total", ())] == 4
    assert series[("cgthub_hl7_acks_total", (("code", "AA"),))] == 2
    assert series[("cgthub_hl7_acks_total", (("code", "AE"),))] == 1
    assert series[("cgthub_hl7_acks_total", (("code", "AR"),))] == 1
    assert series[("cgthub_hl7_ack_latency_seconds_count", ())] == 4
    assert 0 < series[("cgthub_hl7_ack_latency_seconds_sum", ())] < 20
    assert series[("cgthub_hl7_ack_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert health.status_code == 200
    state = health.json()
    assert state["listener"]["status"] == "ok" and state["database"]["status"] == "ok"
    # what the operator set is in force
    assert state["limits"] == {"max_connections": 9, "max_in_flight": 4, "max_connections_per_address": 5}
    assert "Smithson" not in scraped.text + health.text

    stream = _story(db_url, monkeypatch)
    client = api.client()  # no key: Prometheus and probes do not hold API keys
    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    series = _samples(scraped.text)
    assert series[("cgthub_database_up", ())] == 1
    by_stage = {dict(labels)["stage"]: v for (name, labels), v in series.items() if name == "cgthub_quarantine_open"}
    assert sum(by_stage.values()) == 2, by_stage  # the AE (no order matches) and the AR (no MSH)
    assert series[("cgthub_outbox_backlog", (("partner", "webhook"),))] == 3
    assert series[("cgthub_outbox_dead", (("partner", "crm"),))] == 1
    assert series[("cgthub_outbox_dead", (("partner", "webhook"),))] == 0
    crm_stream = (("partner", "crm"), ("stream", stream))
    assert 3600 <= series[("cgthub_partner_lag_seconds", crm_stream)] < 3600 + 120
    assert 0 < series[("cgthub_partner_sync_duration_seconds", crm_stream)] < 30  # the pull's own time
    assert 0 <= series[("cgthub_partner_last_sync_age_seconds", crm_stream)] < 120
    assert series[("cgthub_alerts_open", (("kind", "partner_down"),))] == 1

    ready = client.get("/health/ready")
    assert ready.status_code == 200
    state = ready.json()
    assert state["database"]["status"] == "ok"
    assert state["delivery"] == {
        "status": "ok",
        "due": 3,
        "oldest_due_seconds": state["delivery"]["oldest_due_seconds"],
        "dead": 0,
    }
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_answers_503_when_the_database_is_unreachable(tmp_path):
    from fastapi.testclient import TestClient

    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    with TestClient(create_app(unreachable)) as client:
        ready = client.get("/health/ready")
        scraped = client.get("/metrics")
    assert ready.status_code == 503
    assert ready.json()["database"]["status"] == "unreachable" and ready.json()["status"] == "unavailable"
    assert scraped.status_code == 200
    assert _samples(scraped.text)[("cgthub_database_up", ())] == 0
    assert json.dumps(ready.json()).find("nobody") == -1  # no connection string in the answer


def test_ready_reports_each_component_and_sees_the_listener_and_the_delivery_loop_fail(db_url, monkeypatch):
    """/health/ready names each component's state: a listener that stops accepting and a delivery
    loop that leaves a due webhook waiting make the hub `degraded` (still ready: the API serves
    orders without them); the database down makes it unready (the test above)."""
    from fastapi.testclient import TestClient

    def ready() -> tuple[int, dict]:
        with TestClient(create_app(db_url)) as client:
            answer = client.get("/health/ready")
        return answer.status_code, answer.json()

    with socket.socket() as accepting:
        accepting.bind(("127.0.0.1", 0))
        accepting.listen()
        monkeypatch.setenv("CGTHUB_MLLP_LISTENER", f"127.0.0.1:{accepting.getsockname()[1]}")
        status, state = ready()
    assert status == 200 and state["status"] == "ok", state
    assert [state[c]["status"] for c in ("database", "listener", "delivery")] == ["ok", "ok", "ok"]

    monkeypatch.setenv("CGTHUB_MLLP_LISTENER", f"127.0.0.1:{_free_port()}")  # nothing accepts there
    status, state = ready()
    assert status == 200 and state["status"] == "degraded"
    assert state["listener"]["status"] == "unreachable" and state["delivery"]["status"] == "ok"

    monkeypatch.delenv("CGTHUB_MLLP_LISTENER")
    with session_scope(db_url) as session:  # a webhook due ten minutes ago that no loop delivered
        waiting = outbox.enqueue(session, outbox.Destination("webhook", "sub-1"), "change-1", {"n": 1})
        waiting.next_attempt_at = datetime.now(UTC) - timedelta(minutes=10)
    status, state = ready()
    assert status == 200 and state["status"] == "degraded"
    assert state["listener"] == {"status": "not configured"}
    assert state["delivery"]["status"] == "behind" and state["delivery"]["due"] == 1
    assert 600 <= state["delivery"]["oldest_due_seconds"] < 720


def test_alert_rules_name_only_series_the_hub_exports():
    import re

    import yaml

    from cgthub import health, metrics

    rules = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" / "alert-rules.yml").read_text())
    exprs = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    source = (Path(metrics.__file__)).read_text()
    exported = set(re.findall(r'"(cgthub_\w+)"', source))
    for alert, expr in exprs.items():
        for name in re.findall(r"\bcgthub_\w+", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert base in exported, f"{alert}: {name} is not a series the hub exports"
    assert "delta(cgthub_quarantine_open" in exprs["CgthubQuarantineGrowing"]
    assert "cgthub_partner_lag_seconds" in exprs["CgthubPartnerLagHigh"]
    assert exprs["CgthubDeadLetters"].endswith("(cgthub_outbox_dead) > 0")
    assert "cgthub_heartbeat_age_seconds" in exprs["CgthubDeliveryLoopSilent"]
    # per partner, the oldest held payload over the age /health/ready calls behind (scraped and
    # evaluated after a held HL7 message in tests/test_console_held.py)
    behind = int(health.HELD_BEHIND_AFTER.total_seconds())
    assert exprs["CgthubHeldPayloadsWaiting"] == f"max by (partner) (cgthub_held_payload_oldest_age_seconds) > {behind}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "service",
    [["webhook-delivery", "--health-host", "127.0.0.1", "--health-port"], ["courier-webhook", "--port"]],
    ids=["webhook-delivery", "courier-webhook"],
)
def test_the_compose_services_answer_their_healthchecks(db_url, service):
    """What compose's healthcheck curls: /health/ready of the delivery loop and the courier receiver."""
    port = _free_port()
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url, "CGTHUB_COURIER_WEBHOOK_SECRET": "whsec-test"}
    command = [sys.executable, "-m", "cgthub.services", *service, str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(30)
    assert answer is not None and answer.status_code == 200, answer and answer.text
    state = answer.json()
    assert state["database"]["status"] == "ok" and state["delivery"]["status"] == "ok"
