"""HL7 event ids are scoped by the sending facility (mappings/hl7/*/v2.yaml): `<MSH-4>|<MSH-10>#order`,
`appt:<MSH-4>|<SCH-1>|<AIS-4>`, so two sites may use one control id or appointment id. v1 made them from
MSH-10 (or SCH-1) alone, so the switch changes the id of what was applied before it: the same bytes
resent are still the archive's duplicate, applied once. v2 declares v1's form as each event's
`former_id`, so across the switch the ledger finds what v1 applied for the same sender (other content
under its control id is a conflict, not a second event) and a replay with v2 pairs the events v1
recorded. Through the MLLP listener and the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import ledger, settings
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.mapping import registry
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order, QuarantineEntry, RawMessage
from tests.factories import enrolment
from tests.test_decisions import _add_operator
from tests.test_event_conflicts import _sign
from tests.test_hl7_listener import ORM, SIU, Running, exchange
from tests.test_residency_live import US_POSTAL, _crm_record, _din, _enrol_through_crm, _orders, _oru
from tests.test_residency_live import _orm as _site_orm

MOVED = ORM.replace(b"APH^Apheresis collection^L|||20260309080000", b"APH^Apheresis collection^L|||20260310080000")


def _hl7_entries(url: str) -> list[str]:
    with session_scope(url) as s:
        query = select(LedgerEntry.source_event_id).where(LedgerEntry.source_system == "hl7").order_by(LedgerEntry.id)
        return list(s.scalars(query))


def _mappings_without_orm_v2(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the committed mappings as they were before v2 (ORM^O01 v1 only), read by the hub."""
    root = tmp_path / "mappings"
    shutil.copytree(Path(registry.mappings_dir()), root)
    aside = tmp_path / "ORM_O01.v2.yaml"
    (root / "hl7" / "ORM_O01" / "v2.yaml").rename(aside)
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(root))
    settings.get_settings.cache_clear()
    registry.clear_cache()
    return root, aside


def _switch_to_v2(db_url: str, tmp_path: Path, monkeypatch) -> None:
    """ORM^O01 applied under v1, then v2 put in force (its file added, as a release brings it)."""
    root, aside = _mappings_without_orm_v2(tmp_path, monkeypatch)
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with Running(db_url) as running:
        assert ack_code(exchange(running.port, frame(ORM), 1)[0]) == "AA"
    assert _hl7_entries(db_url) == ["BOS0000101#order"]  # v1's id
    aside.rename(root / "hl7" / "ORM_O01" / "v2.yaml")
    registry.clear_cache()


def test_a_resend_of_a_message_applied_under_v1_is_applied_once_after_the_switch_to_v2(db_url, tmp_path, monkeypatch):
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    with Running(db_url) as running:
        resent = exchange(running.port, frame(ORM), 1)[0]  # the same bytes again
        fresh = exchange(running.port, frame(ORM.replace(b"|BOS0000101|", b"|BOS0000109|")), 1)[0]
    assert [ack_code(resent), ack_code(fresh)] == ["AA", "AA"]
    assert _hl7_entries(db_url) == ["BOS0000101#order", "US-BOS-01|BOS0000109#order"]  # v2's id for the new one
    with session_scope(db_url) as s:
        receive_counts = sorted(s.scalars(select(RawMessage.receive_count).where(RawMessage.system == "hl7")))
        assert s.scalar(select(QuarantineEntry.id)) is None
        bodies = list(s.scalars(select(LedgerEntry.body).where(LedgerEntry.source_system == "hl7")))
    assert all("former_id" not in body for body in bodies) and '"BOS0000109#order"' not in bodies[1]  # not stored
    assert receive_counts == [1, 2]  # the resend counted on its archived row, not mapped again


def test_other_content_under_a_v1_control_id_is_a_conflict_after_the_switch(db_url, tmp_path, monkeypatch):
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    with Running(db_url) as running:
        moved = exchange(running.port, frame(MOVED), 1)[0]  # the same control id, another date
    with session_scope(db_url) as s:
        conflicts = list(s.scalars(select(QuarantineEntry).where(QuarantineEntry.stage == "conflict")))
        scheduled = str(s.scalar(select(Order.projection))["scheduled"])
    assert _hl7_entries(db_url) == ["BOS0000101#order"]
    assert ack_code(moved) == "AE" and b"|205^" in moved, moved
    assert len(conflicts) == 1 and "scheduled_for" in conflicts[0].reason
    assert "2026-03-09" in scheduled and "2026-03-10" not in scheduled


def test_a_replay_with_v2_of_what_v1_applied_adds_no_event(db_url, tmp_path, monkeypatch):
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    replay = ["mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v2"]
    run = CliRunner().invoke(cli, replay, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert _hl7_entries(db_url) == ["BOS0000101#order"], run.output
    assert "1 events unchanged, 0 corrected, 0 added" in run.output


def test_a_retried_conflict_under_a_v1_control_id_supersedes_what_v1_applied(db_url, tmp_path, monkeypatch):
    """The operator applies the held version: its correction supersedes v1's entry, which it names."""
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    with Running(db_url) as running:
        assert ack_code(exchange(running.port, frame(MOVED), 1)[0]) == "AE"
    with session_scope(db_url) as s:
        entry_id = s.scalars(select(QuarantineEntry.id).where(QuarantineEntry.stage == "conflict")).one()
    _add_operator(db_url, "coordinator", "retry_quarantine", "discard_quarantine")
    assert '"result": "released"' in _sign(db_url, "retry", entry_id, "CHANGE-CONFIRMED")
    with session_scope(db_url) as s:
        body = s.scalars(select(LedgerEntry.body).where(LedgerEntry.source_event_id.like("%@c%"))).one()
        assert '"supersedes":"BOS0000101#order"' in body
        assert "2026-03-10" in str(s.scalar(select(Order.projection))["scheduled"])
        assert ledger.verify(s)[1] == []
    assert _hl7_entries(db_url) == ["BOS0000101#order", f"US-BOS-01|BOS0000101#order@c{entry_id}"]


def test_a_replay_with_v1_after_the_switch_still_finds_what_v1_applied_unchanged(db_url, tmp_path, monkeypatch):
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    replay = ["mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v1"]
    run = CliRunner().invoke(cli, replay, catch_exceptions=False)
    assert _hl7_entries(db_url) == ["BOS0000101#order"], run.output
    assert "1 events unchanged, 0 corrected, 0 added" in run.output, run.output


def test_a_replay_with_v2_of_other_content_v1_applied_corrects_it_and_adds_none(db_url, tmp_path, monkeypatch):
    """v1 applied a scheduled date; a v2 that no longer maps it (edited in the hub's copy) pairs the
    event by its former id and appends a correction of it, not a second event."""
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    v2 = registry.mappings_dir() / "hl7" / "ORM_O01" / "v2.yaml"
    text = v2.read_text()
    v2.write_text(text.replace("      scheduled_for: {from: OBR-7, transform: datetime}\n", "", 1))
    registry.clear_cache()
    replay = ["mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v2"]
    run = CliRunner().invoke(cli, replay, catch_exceptions=False)
    assert "0 events unchanged, 1 corrected, 0 added" in run.output, run.output
    assert _hl7_entries(db_url) == ["BOS0000101#order", "US-BOS-01|BOS0000101#order@v2"], run.output


def test_another_facilitys_message_under_a_v1_control_id_is_applied_not_held(db_url, tmp_path, monkeypatch):
    """v1 applied US-BOS-01's BOS0000101; US-SITE-1 (another sender) sends its own message under the same
    control id: v1's id is not taken for it (the archive keys the two senders apart), so it is applied."""
    _switch_to_v2(db_url, tmp_path, monkeypatch)
    other = MOVED.replace(b"|EPIC|US-BOS-01|", b"|EPIC|US-SITE-1|")
    with Running(db_url) as running:
        answer = exchange(running.port, frame(other), 1)[0]
    assert ack_code(answer) == "AA", answer
    assert _hl7_entries(db_url) == ["BOS0000101#order", "US-SITE-1|BOS0000101#order"]
    with session_scope(db_url) as s:
        assert s.scalar(select(QuarantineEntry.id)) is None
        assert "2026-03-10" in str(s.scalar(select(Order.projection))["scheduled"])


def _siu(n: int, facility: str, *, placer: str, control: str, appointment: str) -> bytes:
    """The shipped apheresis booking fixture, as another site sends it for its own patient."""
    text = SIU.decode()
    for old, new in (
        ("US-BOS-01", facility),
        ("BOS0000301", control),
        ("APT-5001", appointment),
        ("PL-1001", placer),
        ("MRN48213377", f"MRN{n:08d}"),
        ("CHW123426000001", f"CHW1234260000{n:02d}"),
    ):
        text = text.replace(old, new)
    return text.encode()


def test_two_sites_may_use_one_collection_report_control_id_and_one_appointment_id(db_url, monkeypatch):
    """Boston and Heidelberg each report a collection under control id R1 and book appointment APT-1 at
    the same hour: four messages from two senders, four events applied, none taken for another's."""
    _enrol_through_crm(
        db_url,
        monkeypatch,
        [_crm_record(1, "US-BOS-01", "US", US_POSTAL), _crm_record(2, "DE-HD-01", "DE", "691zx")],
    )
    sites = [(1, "US-BOS-01", "CRM-00001", "PL-1001"), (2, "DE-HD-01", "CRM-00002", "PLDE2")]
    orders = [_site_orm(n, site, crm=crm, placer=placer, control=f"O{n}") for n, site, crm, placer in sites]
    reports = [_oru(n, site, placer=placer, din=_din(n), control="R1") for n, site, _crm, placer in sites]
    booked = [_siu(n, site, placer=placer, control=f"S{n}", appointment="APT-1") for n, site, _crm, placer in sites]
    with Running(db_url) as running:
        acks = exchange(running.port, b"".join(frame(m) for m in orders + booked + reports), 6)
    assert [ack_code(a) for a in acks] == ["AA"] * 6, acks
    entries = _hl7_entries(db_url)
    for site in ("US-BOS-01", "DE-HD-01"):
        assert f"{site}|R1#collected" in entries and f"appt:{site}|APT-1|20260309080000" in entries
    with session_scope(db_url) as s:
        assert s.scalar(select(QuarantineEntry.id)) is None
    assert {crm: o.status for crm, o in _orders(db_url).items()} == {
        "CRM-00001": "collected",
        "CRM-00002": "collected",
    }
