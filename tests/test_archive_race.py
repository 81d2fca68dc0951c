"""A reused control id is never missed: two writers on one PostgreSQL (two MLLP listeners, or a
listener and a file drop) archiving two different payloads under the same sender control id at the
same time still raise the `control_id_reused` alert, whichever commits first. A careless sender
resends an id with other content; another site's sender (or an attacker) may use one already taken:
either way an operator is told. SQLite has one writer at a time, so the race is PostgreSQL's."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from cgthub import alerts
from cgthub.hl7 import inbound
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import Alert, RawMessage
from tests.test_hl7_listener import ORM, Running, exchange

OTHER = ORM.replace(b"PV1|1|O|CTU", b"PV1|1|O|CTX")  # the same MSH-10 (BOS0000101), other content


def _postgres_only(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE): two archive writers cannot race")


def _reused(url: str) -> list[Alert]:
    with session_scope(url) as s:
        return list(s.scalars(select(Alert).where(Alert.kind == alerts.CONTROL_ID_REUSED)))


def _fillers(count: int) -> list[bytes]:
    return [ORM.replace(b"|BOS0000101|", f"|FILL{n:05d}|".encode()) for n in range(count)]


@pytest.mark.parametrize("second", ["file", "mllp", "large file batch"])
def test_two_writers_archiving_one_control_id_at_once_raise_the_alert(db_url, second):
    """The listener archives the first payload and has not committed yet when the second writer (a
    file drop applying its batch, or another listener) archives the other content under the same id.
    Before, each read "no earlier row" and neither alert was raised."""
    _postgres_only(db_url)
    archived, release, done = threading.Event(), threading.Event(), threading.Event()
    answers: dict[str, list[str]] = {}

    def first_listener() -> None:
        with session_scope(db_url) as s:  # what MllpListener._commit runs, held open until released
            answers["first"] = [ack_code(a) for a in inbound.archive_only(s, [inbound.read(ORM)], "mllp")]
            archived.set()
            release.wait(30)

    def second_writer() -> None:
        with session_scope(db_url) as s:
            if second == "file":  # what hl7.files.ingest_paths runs for a chunk of a dropped file
                answers["second"] = [a.code for a in inbound.apply_answers(s, [inbound.read(OTHER)], "file")]
            elif second == "large file batch":  # `cgthub hl7 ingest --batch 1000`: more keys than a listener's
                chunk = [inbound.read(m) for m in [*_fillers(600), OTHER]]
                answers["second"] = [a.code for a in inbound.apply_answers(s, chunk, "file")][-1:]
            else:
                answers["second"] = [ack_code(a) for a in inbound.archive_only(s, [inbound.read(OTHER)], "mllp")]
        done.set()

    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(first_listener)
        assert archived.wait(30)
        two = pool.submit(second_writer)
        done.wait(1.0)  # the second writer is under way (before the fix it finished here, alert-less)
        release.set()
        one.result(30), two.result(30)
    assert answers["first"] == ["AA"] and len(answers["second"]) == 1
    with session_scope(db_url) as s:
        rows = s.execute(
            select(RawMessage.id, RawMessage.dedupe_key)
            .where(RawMessage.dedupe_key.like("%BOS0000101"))
            .order_by(RawMessage.id)
        ).all()
    assert [key for _id, key in rows] == ["US-BOS-01:BOS0000101"] * 2  # both kept, each a message
    (alert,) = _reused(db_url)
    assert alert.details["raw_id"] == rows[1].id and alert.details["earlier_raw_id"] == rows[0].id
    assert "reused the delivery id" in alert.message
    assert "BOS0000101" not in alert.message and "Smithson" not in alert.message  # raw ids only


def test_two_listeners_taking_reused_control_ids_at_once_alert_on_every_one(db_url):
    """Two listeners on one database; each of 20 control ids is sent by two connections at once, one
    to each listener, with different content: every id gets its alert, each naming the other copy."""
    _postgres_only(db_url)
    ids = [f"RACE{n:04d}" for n in range(20)]

    def message(control: str, variant: bytes) -> bytes:
        return ORM.replace(b"|BOS0000101|", f"|{control}|".encode()).replace(b"PV1|1|O|CTU", b"PV1|1|O|" + variant)

    listeners = Running(db_url, apply=False), Running(db_url, apply=False)
    with listeners[0] as one, listeners[1] as two, ThreadPoolExecutor(2 * len(ids)) as pool:
        start = threading.Barrier(2 * len(ids))

        def send(port: int, payload: bytes) -> str:
            start.wait(30)
            return ack_code(exchange(port, frame(payload), 1)[0])

        futures = [pool.submit(send, one.port, message(c, b"CTA")) for c in ids]
        futures += [pool.submit(send, two.port, message(c, b"CTB")) for c in ids]
        codes = [f.result(60) for f in futures]
    assert codes == ["AA"] * 40
    with session_scope(db_url) as s:
        held = dict(s.execute(select(RawMessage.id, RawMessage.dedupe_key)).all())
    assert sorted(held.values()) == sorted(f"US-BOS-01:{c}" for c in ids for _copy in (1, 2))
    found = _reused(db_url)
    assert len(found) == len(ids)
    for alert in found:
        raw, earlier = alert.details["raw_id"], alert.details["earlier_raw_id"]
        assert held[raw] == held[earlier] and raw > earlier
