"""Markets and residency where data enters, through the paths a deployment runs: the CRM connector
against its sandbox over HTTP, the MLLP listener over a loopback socket, the API over HTTP.

A DE enrolment's postal prefix is dropped and DE hospital order numbers are tokenized before the
central store; a US record on the same CRM page keeps its own market's rules. An HL7 sender may
touch only orders of the sites its facility is registered for, and no ACK or alert text names
another site's order.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cgthub import alerts, quarantine
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.identifiers import mod37_2_check
from cgthub.lifecycle import OrderProjection
from cgthub.pseudonym import is_pseudonym
from cgthub.store import session_scope
from cgthub.tables import Base, LedgerEntry, Order
from connectors.common import breaker
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from tests import api_server
from tests.test_hl7_listener import Running, exchange

api = api_server.api

DE_POSTAL = "691zx"  # letters no hash or timestamp holds: found only if the prefix itself leaked
US_POSTAL = "021zx"
DE_PLACER = "PLDEQ2002"
DE_WAITING_PLACER = "PLDEQ7777"


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()
    yield
    breaker._breakers.clear()


def _din(n: int) -> str:
    body = f"W123426{n:06d}"
    return body + mod37_2_check(body)


def _crm_record(n: int, site: str, country: str, postal: str) -> dict:
    return {
        "id": f"CRM-{n:05d}",
        "status": "ENROLLED",
        "enrolledAt": "2026-03-02T09:00:00",
        "modifiedAt": "2026-03-02T09:00:00",
        "product": "KYM-CD19",
        "site": {"id": site, "country": country},
        "patient": {"coiId": f"CHW1234260000{n:02d}", "mrn": f"MRN{n:08d}", "postalPrefix": postal},
    }


def _orm(n: int, facility: str, *, crm: str, placer: str, control: str, mrn: str | None = None) -> bytes:
    return (
        f"MSH|^~\\&|EPIC|{facility}|CGTHUB|HUB|20260303112000||ORM^O01^ORM_O01|{control}|P|2.5.1\r"
        f"PID|1||{mrn or f'MRN{n:08d}'}^^^{facility}^MR~CHW1234260000{n:02d}^^^COI^PN||Doe^Jane||19710412|F|||"
        f"Hauptstr 1^^Heidelberg^^{DE_POSTAL}\r"
        f"ORC|NW|{placer}|FL-{n}|{crm}|SC||||20260303112000\r"
        f"OBR|1|{placer}|FL-{n}|APH^Apheresis collection^L|||20260309080000\r"
    ).encode()


def _oru(n: int, facility: str, *, placer: str, din: str, control: str) -> bytes:
    return (
        f"MSH|^~\\&|EPIC|{facility}|CGTHUB|HUB|20260309150000||ORU^R01^ORU_R01|{control}|P|2.5.1\r"
        f"PID|1||MRN{n:08d}^^^{facility}^MR~CHW1234260000{n:02d}^^^COI^PN||Doe^Jane||19710412|F\r"
        f"OBR|1|{placer}|FL-{n}|APH^Apheresis collection^L\r"
        f"SPM|1|{din}||PBMC^Apheresis product|||||||||||||20260309120000\r"
    ).encode()


def _enrol_through_crm(url: str, monkeypatch: pytest.MonkeyPatch, records: list[dict]) -> None:
    app = crm_sandbox.create_app()
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        for record in records:
            app.sandbox_state.upsert(record)
        report = crm_sync.pull(database_url=url)
    assert (report.records, report.quarantined, report.errors) == (len(records), 0, [])


def _orders(url: str) -> dict[str, Order]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(Order)))
        s.expunge_all()
    return {o.projection["refs"]["crm_order_id"]: o for o in rows}


def _whole_store(url: str) -> str:
    """Every row of every table of the hub's database, as text (the raw archive is sealed)."""
    with session_scope(url) as s:
        return "\n".join(
            repr(tuple(row)) for table in Base.metadata.sorted_tables for row in s.execute(select(table)).all()
        )


def test_de_postal_prefix_and_hospital_order_numbers_never_reach_the_central_store(api, monkeypatch):
    url = api.database_url
    # One CRM page, two markets: DE drops the postal prefix, US keeps it.
    _enrol_through_crm(
        url,
        monkeypatch,
        [_crm_record(1, "US-BOS-01", "US", US_POSTAL), _crm_record(2, "DE-HD-01", "DE", DE_POSTAL)],
    )
    with Running(url) as running:
        acks = exchange(
            running.port,
            frame(_orm(2, "DE-HD-01", crm="CRM-00002", placer=DE_PLACER, control="HD1"))
            + frame(_orm(7, "DE-HD-01", crm="CRM-00077", placer=DE_WAITING_PLACER, control="HD2")),
            2,
        )
    assert [ack_code(a) for a in acks] == ["AA", "AE"]  # the second waits for an order not enrolled yet
    orders = _orders(url)
    assert orders["CRM-00002"].market == "DE" and orders["CRM-00002"].status == "apheresis_scheduled"

    with session_scope(url) as s:
        bodies = {
            e.source_event_id: e.body for e in s.scalars(select(LedgerEntry).where(LedgerEntry.order_id.isnot(None)))
        }
        waiting = quarantine.list_entries(s, stage=quarantine.Stage.CORRELATE)
    assert US_POSTAL in bodies["enrol:CRM-00001"]  # the US market keeps it: the rule is DE's, not global
    assert "postal_code" not in bodies["enrol:CRM-00002"]
    placed = OrderProjection.model_validate(orders["CRM-00002"].projection).refs
    assert is_pseudonym(placed.hospital_placer_order) and is_pseudonym(placed.hospital_filler_order)
    (entry,) = waiting
    assert is_pseudonym(entry.details["event"]["refs"]["hospital_placer_order"])

    client = api.client(api.key("admin", "status:read", "timeline:read", "custody:read"))
    order_id = orders["CRM-00002"].id
    answers = [
        client.get(path)
        for path in (
            "/orders",
            f"/orders/{order_id}",
            f"/orders/{order_id}/timeline",
            f"/orders/{order_id}/custody",
            f"/orders/{order_id}/fhir",
            "/events",
        )
    ]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    seen = "\n".join(a.text for a in answers) + _whole_store(url)
    for clear in (DE_POSTAL, DE_PLACER, DE_WAITING_PLACER):
        assert clear not in seen


def test_an_hl7_sender_cannot_rehome_another_sites_order(db_url, monkeypatch):
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(1, "US-BOS-01", "US", US_POSTAL)])
    before = _orders(db_url)["CRM-00001"]
    # A sender registered for DE-HD-01 names the Boston order, with a patient of its own.
    intruder = _orm(1, "DE-HD-01", crm="CRM-00001", placer="PL-X1", control="HDX1", mrn="MRN99999999")
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(intruder), 1)
    assert ack_code(ack) == "AE"
    assert before.id.encode() not in ack and b"US-BOS-01" not in ack
    after = _orders(db_url)["CRM-00001"]
    assert (after.site, after.market, after.status, after.on_hold) == ("US-BOS-01", "US", "enrolled", False)
    assert after.projection["patient_pseudonyms"] == before.projection["patient_pseudonyms"]
    assert after.ledger_length == before.ledger_length
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s, stage=quarantine.Stage.IDENTITY)
        (alert,) = alerts.open_alerts(s)
        assert entry.order_id == before.id and "DE-HD-01" in str(entry.details["conflicts"])
        assert (alert.kind, alert.order_id) == ("sender_scope_violation", before.id)


def test_ack_and_alerts_name_no_other_sites_order(db_url, monkeypatch):
    _enrol_through_crm(
        db_url,
        monkeypatch,
        [_crm_record(1, "US-BOS-01", "US", US_POSTAL), _crm_record(3, "US-SEA-03", "US", US_POSTAL)],
    )
    with Running(db_url) as running:
        setup = exchange(
            running.port,
            frame(_orm(1, "US-BOS-01", crm="CRM-00001", placer="PL-1001", control="B1"))
            + frame(_orm(3, "US-SEA-03", crm="CRM-00003", placer="PL-3003", control="S1"))
            + frame(_oru(3, "US-SEA-03", placer="PL-3003", din=_din(3), control="S2")),
            3,
        )
        assert [ack_code(a) for a in setup] == ["AA", "AA", "AA"]
        # Boston reports its own collection, labelled with Seattle's DIN.
        (ack,) = exchange(running.port, frame(_oru(1, "US-BOS-01", placer="PL-1001", din=_din(3), control="B2")), 1)
    orders = _orders(db_url)
    boston, seattle = orders["CRM-00001"].id, orders["CRM-00003"].id
    assert ack_code(ack) == "AE" and b"chain-of-identity" in ack
    assert seattle.encode() not in ack and boston.encode() not in ack and b"CRM-00003" not in ack
    with session_scope(db_url) as s:
        raised = {a.order_id: a for a in alerts.open_alerts(s) if a.kind == "coi_discrepancy"}
    assert raised.keys() == {boston, seattle}
    assert seattle not in raised[boston].message and boston not in raised[seattle].message
    assert raised[boston].details["related_orders"] == [seattle]  # the link, for operators with scope
