"""README, "What a sender is told", over the MLLP listener on loopback as `cgthub hl7 listen` runs it,
on SQLite and PostgreSQL:

- AR for a message over `--max-bytes`, whose ERR-8 gives the limit; such a message is answered
  without being kept (the README says so: it is the one inbound payload not archived);
- the ERR-3 of that AR is 207, as the table's AR row and `Rejection.TOO_LARGE` say;
- "ERR-8 carries the reason for the hospital's operators; it names no patient and no other order",
  for a message whose COI id belongs to another patient's order (stage identity).
"""

from __future__ import annotations

from hl7apy.parser import parse_message
from sqlalchemy import func, select

from cgthub import ledger
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry, RawMessage
from tests.factories import PATIENTS, coi, enrolment
from tests.test_hl7_listener import ORM, Running, exchange


def _err(ack: bytes) -> tuple[str, str]:
    """ERR-3.1 and ERR-8 of an ACK, read by hl7apy as a hospital's engine would."""
    err = parse_message(ack.decode(), find_groups=False).err
    return err.err_3.err_3_1.value, err.err_8.value


def _count(url: str, table: type) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def _too_big() -> bytes:
    return ORM + b"NTE|1||" + b"x" * 5000 + b"\r"


def test_a_message_over_max_bytes_is_answered_ar_with_the_limit_and_not_kept(db_url):
    with Running(db_url, max_message_bytes=4096) as running:
        (ack,) = exchange(running.port, frame(_too_big()), 1)
    assert ack_code(ack) == "AR"
    _, reason = _err(ack)
    assert "exceeds the limit of 4096 bytes" in reason
    assert b"Smithson" not in ack and PATIENTS[0]["mrn"].encode() not in ack
    assert _count(db_url, RawMessage) == 0 and _count(db_url, QuarantineEntry) == 0


def test_the_ar_for_a_message_over_max_bytes_carries_err3_207(db_url):
    with Running(db_url, max_message_bytes=4096) as running:
        (ack,) = exchange(running.port, frame(_too_big()), 1)
    assert _err(ack)[0] == "207"


def test_err8_of_an_identity_conflict_names_no_patient_and_no_other_order(db_url):
    with session_scope(db_url) as session:
        mine = ledger.append(session, enrolment(1, mrn=PATIENTS[0]["mrn"])).order_id
        other = ledger.append(session, enrolment(2, mrn=PATIENTS[1]["mrn"])).order_id
    # Order 1's hospital message, carrying the COI id of order 2's patient.
    crossed = ORM.replace(coi(1).encode(), coi(2).encode())
    assert crossed != ORM
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(crossed), 1)
    assert ack_code(ack) == "AE"
    code, reason = _err(ack)
    assert code == "205" and "identity" in reason
    assert mine and other and other not in reason and "CRM-00002" not in reason and coi(2) not in reason
    for patient in PATIENTS:
        for clear in (patient["mrn"], patient["birth_date"], *patient["name"].split("^")):
            assert clear not in ack.decode(), clear
    with session_scope(db_url) as session:
        stages = session.scalars(select(QuarantineEntry.stage)).all()
    assert stages == ["identity"]
