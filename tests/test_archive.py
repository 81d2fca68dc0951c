"""The raw archive: every payload kept sealed, a redelivery counted once, a tampered row never read back."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import select, update

from cgthub import archive
from cgthub.archive import Inbound
from cgthub.store import session_scope
from cgthub.tables import Alert, RawMessage, utcnow

# A PID segment's worth of PHI: it must never be readable in the stored row.
ORM = (
    b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303112000||ORM^O01|CTRL-1|P|2.5.1\r"
    b"PID|1||MRN48213377^^^US-BOS-01^MR||Smithson^Johanna||19710412|F\r"
)


def _store(url: str, payload: bytes = ORM, *, key: str | None = "CTRL-1", system: str = "hl7") -> archive.Archived:
    with session_scope(url) as session:
        return archive.store(session, system=system, kind="ORM^O01", channel="mllp", payload=payload, dedupe_key=key)


def _read(url: str, raw_id: int) -> bytes:
    with session_scope(url) as session:
        return archive.read(session, raw_id)


def test_a_payload_is_sealed_at_rest_and_read_back_whole(db_url):
    stored = _store(db_url)
    with session_scope(db_url) as session:
        row = session.get(RawMessage, stored.raw_id)
        assert row is not None
        assert b"Smithson" not in row.payload and b"19710412" not in row.payload and b"MRN48213377" not in row.payload
        assert (row.checksum, row.size, row.status, row.receive_count) == (
            archive.checksum(ORM),
            len(ORM),
            "received",
            1,
        )
    assert _read(db_url, stored.raw_id) == ORM
    with session_scope(db_url) as session, pytest.raises(LookupError, match="not in the archive"):
        archive.read(session, stored.raw_id + 1000)


def test_a_redelivery_is_counted_not_stored_and_a_reused_key_is_a_new_message_with_an_alert(db_url):
    first = _store(db_url)
    again = _store(db_url)
    assert (again.raw_id, again.duplicate, first.duplicate) == (first.raw_id, True, False)
    other = _store(db_url, ORM.replace(b"ORM^O01|CTRL-1", b"ORM^O01|CTRL-1 "))
    assert not other.duplicate and other.raw_id != first.raw_id
    elsewhere = _store(db_url, system="courier")  # the same key and bytes from another system are its own
    assert not elsewhere.duplicate and elsewhere.raw_id not in (first.raw_id, other.raw_id)
    with session_scope(db_url) as session:
        counts = dict(session.execute(select(RawMessage.id, RawMessage.receive_count)).all())
        assert counts == {first.raw_id: 2, other.raw_id: 1, elsewhere.raw_id: 1}
        (alert,) = session.scalars(select(Alert)).all()
        assert alert.kind == "control_id_reused" and alert.details["earlier_raw_id"] == first.raw_id
        assert "Smithson" not in alert.message and "CTRL-1" not in alert.message


def test_without_a_key_the_content_is_the_key(db_url):
    assert _store(db_url, key=None).raw_id == _store(db_url, key=None).raw_id
    assert _store(db_url, ORM + b"\r", key=None).raw_id != _store(db_url, key=None).raw_id


def test_a_batch_archives_each_content_once_however_often_it_repeats(db_url):
    now = utcnow()
    item = Inbound("crm", "order", "page", b'{"id": "CRM-1"}', now, "CRM-1@1")
    changed = Inbound("crm", "order", "page", b'{"id": "CRM-1", "v": 2}', now + timedelta(seconds=1), "CRM-1@1")
    with session_scope(db_url) as session:
        first, repeat, second = archive.store_many(session, [item, item, changed], status="processed")
    assert (first.duplicate, repeat.duplicate, second.duplicate) == (False, True, False)
    assert repeat.raw_id == first.raw_id != second.raw_id
    with session_scope(db_url) as session:
        again = archive.store_many(session, [changed, item])
    assert [a.raw_id for a in again] == [second.raw_id, first.raw_id] and all(a.duplicate for a in again)
    with session_scope(db_url) as session:
        rows = session.execute(select(RawMessage.id, RawMessage.status, RawMessage.receive_count)).all()
    assert sorted(rows) == sorted([(first.raw_id, "processed", 3), (second.raw_id, "processed", 2)])


def test_long_keys_stay_apart_and_a_resend_finds_its_copy(db_url):
    head = "file-drop/" + "x" * 400
    a, b = _store(db_url, key=head + "-a"), _store(db_url, b"other", key=head + "-b")
    assert a.raw_id != b.raw_id and _store(db_url, key=head + "-a").raw_id == a.raw_id
    with session_scope(db_url) as session:
        alerts = session.scalars(select(Alert)).all()
    assert alerts == []  # two long keys cut to one column are not taken for a reused key


@pytest.mark.parametrize("tamper", ["flipped byte", "edited checksum", "swapped payload"])
def test_read_refuses_a_tampered_row(db_url, tamper):
    stored = _store(db_url)
    neighbour = _store(db_url, ORM.replace(b"CTRL-1", b"CTRL-2"), key="CTRL-2")
    with session_scope(db_url) as session:
        row = session.get(RawMessage, stored.raw_id)
        assert row is not None
        if tamper == "flipped byte":
            sealed = bytearray(row.payload)
            sealed[20] ^= 1
            values: dict[str, object] = {"payload": bytes(sealed)}
        elif tamper == "edited checksum":
            values = {"checksum": archive.checksum(b"what the sender never sent")}
        else:
            other = session.get(RawMessage, neighbour.raw_id)
            assert other is not None
            values = {"payload": other.payload}
        session.execute(update(RawMessage).where(RawMessage.id == stored.raw_id).values(**values))
    with pytest.raises(InvalidTag):
        _read(db_url, stored.raw_id)
    assert _read(db_url, neighbour.raw_id) == ORM.replace(b"CTRL-1", b"CTRL-2")  # the others still read


def test_a_payload_sealed_under_another_key_is_not_read(db_url, monkeypatch):
    stored = _store(db_url)
    monkeypatch.setenv("CGTHUB_ARCHIVE_KEY", base64.urlsafe_b64encode(b"another key entirely, 32 bytes!!").decode())
    with pytest.raises(InvalidTag):
        _read(db_url, stored.raw_id)


def test_marks_move_the_status_and_stamp_the_processing(db_url):
    a, b = _store(db_url), _store(db_url, b"two", key="CTRL-2")
    with session_scope(db_url) as session:
        archive.mark(session, a.raw_id, "processed")
        archive.mark_many(session, {b.raw_id: "quarantined"})
    with session_scope(db_url) as session:
        rows = session.execute(select(RawMessage.id, RawMessage.status, RawMessage.processed_at)).all()
    assert {(rid, status) for rid, status, _ in rows} == {(a.raw_id, "processed"), (b.raw_id, "quarantined")}
    assert all(at is not None for _, _, at in rows)
