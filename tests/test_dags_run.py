"""The DAGs run for real (dag.test(), in-process) against the hub's database on both backends.

Partners deliver through their canonical drop folders and the HL7 archive (the connectors'
sandboxes plug in through the same `cgthub.partner_sync` entry points); the assertions are what
an operator would see: order states, Assets, alerts and what reached each partner.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import func, select

from cgthub import airflow_env, archive, canonical_feed, partners
from cgthub.lifecycle import OrderStatus
from cgthub.ops_tables import AlertNotification, ReconciliationReport
from cgthub.outbox import OutboxMessage
from cgthub.settings import var_dir
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, Order, RawMessage
from tests.factories import happy_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dags():
    airflow_env.migrate_metadata_db()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))
    assert not bag.import_errors
    return bag.dags


@pytest.fixture
def hub(db_url, monkeypatch):
    """An empty hub database and empty partner folders; connectors off (no sandboxes in this test)."""
    monkeypatch.setenv("CGTHUB_CONNECTORS", "")
    for name in ("inbox", "outbound", "snapshots"):
        folder = var_dir() / name
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
    return db_url


def run(dag, conf=None):
    dag_run = airflow_env.run_dag_test(dag, conf)
    states = {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti.state
        for ti in dag_run.get_task_instances()
    }
    return dag_run, states


def drop(partner: str, name: str, events) -> None:
    path = canonical_feed.inbox(partner) / name
    path.write_text(json.dumps([e.model_dump(mode="json", exclude_none=True) for e in events]))


def status_of(crm_order_id: str) -> str:
    with session_scope(readonly=True) as session:
        for projection in session.scalars(select(Order.projection)):
            if projection["refs"].get("crm_order_id") == crm_order_id:
                return projection["status"]
    raise AssertionError(f"no order for {crm_order_id}")


def asset_events(uri: str, *runs) -> dict[str, int]:
    """How many events of the asset `uri` each of these DAG runs emitted, by run id."""
    from airflow import settings
    from airflow.models.asset import AssetEvent, AssetModel

    ids = [run.run_id for run in runs]
    with settings.Session() as session:
        emitted = session.scalars(
            select(AssetEvent.source_run_id)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri, AssetEvent.source_run_id.in_(ids))
        ).all()
    return {run_id: emitted.count(run_id) for run_id in ids}


def test_ingest_dag_applies_a_batch_and_announces_assets_only_when_events_landed(dags, hub):
    events = happy_path(1)
    drop("crm", "batch-1.json", events[:2])

    dag_run, states = run(dags["cgthub_ingest_crm"])
    assert dag_run.state == "success" and states["announce"] == "success"
    assert status_of("CRM-00001") == OrderStatus.APHERESIS_SCHEDULED.value
    assert not canonical_feed.pending_files("crm")  # moved to done/ after the commit

    again, states = run(dags["cgthub_ingest_crm"])  # nothing new
    assert states["announce"] == "skipped"
    # Counted by the run that emitted them: two fresh-clone CI runs found one event more on this
    # asset than the runs of this worker had made, seen only after the second run and named by a
    # run that began about when the previous parameter's did (not explained yet).
    uri = "cgthub://ledger/events/crm"
    assert asset_events(uri, dag_run, again) == {dag_run.run_id: 1, again.run_id: 0}


def test_hl7_inbox_applies_archived_messages_once_even_when_resent(dags, hub):
    events = happy_path(2)
    drop("crm", "b.json", events[:2])
    run(dags["cgthub_ingest_crm"])
    collected = json.dumps(events[2].model_dump(mode="json", exclude_none=True)).encode()
    with session_scope() as session:  # what the MLLP listener does: archive, ACK, nothing else
        for _ in range(2):
            archive.store(
                session, system="hl7", kind=canonical_feed.KIND, channel="mllp", payload=collected, dedupe_key="MSG0001"
            )

    dag_run, states = run(dags["cgthub_hl7_inbox"])
    assert dag_run.state == "success" and states["announce"] == "success"
    assert status_of("CRM-00002") == OrderStatus.COLLECTED.value
    with session_scope(readonly=True) as session:
        raw = session.scalars(select(RawMessage).where(RawMessage.system == "hl7")).one()
        assert (raw.receive_count, raw.status) == (2, "processed")
        hl7_entries = session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.source_system == "hl7")
        )
        assert hl7_entries == 1


def broken_push(payload):
    raise ConnectionError("ERP SOAP endpoint down")


def test_outbound_delivers_each_partner_and_one_outage_blocks_no_other(dags, hub, monkeypatch, webhook):
    events = happy_path(3)
    drop("crm", "c.json", events[:2])
    drop("cmo", "c.json", events[5:9])  # received at CMO .. released (skipping ahead is allowed)
    run(dags["cgthub_ingest_crm"])
    run(dags["cgthub_ingest_cmo"])
    declared = partners.registry()
    broken = partners.Push("tests.test_dags_run:broken_push", declared["erp"].push.statuses)
    monkeypatch.setattr(partners, "registry", lambda: {**declared, "erp": replace(declared["erp"], push=broken)})
    monkeypatch.setenv("CGTHUB_CONNECTORS", "erp")  # the ERP through its (broken) connector, the rest as files

    dag_run, states = run(dags["cgthub_outbound"])
    assert states["route"] == "success"
    assert dag_run.state == "failed"  # the ERP's task failed ...
    failed = {k for k, v in states.items() if v == "failed"}
    assert failed == {f"drain[{list(partners.pushed()).index('erp')}]"}  # ... and only the ERP's
    with session_scope(readonly=True) as session:
        rows = session.execute(select(OutboxMessage.destination_kind, OutboxMessage.status)).all()
    by_kind = {}
    for kind, status in rows:
        by_kind.setdefault(kind, set()).add(status)
    assert by_kind["crm"] == {"delivered"} and by_kind["hl7"] == {"delivered"}
    assert by_kind["erp"] == {"failed"}  # retried later with backoff by the outbox
    crm_files = sorted((var_dir() / "outbound" / "crm").glob("*.json"))
    statuses = [json.loads(p.read_text())["status"] for p in crm_files]
    assert "released" in statuses and "apheresis_scheduled" in statuses
    hospital = [json.loads(p.read_text())["status"] for p in (var_dir() / "outbound" / "hl7").glob("*.json")]
    assert "released" in hospital and "apheresis_scheduled" not in hospital  # the hospital hears milestones only
    # the failed task paged operators through the DAGs' failure notifier
    assert any("cgthub task cgthub_outbound.drain failed" in m.get("message", "") for m in webhook), webhook


class _Sink(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Sink.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    _Sink.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CGTHUB_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/alerts")
    yield _Sink.received
    server.shutdown()
    server.server_close()


def test_monitoring_raises_overdue_receipt_and_notifies_the_webhook_once(dags, hub, webhook):
    events = happy_path(4)
    drop("crm", "d.json", events[:2])
    drop("courier", "d.json", [events[3]])
    run(dags["cgthub_ingest_crm"])
    with session_scope() as session:
        archive.store(
            session,
            system="hl7",
            kind=canonical_feed.KIND,
            channel="mllp",
            payload=json.dumps(events[2].model_dump(mode="json", exclude_none=True)).encode(),
            dedupe_key="C4",
        )
    run(dags["cgthub_hl7_inbox"])
    run(dags["cgthub_ingest_courier"])
    assert status_of("CRM-00004") == OrderStatus.IN_TRANSIT_TO_CMO.value

    on_time = events[3].occurred_at + timedelta(hours=10)
    dag_run, _ = run(dags["cgthub_monitoring"], {"now": on_time.isoformat()})
    assert dag_run.state == "success" and webhook == []

    late = events[3].occurred_at + timedelta(hours=80)
    run(dags["cgthub_monitoring"], {"now": late.isoformat()})
    run(dags["cgthub_monitoring"], {"now": (late + timedelta(hours=1)).isoformat()})
    assert [(m["kind"], m["severity"]) for m in webhook] == [("milestone_overdue", "critical")]
    assert "received_at_cmo overdue" in webhook[0]["message"]
    with session_scope(readonly=True) as session:
        alert = session.scalars(select(Alert).where(Alert.kind == "milestone_overdue")).one()
        note = session.scalars(select(AlertNotification).where(AlertNotification.alert_id == alert.id)).one()
        assert (alert.status, note.channels, note.webhook_status) == ("open", "log,webhook", 204)


def test_reconciliation_reports_a_partner_that_contradicts_the_hub(dags, hub, webhook):
    events = happy_path(5)
    drop("crm", "e.json", events[:2])
    run(dags["cgthub_ingest_crm"])
    extract = var_dir() / "snapshots" / "crm.json"
    extract.parent.mkdir(parents=True, exist_ok=True)
    extract.write_text(
        json.dumps(
            [
                {"ref_kind": "crm_order_id", "ref_value": "CRM-00005", "status": "cancelled"},
                {"ref_kind": "crm_order_id", "ref_value": "CRM-00404", "status": "enrolled"},
            ]
        )
    )

    dag_run, _ = run(dags["cgthub_reconciliation"], {"now": events[1].occurred_at.isoformat()})
    assert dag_run.state == "success"
    with session_scope(readonly=True) as session:
        report = session.scalars(select(ReconciliationReport)).one()
        assert report.counts == {"status_disagreement": 1, "unknown_order": 1}
        kinds = sorted(session.scalars(select(Alert.kind).where(Alert.status == "open")))
    assert kinds == ["reconciliation.status_disagreement", "reconciliation.unknown_order"]
    assert {m["kind"] for m in webhook} == set(kinds)  # the notify task sent both


def test_hl7_inbox_trigger_fires_when_the_listener_archived_a_message(hub):
    import asyncio

    from cgthub.hl7_inbox_trigger import HL7InboxTrigger

    async def first_event():
        return await anext(HL7InboxTrigger(poll_seconds=0.05, database_url=hub).run())

    with session_scope() as session:
        raw = archive.store(
            session, system="hl7", kind=canonical_feed.KIND, channel="mllp", payload=b"{}", dedupe_key="M1"
        )
    event = asyncio.run(asyncio.wait_for(first_event(), timeout=10))
    assert event.payload == {"newest_raw_id": raw.raw_id}
    classpath, kwargs = HL7InboxTrigger(poll_seconds=2).serialize()
    assert classpath == "cgthub.hl7_inbox_trigger.HL7InboxTrigger" and kwargs["poll_seconds"] == 2


def test_deadline_alert_callback_pages_through_the_webhook(webhook):
    import asyncio

    from cgthub.notifier import sync_deadline_missed

    asyncio.run(sync_deadline_missed(dag_label="crm", context={"dag_run": {"run_id": "scheduled__x"}}))
    assert webhook == [
        {
            "source": "cgthub-airflow",
            "kind": "sync_deadline",
            "message": "sync DAG crm missed its deadline (run scheduled__x): partner data is getting stale",
        }
    ]
