"""Appointments across the switch to HL7 mappings v2 (mappings/hl7/SIU_S12, S13, S15 v2.yaml): v1 made
their ids from SCH-1 (and AIS-4) alone, v2 from `<MSH-4>|<SCH-1>...`. v2 declares v1's form as each
event's `former_id`, so what v1 applied is still found: a later message of the same sending facility,
under whatever control id, is a duplicate if its content is the same and a conflict (AE 205) if not;
another facility's appointment under the same SCH-1 is its own; a replay with v2 pairs each event v1
recorded. Through the MLLP listener, `cgthub hl7 ingest` and `cgthub mappings replay`, on SQLite and
PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import ledger, settings
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.mapping import registry
from cgthub.mapping.fixtures import RECEIVED_AT, inputs
from cgthub.mapping.registry import compile_file
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, QuarantineEntry
from tests.factories import enrolment
from tests.test_decisions import _add_operator, _cli
from tests.test_event_conflicts import _sign
from tests.test_hl7_event_id_by_facility import _hl7_entries, _siu
from tests.test_hl7_listener import ORM, SIU, Running, exchange
from tests.test_residency_live import US_POSTAL, _crm_record, _enrol_through_crm, _orders
from tests.test_residency_live import _orm as _site_orm

KINDS = ("SIU_S12", "SIU_S13", "SIU_S15")
_SHIPPED = Path(registry.mappings_dir()) / "hl7"
RESCHEDULED = (_SHIPPED / "SIU_S13" / "fixtures" / "rescheduled.hl7").read_bytes()
CANCELLED = (_SHIPPED / "SIU_S15" / "fixtures" / "cancelled.hl7").read_bytes()
BOOKED_V1 = "appt:APT-5001@20260309080000"  # v1's ids of the three fixtures
RESCHEDULED_V1 = "resched:APT-5001@20260311080000"
CANCELLED_V1 = "appt-cancel:APT-5001"


def _control(message: bytes, control: str) -> bytes:
    """The same message under another control id (MSH-10), as a sender's resend or next message has."""
    head, rest = message.split(b"\r", 1)
    fields = head.split(b"|")
    fields[9] = control.encode()
    return b"|".join(fields) + b"\r" + rest


# The booking moved to another room under the same appointment id, in the sender's next message.
OTHER_ROOM = _control(SIU, "BOS0000399").replace(b"AIL|1||APH-ROOM-2", b"AIL|1||APH-ROOM-7")


def _v2_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """The hub reads a copy of the committed mappings with SIU's v2 files taken out (v1 in force);
    returned: where each file waits and where it goes back."""
    root = tmp_path / "mappings"
    shutil.copytree(Path(registry.mappings_dir()), root)
    moved = []
    for kind in KINDS:
        home = root / "hl7" / kind / "v2.yaml"
        aside = tmp_path / f"{kind}.v2.yaml"
        home.rename(aside)
        moved.append((aside, home))
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(root))
    settings.get_settings.cache_clear()
    registry.clear_cache()
    return moved


def _put_back(moved: list[tuple[Path, Path]]) -> None:
    for aside, home in moved:
        aside.rename(home)
    registry.clear_cache()


def _booked_under_v1(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *messages: bytes) -> None:
    """Order 1 (its ORM) and `messages` applied while SIU v1 is in force, then SIU v2 put in force."""
    moved = _v2_aside(tmp_path, monkeypatch)
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with Running(db_url) as running:
        acks = exchange(running.port, b"".join(frame(m) for m in (ORM, *messages)), 1 + len(messages))
    assert [ack_code(a) for a in acks] == ["AA"] * (1 + len(messages)), acks
    _put_back(moved)


def _appointments(url: str) -> list[str]:
    return [i for i in _hl7_entries(url) if not i.endswith("#order")]


def _conflicts(url: str) -> list[QuarantineEntry]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(QuarantineEntry).where(QuarantineEntry.stage == "conflict")))
        s.expunge_all()
    return rows


def test_v2_declares_for_every_shipped_appointment_fixture_the_id_v1_gives_it():
    """Each SIU fixture mapped by v2 names, as its former id, the very id v1 makes of it."""
    for kind in KINDS:
        v1, v2 = (compile_file(_SHIPPED / kind / f"v{n}.yaml") for n in (1, 2))
        for fixture in inputs(_SHIPPED / kind / "v2.yaml"):
            payload = fixture.read_bytes()
            made = [m.map(payload, raw_id=None, checksum="", received_at=RECEIVED_AT) for m in (v1, v2)]
            assert made[1], fixture
            assert [e.former_id for e in made[1]] == [e.source_event_id for e in made[0]], fixture
            assert all(e.source_event_id.split(":", 1)[1].startswith("US-BOS-01|") for e in made[1]), fixture


def test_a_booking_v1_applied_sent_again_under_v2_with_a_new_control_id_is_a_duplicate(db_url, tmp_path, monkeypatch):
    """The sender's next message about the same appointments (booked, moved, called off) carries new
    control ids and the same content: nothing is added, nothing held."""
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU, RESCHEDULED, CANCELLED)
    assert _appointments(db_url) == [BOOKED_V1, RESCHEDULED_V1, CANCELLED_V1]
    again = [_control(m, f"BOS09{n}") for n, m in enumerate((SIU, RESCHEDULED, CANCELLED))]
    with Running(db_url) as running:
        acks = exchange(running.port, b"".join(frame(m) for m in again), 3)
    assert [ack_code(a) for a in acks] == ["AA"] * 3, acks
    assert _appointments(db_url) == [BOOKED_V1, RESCHEDULED_V1, CANCELLED_V1]
    assert _conflicts(db_url) == []


def test_other_content_under_a_v1_appointment_id_from_the_same_sender_is_held_as_a_conflict(
    db_url, tmp_path, monkeypatch
):
    """The same facility, SCH-1 and start, another room, under a new control id: AE 205, held for an
    operator with the field's name, the first version in force."""
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU)
    with Running(db_url) as running:
        (answer,) = exchange(running.port, frame(OTHER_ROOM), 1)
    assert ack_code(answer) == "AE" and b"|205^" in answer, answer
    assert _appointments(db_url) == [BOOKED_V1]
    (held,) = _conflicts(db_url)
    assert held.status == "open" and "attributes.location" in held.reason
    assert held.details["former_id"] == BOOKED_V1  # an operator's retry supersedes v1's entry


def test_hl7_ingest_of_a_v1_booking_resent_and_changed_after_the_switch(db_url, tmp_path, monkeypatch):
    """`cgthub hl7 ingest` (the file drop's path): the resend counts as accepted, the changed one as
    resent with other content; the ledger still holds v1's one entry."""
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU)
    moved = _control(OTHER_ROOM, "BOS0000398").replace(b"|20260303113000||", b"|20260303114500||")
    drop = tmp_path / "drop.hl7"
    drop.write_bytes(_control(SIU, "BOS0000397") + b"\r\n" + moved + b"\r\n")
    mappings = str(tmp_path / "mappings")
    run = _cli("hl7", "ingest", str(drop), url=db_url, CGTHUB_MAPPINGS_DIR=mappings)
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stdout.split())
    assert "2 messages: 1 accepted, 1 quarantined (AE: 1 resent with other content" in said, said
    assert _appointments(db_url) == [BOOKED_V1]
    (held,) = _conflicts(db_url)
    assert "(fields: attributes.location, occurred_at)" in held.reason  # a new MSH-7 alone is a resend


def test_another_facilitys_appointment_under_the_same_sch_1_is_its_own(db_url, tmp_path, monkeypatch):
    """Boston booked APT-1 under v1; after the switch Heidelberg books its own APT-1 at the same hour
    for its own patient: applied as Heidelberg's appointment, Boston's untouched, nothing held."""
    moved = _v2_aside(tmp_path, monkeypatch)
    records = [_crm_record(1, "US-BOS-01", "US", US_POSTAL), _crm_record(2, "DE-HD-01", "DE", "691zx")]
    _enrol_through_crm(db_url, monkeypatch, records)
    sites = [(1, "US-BOS-01", "CRM-00001", "PL-1001"), (2, "DE-HD-01", "CRM-00002", "PLDE2")]
    orders = [_site_orm(n, site, crm=crm, placer=placer, control=f"O{n}") for n, site, crm, placer in sites]
    booked = [_siu(n, site, placer=placer, control=f"S{n}", appointment="APT-1") for n, site, _crm, placer in sites]
    with Running(db_url) as running:
        acks = exchange(running.port, b"".join(frame(m) for m in [*orders, booked[0]]), 3)
    assert [ack_code(a) for a in acks] == ["AA"] * 3, acks
    _put_back(moved)
    with Running(db_url) as running:
        (answer,) = exchange(running.port, frame(booked[1]), 1)
    assert ack_code(answer) == "AA", answer
    assert _appointments(db_url) == ["appt:APT-1@20260309080000", "appt:DE-HD-01|APT-1|20260309080000"]
    assert _conflicts(db_url) == []
    statuses = {crm: o.status for crm, o in _orders(db_url).items()}
    assert statuses == {"CRM-00001": "apheresis_scheduled", "CRM-00002": "apheresis_scheduled"}


def _replay(kind: str, version: str) -> str:
    run = CliRunner().invoke(cli, ["mappings", "replay", "--system", "hl7", "--kind", kind, "--version", version])
    assert run.exit_code == 0, run.output
    return " ".join(run.output.split())


def test_a_replay_with_v2_pairs_each_appointment_event_v1_recorded(db_url, tmp_path, monkeypatch):
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU, RESCHEDULED, CANCELLED)
    for kind in KINDS:
        said = _replay(kind, "v2")
        assert "1 events unchanged, 0 corrected, 0 added" in said, (kind, said)
    assert _appointments(db_url) == [BOOKED_V1, RESCHEDULED_V1, CANCELLED_V1]


def test_a_replay_with_v2_of_other_content_corrects_v1s_appointment_and_adds_none(db_url, tmp_path, monkeypatch):
    """A v2 that no longer maps the room (edited in the hub's copy) pairs the booking by its former id
    and supersedes it: a correction, not a second booking."""
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU)
    v2 = registry.mappings_dir() / "hl7" / "SIU_S12" / "v2.yaml"
    v2.write_text(v2.read_text().replace("      attributes.location: {from: AIL-3}\n", "", 1))
    registry.clear_cache()
    said = _replay("SIU_S12", "v2")
    assert "0 events unchanged, 1 corrected, 0 added" in said, said
    assert _appointments(db_url) == [BOOKED_V1, "appt:US-BOS-01|APT-5001|20260309080000@v2"]
    with session_scope(db_url) as s:
        body = s.scalars(select(LedgerEntry.body).where(LedgerEntry.source_event_id.like("%@v2"))).one()
        assert f'"supersedes":"{BOOKED_V1}"' in body
        assert ledger.verify(s)[1] == []


def test_a_replay_with_a_v2_that_declares_no_former_id_is_still_refused(db_url, tmp_path, monkeypatch):
    """Without former ids nothing pairs v2's ids with v1's: the replay refuses the payload and appends
    nothing, as before v2 declared them."""
    _booked_under_v1(db_url, tmp_path, monkeypatch, SIU)
    v2 = registry.mappings_dir() / "hl7" / "SIU_S12" / "v2.yaml"
    lines = v2.read_text().splitlines(keepends=True)
    v2.write_text("".join(line for line in lines if not line.lstrip().startswith("former_id:")))
    assert "former_id:" not in v2.read_text() and len(lines) == len(v2.read_text().splitlines()) + 1
    registry.clear_cache()
    said = _replay("SIU_S12", "v2")
    assert "replay it with the version that made them" in said, said
    assert _appointments(db_url) == [BOOKED_V1]


def _room_change_held_under_v1(db_url: str, tmp_path: Path, monkeypatch, *, retried: bool) -> QuarantineEntry:
    """Under v1 the sender moved the booking to another room under the same appointment id: held
    (AE 205), then (`retried`) applied by an operator as a correction; then SIU v2 put in force."""
    moved = _v2_aside(tmp_path, monkeypatch)
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with Running(db_url) as running:
        acks = [exchange(running.port, frame(m), 1)[0] for m in (ORM, SIU, OTHER_ROOM)]
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AE"], acks
    (held,) = _conflicts(db_url)
    if retried:
        _add_operator(db_url, "coordinator", "retry_quarantine", "discard_quarantine")
        assert '"result": "released"' in _sign(db_url, "retry", held.id, "CHANGE-CONFIRMED")
        assert _appointments(db_url) == [BOOKED_V1, f"{BOOKED_V1}@c{held.id}"]
    _put_back(moved)
    return held


def test_content_an_operator_confirmed_under_v1_is_a_duplicate_when_the_sender_sends_it_again_under_v2(
    db_url, tmp_path, monkeypatch
):
    """After the switch the sender repeats the room an operator applied under v1, under a new control
    id: what was decided is not put before an operator again (as under v1)."""
    held = _room_change_held_under_v1(db_url, tmp_path, monkeypatch, retried=True)
    with Running(db_url) as running:
        (answer,) = exchange(running.port, frame(_control(OTHER_ROOM, "BOS0000400")), 1)
    assert ack_code(answer) == "AA", answer
    assert _appointments(db_url) == [BOOKED_V1, f"{BOOKED_V1}@c{held.id}"]
    assert [c.status for c in _conflicts(db_url)] == ["replayed"]


def test_a_version_held_under_v1_sent_again_under_v2_counts_on_the_same_entry(db_url, tmp_path, monkeypatch):
    """No one has decided yet: the sender's repeat under v2 is the same waiting version (one entry,
    seen twice), not a second entry for an operator."""
    _room_change_held_under_v1(db_url, tmp_path, monkeypatch, retried=False)
    with Running(db_url) as running:
        (answer,) = exchange(running.port, frame(_control(OTHER_ROOM, "BOS0000400")), 1)
    assert ack_code(answer) == "AE" and b"|205^" in answer, answer
    (held,) = _conflicts(db_url)
    assert (held.status, held.occurrences, len(held.details["raw_ids"])) == ("open", 2, 2)
    assert _appointments(db_url) == [BOOKED_V1]


def test_a_replay_with_v2_still_refuses_a_payload_whose_v1_event_an_operator_corrected(db_url, tmp_path, monkeypatch):
    """The room change's payload holds only its correction (`<v1 id>@c<n>`), which v1 may have taken
    from another facility's message: nothing pairs it with v2's id, so that payload is refused, the
    booking's own payload pairs, and nothing is appended."""
    held = _room_change_held_under_v1(db_url, tmp_path, monkeypatch, retried=True)
    said = _replay("SIU_S12", "v2")
    assert "1 events unchanged, 0 corrected, 0 added" in said, said
    assert f"({BOOKED_V1}@c{held.id}); replaying it would record its events a second time" in said, said
    assert _appointments(db_url) == [BOOKED_V1, f"{BOOKED_V1}@c{held.id}"]
