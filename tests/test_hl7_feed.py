"""The hospital feed end to end: simulator over MLLP and batch files in, ORR^O02 status out."""

import json

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import func, select

from cgthub import ledger
from cgthub.hl7 import outbound
from cgthub.hl7.ack import ack_code
from cgthub.hl7.files import ingest_paths, split_messages
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from connectors.hospital import simulator
from connectors.hospital.receiver import HospitalReceiver
from tests.factories import enrolment
from tests.test_hl7_listener import Running

PATIENTS = range(1, 4)


def _enrol(url):
    with session_scope(url) as s:
        ledger.append_many(s, [enrolment(n) for n in PATIENTS])


def _statuses(url):
    with session_scope(url) as s:
        return sorted((o.coi_id, o.status, tuple(o.projection["dins"])) for o in s.scalars(select(Order)))


def test_simulated_hospital_over_mllp(db_url):
    _enrol(db_url)
    with Running(db_url) as running:
        acks = simulator.send_over_mllp("127.0.0.1", running.port, list(simulator.feed(PATIENTS)))
    assert [ack_code(a) for a in acks] == ["AA"] * 9
    assert [s[1] for s in _statuses(db_url)] == ["collected"] * 3


@pytest.mark.parametrize("newline", [b"\r", b"\n", b"\r\n"])
def test_batch_files_with_any_line_ending(db_url, tmp_path, newline):
    _enrol(db_url)
    path = simulator.write_batch_file(tmp_path / "feed.hl7", list(simulator.feed(PATIENTS)), newline=newline)
    dropped = path.read_bytes()
    assert len(split_messages(dropped)) == 9
    report = ingest_paths([path], database_url=db_url)
    assert (report.messages, report.accepted, report.errors, report.rejected) == (9, 9, 0, 0)
    assert (tmp_path / "done" / "feed.hl7.receipt.json").exists() and not path.exists()
    assert [s[1] for s in _statuses(db_url)] == ["collected"] * 3
    with session_scope(db_url) as s:
        entries = s.scalar(select(func.count()).select_from(LedgerEntry))
    assert entries == 3 + 3 * 4  # enrolments; per patient: order, booking, collection, cell counts
    again = tmp_path / "again.hl7"
    again.write_bytes(dropped)
    ingest_paths([again], database_url=db_url)  # the same feed dropped twice is applied once
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(LedgerEntry)) == entries


def test_file_without_any_message_goes_to_failed(db_url, tmp_path):
    path = tmp_path / "junk.hl7"
    path.write_bytes(b"hello, this is not HL7")
    report = ingest_paths([path], database_url=db_url)
    assert report.failed_files == ["junk.hl7"] and (tmp_path / "failed" / "junk.hl7.receipt.json").exists()


def test_outbound_status_is_a_valid_orr_o02_without_phi_and_is_retried():
    payload = {
        "order_id": "ORD-ABC",
        "status": "manufacturing",
        "status_since": "2026-03-11T07:00:00+00:00",
        "coi_id": "CHW123426000001",
        "site": "US-BOS-01",
        "idempotency_key": "hl7:ORD-ABC:12",
        "refs": {"hospital_placer_order": "PL-1", "crm_order_id": "CRM-00001"},
    }
    with HospitalReceiver(refuse_first=1) as hospital:
        result = outbound.push(payload, address=hospital.address)
        outbound.push({**payload, "status": "on_hold", "idempotency_key": "hl7:ORD-ABC:13"}, address=hospital.address)
    assert result["status"] == "manufacturing" and len(hospital.received) == 2
    message = parse_message(hospital.received[0].decode(), find_groups=True)
    assert message.msh.msh_9.to_er7() == "ORR^O02^ORR_O02"
    er7 = hospital.received[0].decode()
    assert "ORC|SC|PL-1|ORD-ABC|CRM-00001|IP" in er7 and "cgthub status manufacturing" in er7
    assert "|HD|" in hospital.received[1].decode()
    assert "MRN" not in er7


def test_outbound_gives_up_with_a_clear_error_when_the_hospital_keeps_refusing():
    payload = {"order_id": "O", "status": "released", "idempotency_key": "k", "refs": {}}
    with HospitalReceiver(refuse_first=10) as hospital, pytest.raises(outbound.HospitalRefused, match="answered AE"):
        outbound.push(payload, address=hospital.address, attempts=2)
    with pytest.raises(ValueError, match="needs a host and a port"):
        outbound.push(payload, address="mllp://nowhere")


def test_each_message_is_parsed_once_and_maps_as_a_fresh_parse_would(db_url, monkeypatch):
    """The listener's MSH read hands its parse to the mapping: same events, half the parsing."""
    from cgthub import hl7v2
    from cgthub.hl7 import inbound
    from cgthub.mapping import get_mapper

    _enrol(db_url)
    feed = list(simulator.feed(PATIENTS))
    expected = [
        get_mapper("hl7", hl7v2.parse(m).message_type).map(m, raw_id=None, checksum="", received_at=ledger.utcnow())
        for m in feed
    ]
    calls = []
    real_parse = hl7v2.parse
    monkeypatch.setattr(hl7v2, "parse", lambda payload: calls.append(1) or real_parse(payload))
    with session_scope(db_url) as s:
        acks = inbound.apply(s, [inbound.read(m) for m in feed], "mllp")
    assert [ack_code(a) for a in acks] == ["AA"] * len(feed) and len(calls) == len(feed)
    with session_scope(db_url) as s:
        bodies = s.scalars(select(LedgerEntry.body).where(LedgerEntry.source_system == "hl7")).all()
    made = {(e.source_event_id, e.event_type.value) for events in expected for e in events}
    assert {(b["source_event_id"], b["event_type"]) for b in map(json.loads, bodies)} == made
