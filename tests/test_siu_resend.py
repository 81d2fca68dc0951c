"""An unchanged appointment resent with a new message time is a duplicate, not a conflict.

SIU carries no business time of its own: the SIU v2 mappings take `occurred_at` from MSH-7, the
message's creation time, and declare it transmission metadata (`resend_ignores: [occurred_at]`). An
interface engine that resends an unchanged appointment (a restart, a queue replay) stamps a new MSH-7
and MSH-10: that is answered AA and adds nothing. Another room under the same appointment is still a
conflict (AE 205), naming every differing field, the message time too. A mapping without the key (the
CRM's) compares as before. Through the MLLP listener, `cgthub hl7 ingest` and the CRM sync, on
SQLite and PostgreSQL.

Proves README, Mappings: "Two versions of an event that differ only in those fields are one event: the
resend is a duplicate (HL7: AA), nothing is held, and the first version stays with its time. When
another field differs too, the conflict (AE 205) names every differing field, the ignored ones
included, and the same change sent again at another time counts on that one entry", the misspelt
name refused at compile with its line, the SIU v2 declaration and the CRM's unchanged comparison."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cgthub import alerts, conflicts, ledger
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.mapping import registry
from cgthub.mapping.registry import compile_file
from cgthub.mapping.spec import MappingError
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, QuarantineEntry, RawMessage
from connectors.crm import sync as crm_sync
from tests.factories import enrolment
from tests.test_connectors_crm import _conn, _record, _serve
from tests.test_decisions import _add_operator
from tests.test_event_conflicts import _sign
from tests.test_hl7_listener import ORM, SIU, Running, exchange
from tests.test_siu_former_id import BOOKED_V1, CANCELLED, RESCHEDULED, _booked_under_v1

_SHIPPED = Path(registry.mappings_dir()) / "hl7"


def _resent(message: bytes, *, at: str, control: str) -> bytes:
    """`message` as an interface engine resends it: a new creation time (MSH-7) and control id (MSH-10)."""
    head, rest = message.split(b"\r", 1)
    fields = head.split(b"|")
    fields[6], fields[9] = at.encode(), control.encode()
    return b"|".join(fields) + b"\r" + rest


def _other_room(message: bytes) -> bytes:
    return message.replace(b"AIL|1||APH-ROOM-2", b"AIL|1||APH-ROOM-7")


def _entries(url: str) -> list[tuple[str, str]]:
    """Every hl7 ledger entry: its event id and stored body."""
    with session_scope(url) as s:
        rows = s.execute(
            select(LedgerEntry.source_event_id, LedgerEntry.body)
            .where(LedgerEntry.source_system == "hl7")
            .order_by(LedgerEntry.id)
        )
        return [(event_id, body) for event_id, body in rows]


def _conflicts(url: str) -> list[QuarantineEntry]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(QuarantineEntry).where(QuarantineEntry.stage == "conflict")))
        s.expunge_all()
    return rows


def _count(url: str, table: type, *where: object) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(table).where(*where)) or 0


def _enrol(url: str) -> None:
    with session_scope(url) as s:
        ledger.append(s, enrolment(1))


def test_an_unchanged_appointment_resent_with_a_new_message_time_and_control_id_is_a_duplicate(db_url):
    """Booked, moved, called off, then the whole day resent by the engine after a restart: three AA,
    no new event, nothing held, no alert, each resend archived; the first versions stay, times too."""
    _enrol(db_url)
    day = (SIU, RESCHEDULED, CANCELLED)
    with Running(db_url) as running:
        first = exchange(running.port, b"".join(frame(m) for m in (ORM, *day)), 4)
        assert [ack_code(a) for a in first] == ["AA"] * 4, first
        applied = _entries(db_url)
        again = [_resent(m, at="20260306070000", control=f"BOS09{n}") for n, m in enumerate(day)]
        acks = exchange(running.port, b"".join(frame(m) for m in again), 3)
    assert [ack_code(a) for a in acks] == ["AA"] * 3, acks
    assert _entries(db_url) == applied and len(applied) == 4  # the order and three appointment events
    assert all("2026-03-06T12:00:00" not in body for _, body in applied)  # 07:00 New York, never taken
    assert _conflicts(db_url) == []
    assert _count(db_url, Alert, Alert.kind == alerts.EVENT_CONFLICT) == 0
    assert _count(db_url, RawMessage, RawMessage.system == "hl7") == 7  # every resend archived all the same


def test_another_room_resent_with_a_new_message_time_is_held_naming_both_fields_once_per_change(db_url):
    """AE 205 with the room and the message time named; the same change resent later (another MSH-7)
    counts on the one entry; once discarded, it comes again answered AA."""
    _enrol(db_url)
    moved = _resent(_other_room(SIU), at="20260304080000", control="BOS0000399")
    moved_again = _resent(_other_room(SIU), at="20260304093000", control="BOS0000400")
    with Running(db_url) as running:
        assert [ack_code(a) for a in exchange(running.port, frame(ORM) + frame(SIU), 2)] == ["AA", "AA"]
        applied = _entries(db_url)
        (answer,) = exchange(running.port, frame(moved), 1)
        assert ack_code(answer) == "AE" and b"|205^" in answer, answer
        (answer,) = exchange(running.port, frame(moved_again), 1)
        assert ack_code(answer) == "AE" and b"|205^" in answer, answer
        (held,) = _conflicts(db_url)
        assert held.details["fields"] == ["attributes.location", "occurred_at"]
        assert "(fields: attributes.location, occurred_at)" in held.reason
        assert held.occurrences == 2 and held.status == "open"
        assert _count(db_url, Alert, Alert.kind == alerts.EVENT_CONFLICT) == 1
        assert _entries(db_url) == applied  # the first version, room 2, in force
        _add_operator(db_url, "coordinator", "discard_quarantine")
        assert '"result": "discarded"' in _sign(db_url, "discard", held.id, "DUPLICATE-MESSAGE")
        later = _resent(_other_room(SIU), at="20260304110000", control="BOS0000401")
        (answer,) = exchange(running.port, frame(later), 1)
    assert ack_code(answer) == "AA", answer
    assert [(e.status, e.occurrences) for e in _conflicts(db_url)] == [("discarded", 2)]
    assert _entries(db_url) == applied


def test_cgthub_hl7_ingest_takes_a_resent_appointment_as_a_duplicate_and_another_room_as_a_conflict(db_url, tmp_path):
    _enrol(db_url)
    first = tmp_path / "monday.hl7"
    first.write_bytes(b"\r\n".join((ORM, SIU)))
    done = CliRunner().invoke(cli, ["hl7", "ingest", str(first)])
    assert done.exit_code == 0, done.output
    applied = _entries(db_url)
    replayed = tmp_path / "replay.hl7"
    resend = _resent(SIU, at="20260306070000", control="BOS0000901")
    moved = _resent(_other_room(SIU), at="20260306070500", control="BOS0000902")
    replayed.write_bytes(b"\r\n".join((resend, moved)))
    run = CliRunner().invoke(cli, ["hl7", "ingest", str(replayed)])
    assert "2 messages: 1 accepted, 1 quarantined (AE: 1 resent with other content" in run.output, run.output
    assert _entries(db_url) == applied
    (held,) = _conflicts(db_url)
    assert held.details["fields"] == ["attributes.location", "occurred_at"]


def test_a_v1_booking_resent_under_v2_with_a_new_message_time_is_a_duplicate(db_url, tmp_path, monkeypatch):
    """Found under its former id (v1's form): v2's rule applies to the resend it maps."""
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU)
    with Running(db_url) as running:
        (answer,) = exchange(running.port, frame(_resent(SIU, at="20260306070000", control="BOS0000902")), 1)
    assert ack_code(answer) == "AA", answer
    assert [i for i, _ in _entries(db_url) if not i.endswith("#order")] == [BOOKED_V1]
    assert _conflicts(db_url) == []


def test_a_crm_enrolment_whose_time_alone_changed_is_still_a_conflict(db_url, monkeypatch):
    """The CRM mapping declares no resend_ignores: the enrolment time is content, as before."""
    registry.clear_cache()
    app, server = _serve()
    with server:
        _conn(monkeypatch, server)
        app.sandbox_state.upsert(_record(1))
        assert crm_sync.pull().appended == 1
        app.sandbox_state.upsert(_record(1, enrolledAt="2026-03-02T10:00:00"))
        changed = crm_sync.pull()
    assert (changed.appended, changed.quarantined) == (0, 1)
    (held,) = _conflicts(db_url)
    assert held.details["fields"] == ["occurred_at"] and held.system == "crm"
    assert conflicts.resend_ignores({"mapping_id": "crm/enrollment", "mapping_version": "v2"}) == ()


def test_a_misspelt_resend_ignores_name_stops_the_mapping_naming_file_and_line(tmp_path):
    """A name no rule fills would ignore nothing, silently: the mapping does not compile."""
    copy = tmp_path / "hl7" / "SIU_S12" / "v2.yaml"  # where the loader expects hl7/SIU^S12 v2
    copy.parent.mkdir(parents=True)
    shutil.copy(_SHIPPED / "SIU_S12" / "v2.yaml", copy)
    text = copy.read_text()
    assert "resend_ignores: [occurred_at]" in text
    copy.write_text(text.replace("resend_ignores: [occurred_at]", "resend_ignores: [occured_at]"))
    line = next(n for n, row in enumerate(copy.read_text().splitlines(), 1) if row.startswith("resend_ignores"))
    with pytest.raises(MappingError, match=r"'occured_at' is no field a rule fills") as raised:
        compile_file(copy)
    assert raised.value.line == line, raised.value


@pytest.mark.parametrize("kind", ["SIU_S12", "SIU_S13", "SIU_S15"])
def test_every_shipped_siu_v2_declares_the_message_time_transmission_metadata(kind):
    mapping = compile_file(_SHIPPED / kind / "v2.yaml")
    assert mapping.spec.resend_ignores == ["occurred_at"]
    assert all(e.rule.fields["occurred_at"].source == "MSH-7" for e in mapping.events)
    made_by = {"mapping_id": mapping.mapping_id, "mapping_version": mapping.version}
    assert conflicts.resend_ignores(made_by) == ("occurred_at",)
