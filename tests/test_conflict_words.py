"""A conflicting resend, from the hospital's socket or file to the operator's decision, in words an
operator understands, and an archive that says what became of the payload: once its quarantined
version is applied as a correction, the payload is `processed`, as after any other successful retry
(a discarded one stays `quarantined`: it was never applied). On SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry, RawMessage
from tests.test_decisions import PASSWORD, SIGN, _add_operator, _cli
from tests.test_event_conflicts import MOVED, _enrol
from tests.test_hl7_listener import ORM, Running, exchange

PHI = ("MRN48213377", "Smithson", "19710412")


def _conflict(url: str) -> tuple[QuarantineEntry, RawMessage]:
    with session_scope(url) as s:
        entry = s.scalars(select(QuarantineEntry).where(QuarantineEntry.stage == "conflict")).one()
        raw = s.get(RawMessage, entry.raw_id)
        assert raw is not None
        s.expunge_all()
        return entry, raw


def _received_conflict(url: str) -> QuarantineEntry:
    _enrol(url)
    with Running(url) as running:
        assert [ack_code(exchange(running.port, frame(m), 1)[0]) for m in (ORM, MOVED)] == ["AA", "AE"]
    entry, raw = _conflict(url)
    assert raw.status == "quarantined"
    return entry


def _decide(url: str, action: str, entry_id: int, reason: str) -> str:
    _add_operator(url, "coordinator", "retry_quarantine", "discard_quarantine")
    run = _cli(
        "quarantine", action, str(entry_id), "--reason", reason, *SIGN, "--signer", "coordinator", url=url,
        password=PASSWORD,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_conflict_retried_as_a_correction_leaves_its_payload_processed_and_show_says_so(db_url):
    entry = _received_conflict(db_url)
    shown = _cli("quarantine", "show", str(entry.id), url=db_url)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "archive status quarantined" in text
    assert f"cgthub quarantine retry {entry.id}` applies it as a correction" in text  # what to do here
    assert f"cgthub quarantine discard {entry.id}` keeps the first version" in text
    assert not any(p in shown.stdout for p in PHI)

    assert '"result": "released"' in _decide(db_url, "retry", entry.id, "CHANGE-CONFIRMED")
    entry, raw = _conflict(db_url)
    assert entry.status == "replayed" and raw.status == "processed" and raw.processed_at is not None
    shown = _cli("quarantine", "show", str(entry.id), url=db_url)
    assert "archive status processed" in " ".join(shown.stdout.split())


def test_a_discarded_conflict_leaves_its_payload_quarantined(db_url):
    entry = _received_conflict(db_url)
    assert '"result": "discarded"' in _decide(db_url, "discard", entry.id, "DUPLICATE-MESSAGE")
    entry, raw = _conflict(db_url)
    assert entry.status == "discarded" and raw.status == "quarantined"


def test_hl7_ingest_names_a_conflicting_resend_and_what_to_do_about_it(db_url, tmp_path):
    """`cgthub hl7 ingest` of a file holding an order and its resend with another apheresis date
    under the same control id: the summary says so in words, and what the operator does next."""
    _enrol(db_url)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "orders.hl7").write_bytes(ORM + b"\r\n" + MOVED + b"\r\n")
    run = _cli("hl7", "ingest", str(drop / "orders.hl7"), url=db_url)
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stdout.split())
    assert "1 file, 2 messages: 1 accepted, 1 quarantined (AE: 1 resent with other content" in said, said
    assert "cgthub quarantine list --stage conflict" in said
    assert "retry ID" in said and "as a correction" in said and "discard ID" in said
    assert not any(p in run.stdout + run.stderr for p in PHI)
    entry, raw = _conflict(db_url)
    assert entry.status == "open" and raw.status == "quarantined"
