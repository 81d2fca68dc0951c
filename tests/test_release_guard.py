"""The release guard everywhere a hub maps, and four eyes on a release: a production hub whose files
drift from the bundle in force holds the courier's webhooks (archived, 503, applied once the files
are back), refuses a quarantine retry over HTTP, from the CLI and in the console (503, environment
and bundle named), and switches a running MLLP listener to archive only (AA once archived, alert,
/health says why) until the files are back; a bundle's builder may not approve it (unless the hub's
environment allows it), and a self-approval never takes a bundle to production. Each test runs on a
temporary copy of config/ and mappings/ (tests/test_release.py's hub), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import requests
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cgthub import alerts, ledger, partner_sync, pipeline, quarantine, release_guard, routing, settings
from cgthub.hl7.ack import ack_code
from cgthub.release_tables import ReleaseApproval
from cgthub.store import session_scope
from cgthub.tables import Alert, AuditRecord, LedgerEntry, QuarantineEntry, RawMessage
from connectors.common.sandbox import SandboxServer
from connectors.courier import sandbox as courier_sandbox
from connectors.courier import webhook
from connectors.courier.signature import HEADER, sign
from connectors.hospital import simulator
from tests import api_server, test_console, test_release
from tests.api_server import ApiServer
from tests.factories import din, happy_path
from tests.test_release import PASSWORD, Hub, _built, said

SECRET = "whsec-sandbox"
MARKET = "config/markets/DE.yaml"

# The fixtures: a hub on a temporary copy of config/ and mappings/, and the API over HTTP.
hub = test_release.hub
api = api_server.api
console = test_console.console
auth_manager = test_console.auth_manager


def _in_force(hub: Hub) -> str:
    """Build the live files into a bundle, approve it (qa) and promote it to validation and production."""
    bundle = _built(hub.build())
    approved = hub.signed("release", "approve", bundle[:12], "--reason", "RELEASE-VALIDATED", "--text", "OQ passed")
    assert approved.exit_code == 0, said(approved)
    for env in ("validation", "production"):
        assert hub.signed("release", "promote", bundle[:12], "--env", env).exit_code == 0
    assert bundle in hub.ok("release", "check")
    return bundle


class Drift:
    """A configuration file edited in place, and put back."""

    def __init__(self, hub: Hub, name: str = MARKET) -> None:
        self.path = hub.root / name
        self.original = self.path.read_bytes()

    def edit(self) -> None:
        self.path.write_bytes(self.original + b"\n# edited in place, never released\n")

    def restore(self) -> None:
        self.path.write_bytes(self.original)


def _open_alerts(url: str, kind: str) -> list[Alert]:
    with session_scope(url) as s:
        return [a for a in alerts.open_alerts(s) if a.kind == kind]


def _shipment_events(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.event_type.like("shipment.%")))


def _courier_raw(url: str, status: str) -> int:
    with session_scope(url) as s:
        query = select(func.count()).select_from(RawMessage)
        return s.scalar(query.where(RawMessage.system == "courier", RawMessage.status == status))


def _refusals(session: Session, signer: str) -> list[str]:
    """The details of each refused signature by `signer` in the audit trail."""
    query = select(AuditRecord.details).where(
        AuditRecord.action == "decision.refused", AuditRecord.actor == f"claimed:{signer}"
    )
    return list(session.scalars(query.order_by(AuditRecord.seq)))


def _post(base_url: str, event: dict[str, Any]) -> requests.Response:
    body = json.dumps(event).encode()
    headers = {HEADER: sign(SECRET, body), "content-type": "application/json"}
    return requests.post(f"{base_url}/webhooks/courier", data=body, headers=headers, timeout=10)


def test_courier_webhooks_are_held_while_the_release_is_not_in_force_and_applied_once_it_is(hub: Hub) -> None:
    bundle = _in_force(hub)
    with session_scope(hub.url) as s:
        ledger.append_many(s, happy_path(1)[:3])
    drift = Drift(hub)
    receiver = SandboxServer(webhook.create_app(secret=SECRET, database_url=hub.url, drain_every=None))
    courier_app = courier_sandbox.create_app()
    state = courier_app.sandbox_state
    with receiver, SandboxServer(courier_app) as courier:
        requests.post(f"{courier.base_url}/sandbox/webhooks", json={"url": f"{receiver.base_url}/webhooks/courier"})
        booked = requests.post(
            f"{courier.base_url}/v1/shipments",
            json={"shipmentId": "SHP-1-OUT", "direction": "TO_MANUFACTURER", "reference": {"crmOrderId": "CRM-00001"}},
            headers={"X-API-Key": "courier-key", "Idempotency-Key": "book-1"},
            timeout=5,
        )
        assert booked.status_code == 200

        def event(status: str, when: str, **extra: Any) -> dict[str, Any]:
            body = {"status": status, "timestamp": when, **extra}
            answer = requests.post(f"{courier.base_url}/sandbox/shipments/SHP-1-OUT/events", json=body, timeout=5)
            assert answer.status_code == 200, answer.text
            stored: dict[str, Any] = state.events[-1]
            return stored

        event("PICKED_UP", "2026-03-09T14:00:00-05:00", contents={"din": din(1)})
        assert state.deliveries == [202] and _shipment_events(hub.url) == 1

        drift.edit()
        in_transit = event("IN_TRANSIT", "2026-03-09T18:00:00-05:00")
        assert state.deliveries == [202, 503]  # the courier is told to try again later
        again = _post(receiver.base_url, in_transit)  # its retry while the files still differ
        assert again.status_code == 503 and again.headers["Retry-After"] == "60"
        answer = again.json()
        assert answer["archived"] is True and answer["environment"] == "production" and answer["bundle"] == bundle
        assert answer["error"].startswith(f"archived, not applied: the live files are not release bundle {bundle[:12]}")
        assert f"in force in production: {MARKET} differs" in answer["error"]
        assert "SHP-1-OUT" not in answer["error"] and "CRM-00001" not in answer["error"]  # nothing of the payload
        assert _courier_raw(hub.url, "received") == 1  # archived once, nothing lost
        assert _shipment_events(hub.url) == 1  # nothing mapped with unreleased files
        held = _open_alerts(hub.url, "release_not_in_force")
        assert len(held) == 1 and held[0].severity == "critical" and "the courier webhook" in held[0].message

        drift.restore()  # the release is in force again: the next webhook applies what was held first
        event(
            "TEMPERATURE_EXCURSION",
            "2026-03-10T02:00:00-05:00",
            excursion={"start": "2026-03-10T01:40:00-05:00", "extremeC": -131.5, "limitC": -150.0},
        )
        assert state.deliveries == [202, 503, 202]
        assert _courier_raw(hub.url, "received") == 0 and _shipment_events(hub.url) == 3
        assert len(_open_alerts(hub.url, "temperature_excursion")) == 1
        retried = _post(receiver.base_url, in_transit)  # the courier's retry of the held one: applied once
        assert retried.status_code == 202 and retried.json()["duplicate"] is True
        assert _shipment_events(hub.url) == 3

        drift.edit()  # held again, then applied without any new webhook
        event("DELIVERED", "2026-03-10T09:00:00-05:00", receivedBy="cmo")
        assert state.deliveries[-1] == 503 and webhook.drain(hub.url) == 0  # still drifted: nothing applied
        drift.restore()
        # the receiver as the courier-webhook service serves it (its lifespan runs the drain)
        with TestClient(webhook.create_app(secret=SECRET, database_url=hub.url, drain_every=0.2)):
            _wait_for(lambda: _shipment_events(hub.url) == 4, "the held payload to be applied")
        assert _courier_raw(hub.url, "received") == 0 and webhook.drain(hub.url) == 0


def _quarantined_courier_payload(url: str) -> int:
    """A courier event with a status the mapping does not know: archived and quarantined."""
    body = json.dumps({"eventId": "EVT-LOST", "shipmentId": "SHP-9", "status": "LOST", "timestamp": "2026-03-09"})
    with session_scope(url) as s:
        mapper = routing.mapper(s, "courier", "tracking_event")
        pipeline.ingest(s, system="courier", kind="tracking_event", channel="t", payload=body.encode(), mapper=mapper)
        entry_id: int = quarantine.list_entries(s)[0].id
    return entry_id


def test_a_quarantine_retry_is_refused_while_the_release_is_not_in_force(
    hub: Hub, api: ApiServer, console: Any, auth_manager: Any
) -> None:
    bundle = _in_force(hub)
    hub.ok("operators", "add", "coordinator", "--scope", "retry_quarantine", "--password-stdin", password=PASSWORD)
    entry = _quarantined_courier_payload(hub.url)
    client = api.client(api.key("operate"))
    signature = {
        "signer": "coordinator",
        "password": PASSWORD,
        "meaning": "approved",
        "reason_code": "MAPPING-FIXED",
        "reason_text": "the courier's status list was updated",
    }
    drift = Drift(hub)
    drift.edit()

    refused = client.post(f"/quarantine/{entry}/retry", json=signature)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "60"
    error = refused.json()["error"]
    assert error["code"] == "release_not_in_force"
    assert (
        f"not retried: the live files are not release bundle {bundle[:12]} in force in production" in error["message"]
    )
    assert f"{MARKET} differs" in error["message"]
    bulk = client.post("/quarantine/bulk-retry", json={**signature, "entry_ids": [entry]})
    assert bulk.status_code == 503 and bulk.json()["error"]["code"] == "release_not_in_force"

    cli = hub.cli("quarantine", "retry", str(entry), "--signer", "coordinator", "--meaning", "approved",
                  "--reason", "MAPPING-FIXED", "--text", "fixed", "--password-stdin", password=PASSWORD)  # fmt: skip
    assert cli.exit_code == 1 and f"release bundle {bundle[:12]} in force in production" in said(cli)

    test_console.add_operator(hub.url, "olga")  # the console signs as the Airflow user's operator
    path = f"/cgthub/console/actions/retry_quarantine/{entry}"
    page = test_console.sign(test_console.signed_in(console, auth_manager), path, code="MAPPING-FIXED")
    assert page.status_code == 503 and f"release bundle {bundle[:12]} in force in production" in page.text

    with session_scope(hub.url) as s:
        assert s.get(QuarantineEntry, entry).status == "open"  # nothing signed, nothing mapped
        refusals = _refusals(s, "coordinator") + _refusals(s, "olga")
    assert len(refusals) == 4 and all('"why":"release_not_in_force"' in r for r in refusals)

    drift.restore()
    retried = client.post(f"/quarantine/{entry}/retry", json=signature)
    assert retried.status_code == 201, retried.text
    assert retried.json()["outcome"]["result"] == "still failing"  # it ran: LOST is still not a known status


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_running_listener_archives_only_while_the_files_drift(hub: Hub) -> None:
    bundle = _in_force(hub)
    drift = Drift(hub, "mappings/hl7/ORM_O01/v1.yaml")
    listening = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cgthub.cli",
            "hl7",
            "listen",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--release-check-seconds",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listening.stdout is not None
        found = re.search(r"listening for MLLP on ([\d.]+):(\d+) \(apply\)", listening.stdout.readline())
        metrics = re.search(r"(http://\S+)/metrics", listening.stdout.readline())
        assert found and metrics
        host, port, health_url = found.group(1), int(found.group(2)), metrics.group(1) + "/health"

        def release() -> dict[str, Any]:
            state: dict[str, Any] = httpx.get(health_url, timeout=5).json()
            return state

        def send(patient: int) -> list[str]:
            return [
                ack_code(a) for a in simulator.send_over_mllp(host, port, simulator.feed(range(patient, patient + 1)))
            ]

        def raw_statuses() -> dict[str, int]:
            with session_scope(hub.url) as s:
                rows = s.execute(
                    select(RawMessage.status, func.count())
                    .where(RawMessage.system == "hl7")
                    .group_by(RawMessage.status)
                )
                return {status: n for status, n in rows}

        assert send(1) == ["AA"] * 3 and raw_statuses() == {"processed": 3}

        drift.edit()
        _wait_for(lambda: release()["release"]["status"] == "not_in_force", "the listener to see the drift")
        state = release()
        assert state["mode"] == "archive only" and state["status"] == "ok"  # still takes the hospital's messages
        assert "mappings/hl7/ORM_O01/v1.yaml differs" in state["release"]["reason"]
        assert send(2) == ["AA"] * 3  # archived and acknowledged, not applied
        assert raw_statuses() == {"processed": 3, "received": 3}
        held = _open_alerts(hub.url, "release_not_in_force")
        assert len(held) == 1 and "the MLLP listener is not applying" in held[0].message
        refused = hub.cli("release", "check")  # what the HL7 inbox DAG runs first: it applies nothing either
        assert refused.exit_code == 1 and isinstance(refused.exception, release_guard.ReleaseRefused)

        drift.restore()
        _wait_for(lambda: release()["release"]["status"] == "in_force", "the listener to apply again")
        assert release()["mode"] == "apply" and release()["release"]["bundle"] == bundle
        assert send(3) == ["AA"] * 3
        assert raw_statuses() == {"processed": 6, "received": 3}
        assert partner_sync.apply_hl7_inbox(database_url=hub.url)["release"] == bundle  # the inbox DAG's task
        assert raw_statuses() == {"processed": 9}
    finally:
        listening.terminate()
        _out, err = listening.communicate(timeout=30)
    assert "switched to archive only" in err and "in force again" in err and "Traceback" not in err


def test_four_eyes_the_builder_may_not_approve_unless_the_environment_allows_it(hub: Hub, monkeypatch: Any) -> None:
    scopes = "build_release,approve_release"
    hub.ok("operators", "add", "lead", "--scope", scopes, "--password-stdin", password=PASSWORD)
    policy = hub.root / "config" / "security.yaml"
    policy.write_text(policy.read_text().replace("self_approval_environments: [dev]", "self_approval_environments: []"))
    monkeypatch.setenv("CGTHUB_OPERATOR", "qa")  # a name in the environment is nobody's signature
    settings.get_settings.cache_clear()
    bundle = _built(hub.build("lead"))  # the lead builds, signed

    def approve(signer: str) -> Any:
        return hub.cli("release", "approve", bundle[:12], "--reason", "RELEASE-VALIDATED", "--text", "reviewed",
                       "--signer", signer, "--password-stdin", password=PASSWORD)  # fmt: skip

    own = approve("lead")
    assert own.exit_code == 1
    assert f"operator lead signed bundle {bundle[:12]} as its builder and may not approve it too" in said(own)
    assert "a release needs a second person (four eyes)" in said(own)
    assert "CGTHUB_ENV=dev: self-approval is not allowed by config/security.yaml" in own.exception.hint
    with session_scope(hub.url) as s:
        assert s.scalars(select(ReleaseApproval)).all() == []
    assert "│ lead " in hub.ok("release", "list")  # the signed builder, not CGTHUB_OPERATOR

    # a development hub that allows it: the builder's approval is taken, but never counts for production
    policy.write_text(policy.read_text().replace("self_approval_environments: []", "self_approval_environments: [dev]"))
    assert approve("lead").exit_code == 0
    assert hub.signed("release", "promote", bundle[:12], "--env", "validation").exit_code == 0
    alone = hub.signed("release", "promote", bundle[:12], "--env", "production")
    assert alone.exit_code == 1 and "approved only by its builder lead" in said(alone), said(alone)
    assert approve("qa").exit_code == 0  # a second person
    assert hub.signed("release", "promote", bundle[:12], "--env", "production").exit_code == 0
    written = Path(hub.ok("release", "evidence", bundle[:12], "--out", str(hub.root)).split("wrote ")[1].strip())
    approvals = written.read_text().split("id='approvals'")[1].split("<h2")[0]
    rows = {row.split("</td>")[0]: row for row in approvals.split("<tr><td>")[1:]}
    assert rows["lead"].endswith("<td>self-approval: the builder (does not count for production)</td></tr>")
    assert "<td>second person</td></tr>" in rows["qa"]

    with session_scope(hub.url) as s:
        refused = _refusals(s, "lead")
    assert refused == ['{"action":"approve_release","why":"forbidden"}']
