"""README, "What a sender is told": the ERR-3 codes of the AE row that no other test read, each
driven over the MLLP listener on loopback as `cgthub hl7 listen` runs it, on SQLite and PostgreSQL.

The table says AE carries 103, 102, 204, 205 or 207. test_errors reads 204 (no order yet) and 207
(its mapping failed), test_qualification 103 (qualify), test_readme_promises_sites 103 (route),
test_readme_promises_acks 205 (identity). Here: 102 for a value the model refuses (validation),
205 for an event id sent before with other content (conflict), 207 when applying it failed and
when it was not stored at all (so the sender resends).
"""

from __future__ import annotations

from hl7apy.parser import parse_message
from sqlalchemy import select

from cgthub import alerts, ledger
from cgthub.hl7.ack import ack_code
from cgthub.hl7.listener import MllpListener
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry, RawMessage
from tests.factories import enrolment
from tests.test_hl7_listener import ORM, Running, exchange


def _answer(ack: bytes) -> tuple[str, str]:
    """MSA-1 and ERR-3.1, read by hl7apy as a hospital's engine would."""
    return ack_code(ack), parse_message(ack.decode(), find_groups=False).err.err_3.err_3_1.value


def _enrol(url: str) -> None:
    with session_scope(url) as s:
        ledger.append(s, enrolment(1))


def _stages(url: str) -> list[str]:
    with session_scope(url) as s:
        return list(s.scalars(select(QuarantineEntry.stage)))


def test_a_value_the_model_refuses_is_answered_ae_102_and_quarantined_at_validate(db_url):
    _enrol(db_url)
    no_placer = ORM.replace(b"ORC|NW|PL-1001|", b"ORC|NW||")  # ORC-2, which the mapping requires
    assert no_placer != ORM
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(no_placer), 1)
    assert _answer(ack) == ("AE", "102")
    assert _stages(db_url) == ["validate"]


def test_an_event_id_sent_before_with_other_content_is_answered_ae_205(db_url):
    _enrol(db_url)
    moved = ORM.replace(b"|||20260309080000", b"|||20260310080000")  # same MSH-10, another apheresis day
    assert moved != ORM
    with Running(db_url) as running:
        first = exchange(running.port, frame(ORM), 1)[0]
        resent = exchange(running.port, frame(moved), 1)[0]
    assert ack_code(first) == "AA"
    assert _answer(resent) == ("AE", "205")
    assert _stages(db_url) == ["conflict"]
    # "with the names of the fields that differ (never their values)": in the ACK, the entry, the alert
    with session_scope(db_url) as s:
        (reason,) = s.scalars(select(QuarantineEntry.reason))
        said = [resent.decode(), reason, *(a.message for a in alerts.open_alerts(s))]
    assert all("scheduled_for" in text for text in said[:2]), said
    for value in ("2026-03-10", "20260310", "2026-03-09", "20260309"):
        assert not any(value in text for text in said), (value, said)


def test_a_message_that_fails_while_applying_is_answered_ae_207_and_kept(db_url, monkeypatch):
    _enrol(db_url)

    def broken(session, events):
        raise RuntimeError("a fault no one foresaw")

    monkeypatch.setattr(ledger, "append_many", broken)
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(ORM), 1)
    assert _answer(ack) == ("AE", "207")
    with session_scope(db_url) as s:
        assert s.scalar(select(RawMessage.status)) == "quarantined"


def test_a_message_that_could_not_be_stored_is_answered_ae_207_please_resend(db_url, monkeypatch):
    def failing_commit(self, messages):
        raise OSError("disk full")

    monkeypatch.setattr(MllpListener, "_commit", failing_commit)
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(ORM), 1)
    assert _answer(ack) == ("AE", "207") and b"not stored, please resend" in ack
    with session_scope(db_url) as s:
        assert s.scalar(select(RawMessage.id)) is None
