"""README, Chain of identity and custody: "An event that matches no order yet waits in quarantine
(stage `correlate`) and goes through by itself once its order is enrolled", on the path a
deployment runs: the hospital's order over the MLLP listener before the CRM's enrolment, which then
arrives through the CRM connector's pull from its sandbox over HTTP; on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from cgthub import quarantine
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, RawMessage
from tests.test_hl7_listener import Running, exchange
from tests.test_residency_live import US_POSTAL, _crm_record, _enrol_through_crm, _orders
from tests.test_residency_live import _orm as _site_orm


def test_a_hospital_order_before_its_enrolment_goes_through_by_itself_once_the_crm_enrols_it(db_url, monkeypatch):
    early = _site_orm(1, "US-BOS-01", crm="CRM-00001", placer="PL-EARLY-1", control="EARLY1")
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(early), 1)
    assert ack_code(ack) == "AE" and b"204" in ack  # no order yet: kept, told so
    with session_scope(db_url) as session:
        (waiting,) = quarantine.list_entries(session)
        assert (waiting.stage, waiting.status) == ("correlate", "open")
        waiting_id, raw_id = waiting.id, waiting.raw_id

    _enrol_through_crm(db_url, monkeypatch, [_crm_record(1, "US-BOS-01", "US", US_POSTAL)])

    order = _orders(db_url)["CRM-00001"]
    with session_scope(db_url) as session:
        entry = quarantine.get(session, waiting_id)
        assert entry.status == "replayed" and order.id in (entry.resolution or "")
        assert quarantine.list_entries(session) == []  # nothing left open
        systems = session.scalars(select(LedgerEntry.source_system).where(LedgerEntry.order_id == order.id)).all()
        archived = session.get(RawMessage, raw_id)
        assert archived is not None
        raw_status = archived.status
    assert sorted(systems) == ["crm", "hl7"]  # the hospital's order is in the order's ledger
    assert order.status == "apheresis_scheduled", order.status
    assert raw_status == "processed", raw_status
