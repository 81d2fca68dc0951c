"""A full order life cycle through the CRM, courier, CMO and ERP sandboxes, fault-free and with
every fault on: same final orders, nothing lost, nothing applied twice. On SQLite and PostgreSQL."""

import pytest
from sqlalchemy import func, select

from cgthub import alerts, ledger, settings, store
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from connectors.cmo import sandbox as cmo_sandbox
from connectors.cmo import sync as cmo_sync
from connectors.common import breaker
from connectors.common.sandbox import FaultConfig, SandboxServer
from connectors.courier import sandbox as courier_sandbox
from connectors.courier import sync as courier_sync
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from connectors.erp import sandbox as erp_sandbox
from connectors.erp import sync as erp_sync
from tests.conftest import _truncate
from tests.factories import din

PATIENTS = (1, 2, 3)


def _crm_record(n):
    return {
        "id": f"CRM-{n:05d}",
        "status": "SCHEDULED",
        "enrolledAt": "2026-03-02T09:00:00",
        "product": "KYM-CD19",
        "site": {"id": "US-BOS-01", "country": "US"},
        "patient": {"coiId": f"CHW1234260000{n:02d}", "mrn": f"MRN{n:08d}"},
        "apheresis": {"scheduledFor": "2026-03-09T08:00:00", "bookedAt": "2026-03-03T11:00:00"},
    }


def _courier_leg(state, n, direction, day, contents):
    sid = f"SHP-{n}-{'OUT' if direction == 'TO_MANUFACTURER' else 'BACK'}"
    state.shipments[sid] = {
        "shipmentId": sid,
        "trackingNumber": f"CRY{n}{day}",
        "direction": direction,
        "reference": {"crmOrderId": f"CRM-{n:05d}"},
        "shipperId": f"DS-{n}",
    }
    state.add_event(sid, {"status": "PICKED_UP", "timestamp": f"2026-03-{day:02d}T14:00:00Z", "contents": contents})
    state.add_event(sid, {"status": "DELIVERED", "timestamp": f"2026-03-{day + 1:02d}T09:00:00Z"})


def _story(crm, courier, cmo, erp):
    for n in PATIENTS:
        crm.upsert(_crm_record(n))
        _courier_leg(courier, n, "TO_MANUFACTURER", 9, {"din": din(n)})
        base = {"orderReference": f"CRM-{n:05d}", "batchId": f"B26-{n:04d}"}
        cmo.add_event({"eventType": "MATERIAL_RECEIVED", "eventTime": "2026-03-10T15:00:00Z", "din": din(n), **base})
        cmo.add_event({"eventType": "MANUFACTURING_STARTED", "eventTime": "2026-03-11T07:00:00Z", **base})
        cmo.add_event({"eventType": "QC_STARTED", "eventTime": "2026-03-22T07:00:00Z", "lot": f"LOT-{n}", **base})
        cmo.add_event({"eventType": "RELEASED", "eventTime": "2026-03-26T09:00:00Z", "lot": f"LOT-{n}", **base})
        _courier_leg(courier, n, "TO_SITE", 27, {"lot": f"LOT-{n}"})
        erp.create(f"CRM-{n:05d}", "MAT-CART19", "US10")


def _run(url, monkeypatch, faults):
    breaker._breakers.clear()
    apps = {
        "crm": crm_sandbox.create_app(faults=faults),
        "courier": courier_sandbox.create_app(faults=faults),
        "cmo": cmo_sandbox.create_app(faults=faults),
        "erp": erp_sandbox.create_app(faults=faults),
    }
    servers = {name: SandboxServer(app) for name, app in apps.items()}
    for server in servers.values():
        server.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{servers['crm'].port}")
        monkeypatch.setenv("AIRFLOW_CONN_COURIER_API", f"http://cgthub:courier-key@127.0.0.1:{servers['courier'].port}")
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{servers['cmo'].port}")
        monkeypatch.setenv("AIRFLOW_CONN_ERP_SOAP", f"http://127.0.0.1:{servers['erp'].port}/erp/soap")
        _story(*(apps[n].sandbox_state for n in ("crm", "courier", "cmo", "erp")))
        for _round in range(6):  # the scheduler runs the syncs again and again; faults pass
            for pull in (crm_sync.pull, courier_sync.pull, cmo_sync.pull, erp_sync.pull):
                breaker._breakers.clear()  # a new task run: the breaker is per process in production
                pull(database_url=url)
    finally:
        for server in servers.values():
            server.stop()
    injected = sum(sum(app.injected.values()) for app in apps.values())
    with session_scope(url) as s:
        orders = sorted(
            (
                o.projection["refs"]["crm_order_id"],
                o.status,
                o.projection["refs"].get("erp_sales_order"),
                o.projection["refs"].get("cmo_batch_id"),
                len(o.projection["milestones"]),
            )
            for o in s.scalars(select(Order))
        )
        entries = s.scalar(select(func.count()).select_from(LedgerEntry))
        problems = ledger.verify(s)[1]
        open_alerts = sorted(a.kind for a in alerts.open_alerts(s))
    return orders, entries, problems, open_alerts, injected


@pytest.mark.slow
def test_life_cycle_with_faults_equals_the_fault_free_run(db_url, monkeypatch, tmp_path):
    clean = _run(db_url, monkeypatch, FaultConfig())
    assert [o[1] for o in clean[0]] == ["received_at_site"] * 3 and clean[2] == [] and clean[4] == 0
    if db_url.startswith("sqlite"):
        chaos_url = f"sqlite:///{tmp_path / 'chaos.db'}"
        store.upgrade(chaos_url)
    else:
        chaos_url = db_url
        _truncate(db_url)
    monkeypatch.setenv("CGTHUB_DATABASE_URL", chaos_url)
    settings.get_settings.cache_clear()
    chaos = _run(chaos_url, monkeypatch, FaultConfig.chaos(seed=5))
    assert chaos[4] > 10, "the fault mode must actually inject faults"
    assert chaos[:4] == clean[:4]
