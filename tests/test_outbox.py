"""The transactional outbox: idempotent enqueue, leased claims, backoff with jitter, dead letters, replay."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import update

from cgthub import outbox
from cgthub.outbox import Destination, OutboxMessage, OutboxStatus
from cgthub.store import session_scope
from cgthub.tables import utcnow

CRM = Destination("crm", "salesforce-eu")


def _due_now(url: str) -> None:
    with session_scope(url) as session:
        session.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))


def test_enqueue_is_idempotent_and_rolls_back_with_its_transaction(db_url):
    with session_scope(db_url) as session:
        first = outbox.enqueue(session, CRM, "order-1:status:3", {"status": "collected"})
        again = outbox.enqueue(session, CRM, "order-1:status:3", {"status": "something else"})
        assert again.id == first.id and again.payload == {"status": "collected"}
    with pytest.raises(RuntimeError), session_scope(db_url) as session:
        outbox.enqueue(session, CRM, "order-2:status:1", {"status": "enrolled"})
        raise RuntimeError("the business change failed")
    with session_scope(db_url) as session:
        assert [m.idempotency_key for m in outbox.messages(session)] == ["order-1:status:3"]


def test_claim_leases_so_no_two_drainers_take_the_same_message(db_url):
    with session_scope(db_url) as session:
        for n in range(5):
            outbox.enqueue(session, CRM, f"k{n}", {"n": n})
        outbox.enqueue(session, Destination("erp", "sap"), "erp-1", {"n": 99})
    with session_scope(db_url) as session:
        taken = outbox.claim(session, "crm", limit=3)
    with session_scope(db_url) as session:
        rest = outbox.claim(session, "crm", limit=10)
    assert [m.payload["n"] for m in taken] == [0, 1, 2] and [m.payload["n"] for m in rest] == [3, 4]
    with session_scope(db_url) as session:
        assert outbox.claim(session, "crm", limit=10) == []  # all leased
        outbox.mark_delivered(session, taken[0])
    _due_now(db_url)  # the leases expire: a drainer that died loses its messages to the next one
    with session_scope(db_url) as session:
        assert sorted(m.payload["n"] for m in outbox.claim(session, "crm", limit=10)) == [1, 2, 3, 4]


def test_concurrent_claims_skip_locked_rows(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers; SKIP LOCKED is PostgreSQL's")
    with session_scope(db_url) as session:
        for n in range(6):
            outbox.enqueue(session, CRM, f"k{n}", {"n": n})
    with session_scope(db_url) as first:
        mine = outbox.claim(first, "crm", limit=4)  # rows locked until this transaction ends
        with session_scope(db_url) as second:
            theirs = outbox.claim(second, "crm", limit=4)
    assert {m.id for m in mine}.isdisjoint(m.id for m in theirs)
    assert len(mine) == 4 and len(theirs) == 2


def test_failures_back_off_then_die_and_replay(db_url):
    with session_scope(db_url) as session:
        outbox.enqueue(session, CRM, "k", {"n": 1}, max_attempts=3)
    delays = []
    for attempt in range(1, 4):
        _due_now(db_url)
        with session_scope(db_url) as session:
            (message,) = outbox.claim(session, "crm")
        with session_scope(db_url) as session:
            row = outbox.mark_failed(session, message, f"HTTP 502 on attempt {attempt}")
            delays.append(row.next_attempt_at - utcnow())
    assert row.status == OutboxStatus.DEAD and row.attempts == 3 and row.last_error == "HTTP 502 on attempt 3"
    assert timedelta(seconds=2) < delays[0] <= timedelta(seconds=5)  # first retry: 2.5-5 s
    assert timedelta(seconds=2) < delays[1] <= timedelta(seconds=10)  # second: 2.5-10 s
    with session_scope(db_url) as session:
        assert outbox.claim(session, "crm") == []  # dead letters are not retried by themselves
        assert outbox.replay_dead(session, destination_kind="crm", destination_id="other") == 0
        assert outbox.replay_dead(session, destination_kind="crm") == 1
    with session_scope(db_url) as session:
        (message,) = outbox.claim(session, "crm")
        assert message.attempts == 0
        outbox.mark_delivered(session, message)
    with session_scope(db_url) as session:
        (row,) = outbox.messages(session)
        assert row.status == OutboxStatus.DELIVERED and row.delivered_at is not None and row.last_error is None


def test_backoff_is_exponential_jittered_and_capped():
    for attempts in range(1, 15):
        ceiling = min(3600.0, 5.0 * 2 ** (attempts - 1))
        samples = [outbox.backoff(attempts).total_seconds() for _ in range(200)]
        assert all(2.5 <= s <= ceiling for s in samples)
        if attempts > 2:
            assert len({round(s, 3) for s in samples}) > 100  # jitter spreads retries of many messages
    assert max(outbox.backoff(30).total_seconds() for _ in range(500)) > 1800


@pytest.fixture
def delivered(monkeypatch) -> list[int]:
    """What reached the CRM, in the order it arrived, through the drainer the outbound DAG runs."""
    from cgthub import outbound

    arrived: list[int] = []
    monkeypatch.setattr(
        outbound, "deliverer", lambda partner: ("test push", lambda payload: arrived.append(payload["n"]))
    )
    return arrived


def _drain_once(url: str) -> int:
    """One drainer pass as the outbound DAG's task runs it; how many messages it claimed."""
    from cgthub import outbound

    return outbound.drain("crm", database_url=url, limit=7)["claimed"]


def _drain_until_empty(url: str) -> None:
    while _drain_once(url):
        pass


def test_two_drainers_at_once_deliver_every_message_exactly_once(db_url, delivered):
    with session_scope(db_url) as session:
        for n in range(60):
            outbox.enqueue(session, CRM, f"k{n}", {"n": n})
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(_drain_until_empty, db_url) for _ in range(2)]:
            done.result(timeout=120)
    assert sorted(delivered) == list(range(60))
    with session_scope(db_url) as session:
        assert {m.status for m in outbox.messages(session, limit=100)} == {OutboxStatus.DELIVERED}


def test_a_drainer_that_dies_mid_delivery_loses_only_its_lease(db_url, delivered):
    with session_scope(db_url) as session:
        outbox.enqueue(session, CRM, "k", {"n": 1})
    with session_scope(db_url) as session:
        (taken,) = outbox.claim(session, "crm")  # and then the process is killed: no mark at all
    assert _drain_once(db_url) == 0  # leased: the next drainer leaves it
    _due_now(db_url)  # the lease runs out
    assert _drain_once(db_url) == 1 and delivered == [1]
    with session_scope(db_url) as session:
        (row,) = outbox.messages(session)
    assert (row.id, row.status, row.attempts) == (taken.id, OutboxStatus.DELIVERED, 1)
