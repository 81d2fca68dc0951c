"""A batch retried in parts after a poison message does not deadlock with another writer (PostgreSQL).

The archive holds each sender key with a transaction-level advisory lock, ascending within one call.
A batch that fails (a poison message) is run again one message at a time in one transaction: one call
each, so its keys used to be taken in arrival order. When a message with a higher key came first, a
second writer (another MLLP listener on the same PostgreSQL, a file drop) holding the lower key and
waiting for the higher one made a cycle: PostgreSQL aborted one side after a second (SQLSTATE 40P01),
and a message could be answered "not stored, please resend". Now the retry holds the whole batch's
keys first, in one ascending round (`archive.hold`), so every later call finds its keys held.

Two real connections, interleaved deterministically: the retrying transaction is paused after its
first message, until the second writer waits on a key lock; then it goes on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine

from cgthub import archive, pipeline
from cgthub.errors import Rejection
from cgthub.hl7 import inbound
from cgthub.hl7.ack import ack_code
from cgthub.store import session_scope
from cgthub.tables import RawMessage, utcnow
from tests.test_hl7_listener import ORM


def _postgres_only(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE): two archive writers never hold keys at once")


def _lock_number(message: bytes) -> int:
    item = inbound.read(message).item("mllp", utcnow())
    return archive._lock_number(*archive._key(item, archive.checksum(item.payload)))


def _messages() -> tuple[bytes, bytes, bytes]:
    """Two messages (the higher key first) and a poison one, under control ids no other test uses."""
    tag = uuid.uuid4().hex[:8].upper()
    made = [ORM.replace(b"|BOS0000101|", f"|DL{tag}{n}|".encode()) for n in range(3)]
    high, low = sorted(made[:2], key=_lock_number, reverse=True)
    return high, low, made[2]


@pytest.fixture
def deadlocks() -> Iterator[list[str]]:
    """Every SQLSTATE 40P01 (deadlock detected) any statement of this process met meanwhile."""
    seen: list[str] = []

    def on_error(context: Any) -> None:
        if getattr(context.original_exception, "sqlstate", None) == "40P01":
            seen.append(str(context.original_exception).splitlines()[0])

    event.listen(Engine, "handle_error", on_error)
    yield seen
    event.remove(Engine, "handle_error", on_error)


def _waiting_on(url: str, *messages: bytes) -> bool:
    """Whether a transaction waits for the key lock of one of `messages`."""
    oids = [_lock_number(m) & 0xFFFFFFFF for m in messages]
    with session_scope(url) as s:
        waiting = s.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = :space AND objsubid = 2 AND objid = ANY(CAST(:oids AS oid[]))"
            ),
            {"space": archive._KEY_LOCKS, "oids": oids},
        )
    return bool(waiting)


def _race(
    url: str, monkeypatch: pytest.MonkeyPatch, retried: Any, other: Any, high: bytes, low: bytes
) -> dict[str, Any]:
    """`retried()` in one thread, paused after it archives `high` alone (its first message of the
    retry), until `other()` in a second thread waits on the key lock of `high` or `low`; then both
    run to their end."""
    paused, go = threading.Event(), threading.Event()
    real = archive.store_many
    first: list[threading.Thread] = []

    def store_many(session: Any, items: Any, **kwargs: Any) -> list[archive.Archived]:
        out = real(session, items, **kwargs)
        if first and threading.current_thread() is first[0] and [i.payload for i in items] == [high]:
            paused.set()
            go.wait(30)
        return out

    monkeypatch.setattr(archive, "store_many", store_many)
    results: dict[str, Any] = {}

    def run(name: str, work: Any) -> None:
        try:
            results[name] = work()
        except Exception as exc:  # reported by the assertions below, not lost in the thread
            results[name] = exc

    one = threading.Thread(target=run, args=("retried", retried))
    two = threading.Thread(target=run, args=("other", other))
    first.append(one)
    one.start()
    assert paused.wait(30), "the retry never archived its first message alone"
    two.start()
    deadline = time.monotonic() + 30
    while not _waiting_on(url, high, low) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.set()
    one.join(60)
    two.join(60)
    assert not one.is_alive() and not two.is_alive()
    return results


def _poisoned_when_archived_only(monkeypatch: pytest.MonkeyPatch, poison: bytes) -> None:
    """`poison` fails its batch under archive-only after it is archived (a crash nobody foresaw)."""
    real_ack = inbound._archived_ack

    def archived_ack(session: Any, message: inbound.Received, saved: Any, handled: Any) -> bytes:
        if message.payload == poison:
            raise RuntimeError("a poison message")
        return real_ack(session, message, saved, handled)

    monkeypatch.setattr(inbound, "_archived_ack", archived_ack)


def test_a_batch_retried_in_parts_beside_another_listener_does_not_deadlock(db_url, monkeypatch, deadlocks):
    """Listener A (archive only) gets [high, low, poison]: the poison fails the batch, which is run
    again one message at a time. Listener B archives [low, high] meanwhile. Before: A held high and
    waited for low; B held low and waited for high; PostgreSQL aborted one (40P01)."""
    _postgres_only(db_url)
    high, low, poison = _messages()
    _poisoned_when_archived_only(monkeypatch, poison)

    def listener(messages: list[bytes]) -> Any:
        def commit() -> list[str]:
            with session_scope(db_url) as s:  # what MllpListener._commit runs
                return [ack_code(a) for a in inbound.archive_only(s, [inbound.read(m) for m in messages], "mllp")]

        return commit

    results = _race(db_url, monkeypatch, listener([high, low, poison]), listener([low, high]), high, low)
    assert deadlocks == []
    assert results == {"retried": ["AA", "AA", "AE"], "other": ["AA", "AA"]}
    with session_scope(db_url) as s:
        kept = s.scalars(select(RawMessage.receive_count)).all()
    assert kept == [2, 2]  # high and low kept once each, received twice; the poison not kept (AE)


def test_an_applied_batch_retried_in_parts_beside_another_writer_does_not_deadlock(db_url, monkeypatch, deadlocks):
    """The same through `pipeline.ingest_batch` (a listener that applies, a file drop): the poison
    fails in the mapping, the batch is applied one message at a time, none is answered "not stored"."""
    _postgres_only(db_url)
    high, low, poison = _messages()
    real_apply = pipeline._map_and_apply

    def map_and_apply(session: Any, todo: Any, *args: Any, **kwargs: Any) -> None:
        if any(item.payload == poison for _result, item, _checksum in todo):
            raise RuntimeError("a poison message")
        real_apply(session, todo, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_map_and_apply", map_and_apply)

    def writer(messages: list[bytes]) -> Any:
        def commit() -> list[Rejection | None]:
            with session_scope(db_url) as s:
                answers = inbound.apply_answers(s, [inbound.read(m) for m in messages], "file")
                return [a.rejection for a in answers]

        return commit

    results = _race(db_url, monkeypatch, writer([high, low, poison]), writer([low, high]), high, low)
    assert deadlocks == []
    assert not any(isinstance(r, Exception) for r in results.values()), results
    assert Rejection.NOT_STORED not in [*results["retried"], *results["other"]], results
    assert results["retried"][2] is Rejection.UNAPPLIED  # the poison: archived and quarantined


def _own_advisory_locks(session: Any) -> list[tuple[int, str]]:
    rows = session.execute(
        text(
            "SELECT classid::bigint, mode FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
            "AND classid IN (:space, :bulk) ORDER BY 1, 2"
        ),
        {"space": archive._KEY_LOCKS, "bulk": archive._BULK_LOCK},
    ).all()
    return [(classid, mode) for classid, mode in rows]


def _items(count: int) -> list[archive.Inbound]:
    tag = uuid.uuid4().hex[:8]
    return [
        archive.Inbound("crm", "enrolment", "t", f"{tag}-{n}".encode(), utcnow(), f"{tag}-{n}") for n in range(count)
    ]


def test_holding_more_keys_than_a_listener_batch_takes_the_bulk_lock_alone_for_the_transaction(db_url):
    """`archive.hold` of 600 payloads takes one exclusive lock; archiving them one by one afterwards
    adds none (the lock table stays bounded). A savepoint rolled back lets the bulk lock go: then a
    payload's own key lock is taken again."""
    _postgres_only(db_url)
    items = _items(600)
    with session_scope(db_url) as s:
        archive.hold(s, items)
        for item in items[:50]:
            archive.store_many(s, [item])
        assert _own_advisory_locks(s) == [(archive._BULK_LOCK, "ExclusiveLock")]
    with session_scope(db_url) as s:
        s.execute(text("SELECT 1"))
        savepoint = s.begin_nested()
        archive.hold(s, items)
        savepoint.rollback()
        assert _own_advisory_locks(s) == []
        archive.store_many(s, [items[0]])
        assert _own_advisory_locks(s) == [(archive._BULK_LOCK, "ShareLock"), (archive._KEY_LOCKS, "ExclusiveLock")]


def test_a_batch_retried_in_parts_keeps_every_message_once(db_url, monkeypatch):
    """On both stores: the retry's first round (`archive.hold`) changes nothing of what is kept."""
    high, low, poison = _messages()
    _poisoned_when_archived_only(monkeypatch, poison)
    with session_scope(db_url) as s:
        acks = inbound.archive_only(s, [inbound.read(m) for m in (high, low, poison, high)], "mllp")
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AE", "AA"]
    with session_scope(db_url) as s:
        kept = sorted(s.scalars(select(RawMessage.receive_count)).all())
    assert kept == [1, 2]  # high twice, low once; the poison not kept (AE: resend it)
