"""ERP connector: zeep against the sandbox's WSDL over loopback; SOAP faults; hardened XML."""

import pytest
from sqlalchemy import select

from cgthub import archive, ledger, quarantine
from cgthub.store import session_scope
from cgthub.tables import Order, RawMessage
from connectors.common import breaker
from connectors.common.connection import PartnerConnection
from connectors.common.sandbox import FaultConfig, SandboxServer
from connectors.erp import sandbox as erp_sandbox
from connectors.erp import sync
from connectors.erp.client import HARDENED, ErpClient, ErpFault
from tests.factories import enrolment


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


def _client(server):
    return ErpClient(PartnerConnection("erp_soap", f"{server.base_url}/erp/soap"))


def test_zeep_settings_are_hardened():
    assert HARDENED.forbid_dtd and HARDENED.forbid_entities and HARDENED.forbid_external


def test_create_pull_and_post_status_round_trip(db_url, monkeypatch):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    app = erp_sandbox.create_app(faults=FaultConfig(error_rate=0.25, rate_limit_rate=0.1))
    with SandboxServer(app) as erp:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_SOAP", f"http://127.0.0.1:{erp.port}/erp/soap")
        erp_client = _client(erp)
        first = erp_client.create_sales_order("CRM-00001", "MAT-CART19", "US10")
        again = erp_client.create_sales_order("CRM-00001", "MAT-CART19", "US10")
        assert first == again and first["salesOrderNumber"] == "SO-4500001"
        app.sandbox_state.post_movement("SO-4500001", "101", "LOT-00001", "US10")
        report = sync.pull()
        assert report.errors == [] and report.appended == 2
        assert sync.pull().appended == 0  # the overlap re-reads, the ledger absorbs
        payload = {
            "order_id": "ORD-1",
            "status": "released",
            "refs": {"crm_order_id": "CRM-00001", "erp_sales_order": "SO-4500001"},
            "idempotency_key": "erp:ORD-1:5",
        }
        sync.push(payload)
        sync.push(payload)
    assert list(app.sandbox_state.statuses) == ["erp:ORD-1:5"]
    with session_scope(db_url) as s:
        order = s.scalars(select(Order)).one()
        assert order.projection["refs"]["erp_sales_order"] == "SO-4500001"
        raw = s.scalars(select(RawMessage).where(RawMessage.system == "erp")).all()
        assert {r.kind for r in raw} == {"sales_order", "goods_movement"}


def test_soap_fault_becomes_a_typed_error():
    with SandboxServer(erp_sandbox.create_app()) as erp:
        with pytest.raises(ErpFault, match=r"ERP SOAP fault \(Client\)") as caught:
            _client(erp).create_sales_order("CRM-00009", "MAT-NOPE", "US10")
        assert caught.value.code == "Client" and caught.value.text.startswith("material MAT-NOPE does not exist")
        assert "MAT-NOPE" not in str(caught.value)  # the ERP's free text stays out of the message
        with pytest.raises(ErpFault) as caught:
            _client(erp).post_status("SO-1", "released", "k")
        assert caught.value.text == "sales order SO-1 does not exist"


def test_a_sales_order_for_an_unknown_crm_order_waits_in_quarantine(db_url, monkeypatch):
    app = erp_sandbox.create_app()
    with SandboxServer(app) as erp:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_SOAP", f"http://127.0.0.1:{erp.port}/erp/soap")
        _client(erp).create_sales_order("CRM-00042", "MAT-CART19", "US10")
        report = sync.pull()
    assert report.quarantined == 1
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s)
        assert entry.stage == "correlate" and "crm_order_id=CRM-00042" in entry.reason


def test_material_and_batch_master_and_goods_movement_posting():
    app = erp_sandbox.create_app()
    with SandboxServer(app) as erp:
        client = _client(erp)
        material = client.material("MAT-CART19")
        assert material["storageCondition"] == "vapour LN2 <= -150 C" and material["shelfLifeHours"] == 8760
        app.sandbox_state.batches["LOT-1"] = {
            "batchNumber": "LOT-1",
            "materialNumber": "MAT-CART19",
            "expiryDate": "2027-03-26",
            "status": "RELEASED",
        }
        assert client.batch("LOT-1")["status"] == "RELEASED"
        with pytest.raises(ErpFault) as caught:
            client.batch("LOT-404")
        assert caught.value.text == "batch LOT-404 does not exist"
        order = client.create_sales_order("CRM-00001", "MAT-CART19", "US10")
        payload = {
            "order_id": "ORD-1",
            "status": "released",
            "market": "US",
            "idempotency_key": "erp:ORD-1:8",
            "refs": {"crm_order_id": "CRM-00001", "erp_sales_order": order["salesOrderNumber"], "lot": "LOT-1"},
        }
        first = sync.push(payload, erp=client)
        again = sync.push(payload, erp=client)
    assert first["goods_movement"]["movementType"] == "101"
    assert first["goods_movement"]["documentNumber"] == again["goods_movement"]["documentNumber"]
    assert len(app.sandbox_state.movements) == 1


def test_a_soap_fault_on_a_read_is_archived_quarantined_and_counted(db_url, monkeypatch):
    app = erp_sandbox.create_app()
    app.sandbox_state.closed_period = "2026/03"
    with SandboxServer(app) as erp:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_SOAP", f"http://127.0.0.1:{erp.port}/erp/soap")
        report = sync.pull()
    assert report.quarantined == 1 and any("SOAP fault (Server)" in e for e in report.errors)
    assert not any("posting period" in e for e in report.errors)  # the ERP's free text is not quoted
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s)
        assert entry.kind == "goods_movement" and "SOAP fault (Server)" in entry.reason
        assert "read it in the archived answer" in entry.reason and "posting period" not in entry.reason
        assert s.get(RawMessage, entry.raw_id).status == "quarantined"
        assert b"posting period 2026/03 is closed" in archive.read(s, entry.raw_id)  # where to read it


def test_a_backdated_sales_order_entered_after_a_pull_is_still_pulled(db_url, monkeypatch):
    """changedSince reads the ERP's change log, not the document date: an order keyed in today with
    last month's date is not lost under the watermark the previous pull left."""
    import httpx

    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
        ledger.append(s, enrolment(2))
    app = erp_sandbox.create_app()
    with SandboxServer(app) as erp:
        monkeypatch.setenv("AIRFLOW_CONN_ERP_SOAP", f"http://127.0.0.1:{erp.port}/erp/soap")
        seed = {"crmOrderId": "CRM-00001", "salesOrderNumber": "SO-4500101", "createdAt": "2026-01-05T09:00:00+00:00"}
        httpx.post(f"{erp.base_url}/sandbox/sales_orders", json=seed).raise_for_status()
        assert sync.pull().appended == 1
        late = {"crmOrderId": "CRM-00002", "salesOrderNumber": "SO-4500102", "createdAt": "2026-01-02T09:00:00+00:00"}
        httpx.post(f"{erp.base_url}/sandbox/sales_orders", json=late).raise_for_status()
        assert sync.pull().appended == 1
    with session_scope(db_url) as s:
        sales_orders = {o.projection["refs"].get("erp_sales_order") for o in s.scalars(select(Order))}
    assert sales_orders == {"SO-4500101", "SO-4500102"}
