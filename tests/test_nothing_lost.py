"""Nothing ACKed is lost: every message the listener answers AA is applied, a reused control id
with other content is a new message, one poison message fails only itself, and a type the hub does
not handle is refused at once. Driven through the MLLP listener on a loopback socket and the HL7
inbox step, on SQLite and PostgreSQL."""

import json
import socket
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from cgthub import alerts, ledger, partner_sync, pipeline, quarantine
from cgthub.archive import Inbound
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, Order, QuarantineEntry, RawMessage
from connectors.hospital import simulator
from tests.factories import enrolment, happy_path
from tests.test_hl7_listener import ORM, Running, exchange
from tests.test_pipeline import JsonEventMapper

CANCEL = (
    b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260304090000||ORM^O01^ORM_O01|BOS0000101|P|2.5.1\r"
    b"PID|1||MRN48213377^^^US-BOS-01^MR~CHW123426000001^^^COI^PN\r"
    b"ORC|CA|PL-1001||CRM-00001|CA||||20260304090000|||||||^patient withdrew consent\r"
)  # the same MSH-10 as ORM: the hospital reused its control id for the cancel


def _enrol(url, patients):
    with session_scope(url) as s:
        ledger.append_many(s, [enrolment(n) for n in patients])


def _orm(n):
    return next(simulator.feed(range(n, n + 1)))


def _siu(n):
    return list(simulator.feed(range(n, n + 1)))[1]


def _send_together(running, messages):
    """Each message on a connection of its own, all open before any is sent: one group commit."""
    socks = [socket.create_connection(("127.0.0.1", running.port), timeout=20) for _ in messages]
    try:
        deadline = time.monotonic() + 5
        while len(running.listener._connections) < len(socks) and time.monotonic() < deadline:
            time.sleep(0.01)
        batches = running.listener.stats.batches
        for sock, message in zip(socks, messages, strict=True):
            sock.sendall(frame(message))
        acks = []
        for sock in socks:
            decoder, got = FrameDecoder(), []
            while not got:
                block = sock.recv(65536)
                assert block, "the listener closed the connection without an ACK"
                got = [a for a in decoder.feed(block) if isinstance(a, bytes)]
            acks.append(got[0])
        assert running.listener.stats.batches == batches + 1, "the messages did not share one group commit"
        return acks
    finally:
        for sock in socks:
            sock.close()


def _status(url, n):
    with session_scope(url) as s:
        return s.scalar(
            select(Order.status).join_from(Order, LedgerEntry).where(LedgerEntry.source_event_id.like(f"%ORM-{n}#%"))
        )


def test_a_new_message_beside_a_resend_is_applied_under_archive_only(db_url):
    """A resent ORM and a new SIU in one write: the SIU is ACKed AA, so the inbox step applies it."""
    _enrol(db_url, [1])
    with Running(db_url, apply=False) as running:
        (first,) = exchange(running.port, frame(_orm(1)), 1)
        assert partner_sync.apply_hl7_inbox(database_url=db_url)["appended"] == 1
        batches = running.listener.stats.batches
        acks = exchange(running.port, frame(_orm(1)) + frame(_siu(1)), 2)
        assert running.listener.stats.batches == batches + 1  # the resend and the new one shared a commit
    assert [ack_code(a) for a in [first, *acks]] == ["AA", "AA", "AA"]
    applied = partner_sync.apply_hl7_inbox(database_url=db_url)
    assert applied["payloads"] == 1 and applied["appended"] == 1
    with session_scope(db_url) as s:
        assert sorted(s.scalars(select(RawMessage.status).where(RawMessage.system == "hl7"))) == ["processed"] * 2
        assert s.scalar(select(RawMessage.receive_count).where(RawMessage.dedupe_key.like("%ORM-1"))) == 2
        assert s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.source_system == "hl7")) == 2


@pytest.mark.parametrize("apply", [True, False], ids=["apply", "archive-only"])
def test_a_reused_control_id_with_other_content_is_a_new_message_and_alerted(db_url, apply):
    _enrol(db_url, [1])
    with Running(db_url, apply=apply) as running:
        acks = [exchange(running.port, frame(message), 1)[0] for message in (ORM, CANCEL, CANCEL)]
    if not apply:
        partner_sync.apply_hl7_inbox(database_url=db_url)
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AA"]
    with session_scope(db_url) as s:
        assert s.scalar(select(Order.status)) == "cancelled"
        raws = s.execute(select(RawMessage.id, RawMessage.receive_count).order_by(RawMessage.id)).all()
        assert [count for _id, count in raws] == [1, 2]  # the exact resend of the cancel is counted once
        (alert,) = s.scalars(select(Alert).where(Alert.kind == alerts.CONTROL_ID_REUSED)).all()
        assert alert.details["raw_id"] == raws[1].id and alert.details["earlier_raw_id"] == raws[0].id
        assert "MRN48213377" not in alert.message and "Smithson" not in alert.message
        assert "BOS0000101" not in alert.message  # only raw ids: the sender's id is partner data
        assert s.scalar(select(func.count()).select_from(QuarantineEntry)) == 0


def test_every_partners_dedupe_key_names_a_message_with_its_content(session):
    """A drop-folder file name reused for another file is a new payload too; the same file again is not."""
    enrolled, scheduled = happy_path(1)[:2]
    now = datetime.now(UTC)

    def item(event):
        payload = json.dumps(event.to_json_dict()).encode()
        return Inbound("crm", "event", "file", payload, now, dedupe_key="file:crm:event:orders.json")

    first = pipeline.ingest_batch(session, [item(enrolled)], lambda _i: JsonEventMapper())
    again = pipeline.ingest_batch(session, [item(scheduled), item(enrolled)], lambda _i: JsonEventMapper())
    assert first[0].appended == 1
    assert again[0].appended == 1 and not again[0].duplicate_payload
    assert again[1].duplicate_payload and again[1].raw_id == first[0].raw_id
    assert session.scalar(select(Order.status)) == "apheresis_scheduled"
    assert [a.kind for a in alerts.open_alerts(session)] == [alerts.CONTROL_ID_REUSED]


def _poisons():
    """Four messages that each once failed the whole group commit (or were AA'd and dropped)."""
    bad_time = _orm(5).replace(b"SC||||20260303112000", b"SC||||99991231235959")
    long_id = _orm(6).replace(b"US-BOS-01-ORM-6", b"C" * 300)
    long_placer = _orm(7).replace(b"PL-7", b"Q" * 300)
    long_type = _orm(8).replace(b"ORM^O01^ORM_O01", b"Z" * 100 + b"^O01")
    return [bad_time, long_id, long_placer, long_type]


def test_one_poison_message_fails_only_itself_in_a_shared_group_commit(db_url):
    _enrol(db_url, range(1, 9))
    good = [_orm(n) for n in range(1, 5)]
    with Running(db_url, batch_window=2.0) as running:
        acks = _send_together(running, good + _poisons())
    codes = [ack_code(a) for a in acks]
    assert codes == ["AA"] * 4 + ["AE", "AE", "AE", "AR"]
    assert b"ORC-9" in acks[4] and b"cannot be read (OverflowError)" in acks[4]
    assert b"source_event_id" in acks[5] and b"at most 200 characters" in acks[5]
    assert b"hospital_placer_order is 300 characters" in acks[6]
    assert b"unsupported message type" in acks[7]
    assert not any(b"MRN0000000" in a or b"Patient^Test" in a for a in acks)
    assert [_status(db_url, n) for n in range(1, 5)] == ["apheresis_scheduled"] * 4
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(RawMessage)) == 8  # every message archived
        entries = s.scalars(select(QuarantineEntry).order_by(QuarantineEntry.raw_id)).all()
        assert [e.stage for e in entries] == ["map", "validate", "validate", "map"]
        assert all(e.reason for e in entries)
        stored = s.execute(select(RawMessage.status, func.count()).group_by(RawMessage.status)).all()
        assert dict(stored) == {"processed": 4, "quarantined": 4}


def test_poison_messages_under_archive_only_are_quarantined_by_the_inbox_step(db_url):
    _enrol(db_url, range(1, 9))
    good = [_orm(n) for n in range(1, 5)]
    with Running(db_url, apply=False, batch_window=2.0) as running:
        acks = _send_together(running, good + _poisons())
    assert [ack_code(a) for a in acks] == ["AA"] * 7 + ["AR"]  # the unhandled type is refused at once
    applied = partner_sync.apply_hl7_inbox(database_url=db_url)
    assert applied["appended"] == 4 and applied["quarantined"] == 3
    assert [_status(db_url, n) for n in range(1, 5)] == ["apheresis_scheduled"] * 4
    with session_scope(db_url) as s:
        reasons = s.scalars(select(QuarantineEntry.reason).order_by(QuarantineEntry.raw_id)).all()
        assert len(reasons) == 4 and "OverflowError" in reasons[0] and "300 characters" in reasons[2]
        assert s.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.status == "received")) == 0


def test_an_unexpected_crash_while_applying_fails_only_that_message(db_url, monkeypatch):
    """Whatever raises past the mapping (here a stand-in fault in the ledger for one message): the
    batch is retried message by message, the rest applied, that one archived and quarantined."""
    _enrol(db_url, range(1, 5))
    append_many = ledger.append_many

    def faulty(session, events):
        if any("|US-BOS-01-ORM-3#" in e.source_event_id for e in events):  # <MSH-4>|<MSH-10>#order
            raise RuntimeError("a fault no one foresaw")
        return append_many(session, events)

    monkeypatch.setattr(ledger, "append_many", faulty)
    with Running(db_url, batch_window=2.0) as running:
        acks = _send_together(running, [_orm(n) for n in range(1, 5)])
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AE", "AA"]
    assert b"could not be applied: an unexpected RuntimeError" in acks[2]
    assert [_status(db_url, n) for n in (1, 2, 4)] == ["apheresis_scheduled"] * 3
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s)
        assert s.get(RawMessage, entry.raw_id).status == "quarantined" and entry.stage == "validate"
        assert s.scalar(select(func.count()).select_from(RawMessage)) == 4


def test_a_database_refusal_fails_only_that_message(db_url, monkeypatch):
    """Without the check before insert, PostgreSQL refuses a 300-character placer order id at the
    insert: that message is quarantined, its neighbours applied. SQLite keeps any length."""
    monkeypatch.setattr(pipeline, "_beyond_columns", lambda _events: None)
    _enrol(db_url, range(1, 8))
    with Running(db_url, batch_window=2.0) as running:
        acks = _send_together(running, [_orm(1), _poisons()[2], _orm(2)])
    postgres = db_url.startswith("postgresql")
    assert [ack_code(a) for a in acks] == ["AA", "AE" if postgres else "AA", "AA"]
    if postgres:
        assert b"a value does not fit the store (StringDataRightTruncation)" in acks[1]
    assert [_status(db_url, n) for n in (1, 2)] == ["apheresis_scheduled"] * 2


def test_an_unhandled_message_type_gets_ar_at_once_under_archive_only(db_url):
    unknown = b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303||ZZZ^Z99|BOS77|P|2.5.1\rZZZ|1|whatever\r"
    with Running(db_url, apply=False) as running:
        (ack,) = exchange(running.port, frame(unknown), 1)
        (again,) = exchange(running.port, frame(unknown), 1)
    assert ack_code(ack) == "AR" and b"unsupported message type ZZZ\\S\\Z99" in ack and ack_code(again) == "AR"
    with session_scope(db_url) as s:
        row = s.scalars(select(RawMessage)).one()
        assert row.status == "quarantined" and row.receive_count == 2
        (entry,) = quarantine.list_entries(s)
        assert entry.stage == "map" and entry.raw_id == row.id and "no mapping is configured" in entry.reason
    assert partner_sync.apply_hl7_inbox(database_url=db_url)["payloads"] == 0
