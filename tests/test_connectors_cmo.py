"""CMO connector: the sequenced event feed, notifications, capacity and slot reservations over
loopback, the CSV drop directory."""

import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from cgthub import alerts, ledger, quarantine, slots
from cgthub.scheduling_tables import ManufacturingSlot
from cgthub.store import session_scope
from cgthub.tables import Order
from connectors.cmo import batch, sync
from connectors.cmo import sandbox as cmo_sandbox
from connectors.common import breaker
from connectors.common.sandbox import FaultConfig, SandboxServer
from tests.factories import happy_path

FIXTURES = Path(__file__).resolve().parent.parent / "mappings" / "cmo"


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


def _event(server, **body):
    assert requests.post(f"{server.base_url}/sandbox/events", json=body, timeout=5).status_code == 200


def test_event_feed_pull_moves_the_order_through_manufacturing_and_oos(db_url, monkeypatch):
    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1)[:6])  # up to material received
    app = cmo_sandbox.create_app(faults=FaultConfig(error_rate=0.2, duplicate_rate=0.5, reorder=True))
    with SandboxServer(app) as cmo:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        base = {"orderReference": "CRM-00001", "batchId": "B26-0001"}
        _event(cmo, eventType="MANUFACTURING_STARTED", eventTime="2026-03-11T07:00:00Z", **base)
        _event(cmo, eventType="QC_STARTED", eventTime="2026-03-22T07:00:00Z", lot="LOT-00001", **base)
        first = sync.pull()
        _event(cmo, eventType="OOS", eventTime="2026-03-25T12:00:00Z", lot="LOT-00001", finding="viability 68%", **base)
        _event(
            cmo,
            eventType="RELEASED_UNDER_EXCEPTION",
            eventTime="2026-03-27T09:00:00Z",
            lot="LOT-00001",
            bags=["LOT-00001-B1"],
            coaReference="COA-1",
            **base,
        )
        second = sync.pull()
        third = sync.pull()
    assert (first.appended, second.appended, third.appended) == (2, 2, 0)
    assert first.watermark_after == "2" and second.watermark_after == "4"
    with session_scope(db_url) as s:
        order = s.scalars(select(Order)).one()
        assert order.status == "released" and order.projection["released_under_exception"] is True
        assert order.projection["refs"]["cmo_batch_id"] == "B26-0001"
        assert alerts.open_alerts(s) == []


def test_csv_drop_rows_are_mapped_one_by_one_and_files_moved(db_url, tmp_path):
    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(2)[:3])  # CRM-00002 enrolled and collected
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy(FIXTURES / "batch_record" / "fixtures" / "nightly_export.csv", drop / "export1.csv")
    (drop / "export2.csv").write_text(
        "batch_id,order_reference,coi_id,din,lot,step,step_time,result\n"
        "B26-0002,CRM-00002,,,,MFG_START,2026-03-12 08:00:00,MAYBE\n"
    )
    (drop / "garbage.csv").write_bytes(b"\x00\x01 not a csv")
    report = batch.pull(directory=drop)
    assert report.appended == 4 and report.quarantined == 2
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["export1.csv", "export2.csv"]
    assert [p.name for p in (drop / "failed").iterdir()] == ["garbage.csv"]
    with session_scope(db_url) as s:
        assert s.scalars(select(Order.status)).one() == "released"
        reasons = [e.reason for e in quarantine.list_entries(s)]
    assert any("is not one of" in r for r in reasons) and any(
        "cannot parse" in r or "no records" in r or "expected" in r for r in reasons
    )
    assert batch.pull(directory=drop).payloads == 0  # moved files are not read again


def test_notifications_are_idempotent(monkeypatch):
    app = cmo_sandbox.create_app()
    with SandboxServer(app) as cmo:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        payload = {
            "order_id": "ORD-1",
            "status": "on_hold",
            "on_hold": True,
            "refs": {"crm_order_id": "CRM-00001"},
            "idempotency_key": "cmo:ORD-1:9",
        }
        sync.push(payload)
        sync.push(payload)
    assert list(app.sandbox_state.notifications) == ["cmo:ORD-1:9"]


def test_slot_reservation_holds_capacity_once_per_key_and_refuses_a_full_day(monkeypatch):
    app = cmo_sandbox.create_app(faults=FaultConfig(error_rate=0.3))  # retried: same key, same hold
    day = date(2026, 3, 10)
    with SandboxServer(app) as cmo:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        _capacity(cmo, ("CMO-EAST", "CART-19", day, 1))
        provider = sync.slot_provider()
        ask = slots.Reservation("CMO-EAST", "CART-19", day, "ORD-1", "CRM-00001", "CHW123426000001")
        first, again = provider.reserve(ask, "slot:ORD-1"), provider.reserve(ask, "slot:ORD-1")
        with pytest.raises(slots.SlotTaken, match="no place left at CMO-EAST for CART-19 on 2026-03-10"):
            provider.reserve(replace(ask, order_id="ORD-2"), "slot:ORD-2")
        published = {(c.cmo, c.therapy, c.day): c for c in provider.capacity(day, day)}
    assert first == again == slots.Reserved(first.reservation_id, day)
    assert len(app.sandbox_state.slots) == 1 and app.sandbox_state.refused == 1
    assert published[("CMO-EAST", "CART-19", day)] == slots.Capacity("CMO-EAST", "CART-19", day, 1, 1)


def test_capacity_sync_stores_the_published_slots_and_takes_the_cmos_count(db_url, monkeypatch):
    start = date(2026, 3, 2)
    with SandboxServer(cmo_sandbox.create_app(faults=FaultConfig(malformed_rate=0.3, error_rate=0.2))) as cmo:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        _capacity(cmo, ("CMO-NJ", "CART-19", start, 3))
        first = slots.sync(db_url, start=start, days=29)
        slots.provider().reserve(slots.Reservation("CMO-NJ", "CART-19", start, "O", None, None), "k")
        again = slots.sync(db_url, start=start, days=29)
    assert first == again == 3 * 2 * 30  # three CMO sites, two therapies, 30 days
    with session_scope(db_url) as s:
        stored = {(r.cmo, r.therapy, r.day): (r.capacity, r.booked) for r in s.scalars(select(ManufacturingSlot))}
    assert len(stored) == 180 and stored[("CMO-NJ", "CART-19", start)] == (3, 1)
    saturday = date(2026, 3, 7)
    assert stored[("CMO-LEI", "CART-BCMA", saturday)] == (0, 0)


def _capacity(server, *rows):
    body = [{"cmo": c, "therapy": t, "date": d.isoformat(), "capacity": n} for c, t, d, n in rows]
    assert requests.post(f"{server.base_url}/sandbox/capacity", json=body, timeout=5).status_code == 200


def test_fault_mode_is_switched_by_configuration(monkeypatch):
    monkeypatch.setenv("CGTHUB_SANDBOX_FAULTS", '{"error_rate": 1.0}')
    with SandboxServer(cmo_sandbox.create_app()) as cmo:
        answer = requests.get(f"{cmo.base_url}/api/v1/events", headers={"Authorization": "ApiKey cmo-key"}, timeout=5)
    assert answer.status_code == 503
    monkeypatch.setenv("CGTHUB_SANDBOX_FAULTS", "chaos")
    assert FaultConfig.from_env().reset_rate > 0
    monkeypatch.setenv("CGTHUB_SANDBOX_FAULTS", "{nonsense")
    with pytest.raises(ValueError, match="CGTHUB_SANDBOX_FAULTS"):
        FaultConfig.from_env()
