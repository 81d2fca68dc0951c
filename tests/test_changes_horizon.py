"""The PostgreSQL change feed's horizon is the hub database's, not the server's (cgthub.changes._pg_horizon).

A transaction open in another database of the same server (Airflow's metadata database beside the
hub's in compose; a report; a session left idle in transaction) does not hold back a change
committed after it; one open in the hub's own database still does, on whatever table it writes, so
a late commit is never skipped. Every xdist worker's schema lives in the one database `test`, so
another worker's transaction may hold the horizon a while: the tests poll, as a consumer does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.orm import Session

from cgthub import changes, ledger
from cgthub.store import get_engine, session_scope
from tests.conftest import PG_ADMIN_URL
from tests.factories import happy_path

PATIENCE = 30.0  # seconds another worker's transaction in the database `test` may hold the horizon


@pytest.fixture
def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers: every committed change is served at once")
    return db_url


def _enrol(url: str, patient: int) -> tuple[str, int]:
    """Commits a new order's enrolment: its order id and the transaction id its change row carries."""
    with session_scope(url) as session:
        order_id = ledger.append(session, happy_path(patient)[0]).order_id
        tx = session.scalar(text("SELECT (pg_current_xact_id()::text)::bigint"))
    assert order_id is not None and tx is not None
    return order_id, int(tx)


def _served(url: str) -> list[tuple[str, int]]:
    with session_scope(url, readonly=True) as session:
        return [(row.order_id, row.tx) for row in changes.read(session, changes.FeedPosition(), 100)]


def _served_soon(url: str, wanted: int) -> list[tuple[str, int]]:
    """The feed once it serves `wanted` changes, or as it is after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    served = _served(url)
    while len(served) < wanted and time.monotonic() < deadline:
        time.sleep(0.1)
        served = _served(url)
    return served


def _xid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT (pg_current_xact_id()::text)::bigint")).scalar_one())


@pytest.fixture
def other_database() -> Iterator[Connection]:
    """A connection to the server's `postgres` database: the hub's tables are not there."""
    engine = create_engine(make_url(PG_ADMIN_URL).set(database="postgres"))
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def test_a_transaction_open_in_another_database_does_not_hold_the_feed_back(
    pg_url: str, other_database: Connection
) -> None:
    with other_database.begin():
        foreign = _xid(other_database)  # open, with an xid, for the whole block
        order_id, tx = _enrol(pg_url, 1)
        assert tx > foreign  # the server's xmin stays at or below `foreign` meanwhile
        served = _served_soon(pg_url, 1)
        assert _xid(other_database) == foreign  # still the same transaction, still open
    assert served == [(order_id, tx)]


@pytest.mark.parametrize("writes", ["a change row", "another table only"])
def test_a_transaction_open_in_the_hub_database_still_holds_later_commits(pg_url: str, writes: str) -> None:
    served_first: list[tuple[str, int]] = []
    with get_engine(pg_url).connect() as early, early.begin():  # transaction A: its xid first, its commit last
        a_tx = _xid(early)
        if writes == "a change row":
            with Session(bind=early) as session:  # inside A's transaction, which commits below
                order_id = ledger.append(session, happy_path(1)[0]).order_id
                session.flush()
            assert order_id is not None
            served_first.append((order_id, a_tx))
        else:
            early.execute(text("CREATE TEMP TABLE scratch (n int)"))
            early.execute(text("INSERT INTO scratch VALUES (1)"))
        b_order, b_tx = _enrol(pg_url, 2)  # transaction B: commits while A is open
        assert b_tx > a_tx
        assert _served(pg_url) == []  # B's row waits: A might still write a row below it
    served = _served_soon(pg_url, len(served_first) + 1)
    assert served == [*served_first, (b_order, b_tx)]  # (tx, id) order: A's row before B's


def test_a_reader_s_own_open_transaction_bounds_what_it_serves(pg_url: str) -> None:
    with session_scope(pg_url) as session:  # wrote a change, not committed yet, then reads the feed
        own_order = ledger.append(session, happy_path(1)[0]).order_id
        own = _xid(session.connection())
        later_order, later = _enrol(pg_url, 2)  # a later xid completes: the snapshot's xmax passes `own`
        assert later > own
        assert changes._pg_horizon(session) <= own  # a snapshot does not list its own xid; xmin counted it
        assert changes.read(session, changes.FeedPosition(), 100) == []
    assert _served_soon(pg_url, 2) == [(own_order, own), (later_order, later)]


def _horizon(conn: Connection) -> int:
    with Session(bind=conn) as session:
        return changes._pg_horizon(session)


@pytest.fixture
def plain_role(pg_url: str) -> Iterator[str]:
    """A URL of the hub's database for a new login role with no grant at all (no pg_read_all_stats),
    as the hub's own role in compose has none; dropped afterwards."""
    name = f"cgt_plain_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        try:
            yield make_url(pg_url).set(username=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP ROLE "{name}"'))
    finally:
        admin.dispose()


def test_the_hub_role_needs_no_grant_to_see_another_database_s_transaction(
    plain_role: str, other_database: Connection
) -> None:
    engine = create_engine(plain_role)
    try:
        with other_database.begin(), engine.connect() as conn:
            foreign = _xid(other_database)  # the superuser's: its query text is hidden from the plain role
            hidden = conn.execute(
                text("SELECT query FROM pg_stat_activity WHERE backend_xid = CAST(:xid AS text)::xid8::xid"),
                {"xid": str(foreign)},
            ).scalar_one()
            assert hidden == "<insufficient privilege>"
            deadline = time.monotonic() + PATIENCE
            horizon = _horizon(conn)
            while horizon <= foreign and time.monotonic() < deadline:
                time.sleep(0.1)
                conn.rollback()  # a new transaction reads pg_stat_activity afresh
                horizon = _horizon(conn)
            assert horizon > foreign
    finally:
        engine.dispose()
