"""Column types: what the hub's own datetime type writes to SQLite is what SQLAlchemy would write."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, TypeDecorator
from sqlalchemy.dialects import sqlite

from cgthub.tables import UTCDateTime


class _Reference(TypeDecorator[datetime]):
    """UTCDateTime's own two-stage path: its process_bind_param, then SQLite's DATETIME."""

    impl = DateTime(timezone=True)
    cache_ok = True
    process_bind_param = UTCDateTime.process_bind_param


_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets | st.just(UTC)))
def test_sqlite_datetime_text_is_sqlalchemys(value: datetime) -> None:
    dialect = sqlite.dialect()
    fast = UTCDateTime(timezone=True)._cached_bind_processor(dialect)
    reference = _Reference()._cached_bind_processor(dialect)
    assert fast(value) == reference(value)
    assert fast(value) == reference(value)  # again: the kept text of the last value
    other = value + timedelta(microseconds=1) if value.year < 9999 else value - timedelta(microseconds=1)
    assert fast(other) == reference(other) != reference(value)
    assert fast(None) is None


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        UTCDateTime(timezone=True)._cached_bind_processor(sqlite.dialect())(datetime(2026, 1, 1))


def test_the_migrations_build_the_schema_the_models_declare(db_url: str) -> None:
    """Every column, index and constraint of the ORM is what `alembic upgrade` made, on each backend."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    # The modules with tables of their own, as migrations/env.py imports them.
    import cgthub.api.tables
    import cgthub.changes
    import cgthub.heartbeat
    import cgthub.ops_tables
    import cgthub.outbox
    import cgthub.qualification
    import cgthub.release_tables
    import cgthub.scheduling_tables
    import cgthub.sync_state  # noqa: F401
    from cgthub.store import get_engine
    from cgthub.tables import Base

    with get_engine(db_url).connect() as connection:
        schema = connection.dialect.default_schema_name if connection.dialect.name == "postgresql" else None
        context = MigrationContext.configure(connection, opts={"compare_type": False, "target_metadata": Base.metadata})
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == [], (schema, diffs)


def test_bulk_writes_store_on_sqlite_exactly_what_core_stores(tmp_path) -> None:
    """The batch path's statements, run on the DBAPI, leave the same bytes as the Core statements."""
    import sqlite3
    from datetime import timedelta

    from cgthub import archive, ledger, projection, store
    from cgthub.tables import RawMessage, utcnow

    now = utcnow()
    berlin = timezone(timedelta(hours=2))
    raw = {
        "system": "hl7", "kind": "ORM^O01", "channel": "mllp", "dedupe_key": "EPIC:1", "checksum": "c" * 64,
        "size": 3, "payload": b"\x00\xffx", "content_type": "x-application/hl7-v2", "received_at": now,
        "last_received_at": now, "receive_count": 1, "status": "received",
    }  # fmt: skip
    order = ledger._new_order_row("ORD-1")
    writes = [
        (ledger._INSERT_ORDERS, [order, {**order, "id": "ORD-2", "on_hold": True}]),
        (ledger._INSERT_KEYS, [{"kind": "coi_id", "value": "CHW1234260000011", "order_id": "ORD-1"}]),
        (
            ledger._INSERT_ENTRIES,
            [
                {
                    "order_id": "ORD-1",
                    "seq": 1,
                    "source_system": "hospital",
                    "source_event_id": "e1",
                    "event_type": "order.enrolled",
                    "occurred_at": datetime(2026, 3, 2, 9, tzinfo=berlin),
                    "recorded_at": now,
                    "raw_id": None,
                    "body": '{"é":"ü"}',
                    "prev_hash": "0" * 64,
                    "entry_hash": "f" * 64,
                }
            ],
        ),
        (
            projection._update_orders(projection.KEPT_UNLESS_CHANGED),
            [
                {
                    "oid": "ORD-1",
                    **{f"p_{name}": None for name in projection._REFRESHED},
                    "p_status": "collected",
                    "p_on_hold": False,
                    "p_status_since": now,
                    "p_projection": {"b": [1.5, None, True], "a": "ü", "n": 2**70},
                    "p_updated_at": now,
                    "p_ledger_length": 1,
                    "p_ledger_head": "f" * 64,
                    "p_projected_length": 1,
                }
            ],
        ),
        (
            projection._INSERT_CHANGES,
            [
                {
                    "order_id": "ORD-1",
                    "status": "collected",
                    "previous_status": None,
                    "on_hold": False,
                    "milestones": {"collected": "2026-03-02T09:00:00Z"},
                    "changed": ["status"],
                    "status_since": now,
                    "market": "US",
                    "site": None,
                    "cmo": None,
                    "recorded_at": now,
                }
            ],
        ),
    ]

    def stored(bulk: bool) -> dict[str, list[tuple]]:
        url = f"sqlite:///{tmp_path / ('bulk.db' if bulk else 'core.db')}"
        store.upgrade(url)
        with store.session_scope(url) as session:
            connection = session.connection()
            if bulk:
                assert archive._INSERT_RAW.returning(connection, [raw]) == [(1, "hl7", "EPIC:1", "c" * 64)]
            else:
                connection.execute(archive._INSERT_RAW.statement, [raw])
            for write, rows in [*writes, (archive._MARK, [{"rid": 1, "st": "processed", "at": now}])]:
                write.run(connection, rows) if bulk else connection.execute(write.statement, rows)
        store.dispose_engines()
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            tables = [RawMessage.__tablename__, "orders", "order_keys", "ledger_entries", "order_changes"]
            return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}

    core, bulk = stored(False), stored(True)
    assert all(core.values()) and bulk == core


def test_a_bulk_write_that_needs_python_defaults_is_refused(tmp_path) -> None:
    from sqlalchemy import insert

    from cgthub import store
    from cgthub.bulk import BulkWrite
    from cgthub.tables import Order

    url = f"sqlite:///{tmp_path / 'refuse.db'}"
    store.upgrade(url)
    write = BulkWrite(insert(Order.__table__))
    with store.session_scope(url) as session, pytest.raises(ValueError, match="every value"):
        write.run(session.connection(), [{"id": "ORD-1", "status": "enrolled"}])
    store.dispose_engines()


def test_a_bulk_write_fails_as_core_does(tmp_path) -> None:
    """A constraint broken on the DBAPI path raises SQLAlchemy's IntegrityError, which callers retry on."""
    from sqlalchemy.exc import IntegrityError

    from cgthub import ledger, store

    url = f"sqlite:///{tmp_path / 'twice.db'}"
    store.upgrade(url)
    with store.session_scope(url) as session:
        ledger._INSERT_ORDERS.run(session.connection(), [ledger._new_order_row("ORD-1")])
        with pytest.raises(IntegrityError):
            ledger._INSERT_ORDERS.run(session.connection(), [ledger._new_order_row("ORD-1")])
        session.rollback()
    store.dispose_engines()


def test_batch_reads_and_returning_inserts_give_on_sqlite_what_core_gives(tmp_path) -> None:
    """Reads by pairs and by id, and a multi-chunk INSERT ... RETURNING, on the DBAPI and on Core."""
    from cgthub import archive, ledger, projection, store
    from cgthub.bulk import rows_by_pairs
    from cgthub.tables import OrderKey, utcnow

    url = f"sqlite:///{tmp_path / 'reads.db'}"
    store.upgrade(url)
    now = utcnow()
    raws = [
        {
            "system": "hl7", "kind": "ORM^O01", "channel": "file", "dedupe_key": f"EPIC:{n}", "checksum": "c" * 64,
            "size": 1, "payload": b"x", "content_type": "x-application/hl7-v2", "received_at": now,
            "last_received_at": now, "receive_count": 1, "status": "processed",
        }
        for n in range(3000)  # more than one chunk of the multi-row INSERT
    ]  # fmt: skip
    with store.session_scope(url) as session:
        connection = session.connection()
        returned = archive._INSERT_RAW.returning(connection, raws)
        assert sorted(returned) == [(n + 1, "hl7", f"EPIC:{n}", "c" * 64) for n in range(3000)]
        ledger._INSERT_ORDERS.run(connection, [ledger._new_order_row(f"ORD-{n}") for n in range(3)])
        projection._update_orders(projection.KEPT_UNLESS_CHANGED).run(
            connection,
            [
                {"oid": "ORD-1", **{f"p_{k}": None for k in projection._REFRESHED}, "p_status": "collected",
                 "p_on_hold": False, "p_projection": {"x": [1, "ü"]}, "p_updated_at": now, "p_ledger_length": 2,
                 "p_ledger_head": "h", "p_projected_length": 1}
            ],
        )  # fmt: skip
        ledger._INSERT_KEYS.run(
            connection, [{"kind": k, "value": v, "order_id": "ORD-1"} for k, v in (("coi_id", "C1"), ("lot", "L1"))]
        )
        reads = [
            (ledger._LOCK_HEADS, {"ids": ["ORD-0", "ORD-1", "ORD-9"]}),
            (projection._STORED_PROJECTIONS, {"ids": ["ORD-1", "ORD-2"]}),
        ]
        for read, params in reads:
            direct = sorted(read.rows(connection, params))
            assert direct and direct == sorted(tuple(r) for r in connection.execute(read.statement, params))
        assert dict(sorted(projection._STORED_PROJECTIONS.rows(connection, {"ids": ["ORD-1"]})))["ORD-1"] == {
            "x": [1, "ü"]
        }
        pairs = [("coi_id", "C1"), ("lot", "L1"), ("lot", "nope"), ("din", "D9")]
        wanted = ("kind", "value", "order_id")
        found = sorted(rows_by_pairs(session, OrderKey.__table__, wanted, "kind", "value", pairs))
        assert found == [("coi_id", "C1", "ORD-1"), ("lot", "L1", "ORD-1")]
    store.dispose_engines()


def test_a_sqlite_commit_is_synced_before_it_returns(tmp_path) -> None:
    """An AA goes out after the commit, so the commit must survive a power cut, not only a crash of
    the hub: the WAL is synced on every commit (synchronous=FULL), on the writer and reader engines."""
    from cgthub.store import get_engine

    url = f"sqlite:///{tmp_path / 'durable.db'}"
    for readonly in (False, True):
        with get_engine(url, readonly=readonly).connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_batch_read_expanded_once_per_length_reads_each_calls_own_values(tmp_path) -> None:
    """The SQL kept for one set of IN-list lengths serves a later call with other values (and an
    empty list, and more lengths than are kept) as Core does."""
    from sqlalchemy import and_, bindparam, or_, select

    from cgthub import ledger, store
    from cgthub.bulk import BatchRead
    from cgthub.tables import OrderKey

    url = f"sqlite:///{tmp_path / 'expand.db'}"
    store.upgrade(url)
    keys = OrderKey.__table__
    read = BatchRead(
        select(keys.c.kind, keys.c.value, keys.c.order_id).where(
            or_(
                *(
                    and_(keys.c.kind == bindparam(f"a{i}"), keys.c.value.in_(bindparam(f"b{i}", expanding=True)))
                    for i in range(2)
                )
            )
        )
    )
    read._KEEP = 3
    with store.session_scope(url) as session:
        connection = session.connection()
        ledger._INSERT_ORDERS.run(connection, [ledger._new_order_row("ORD-1")])
        ledger._INSERT_KEYS.run(
            connection,
            [{"kind": k, "value": f"{k}-{n}", "order_id": "ORD-1"} for k in ("lot", "din") for n in range(6)],
        )
        calls = [
            (["lot-0", "lot-1"], ["din-2"]),
            (["lot-3", "lot-4"], ["din-5"]),  # the same lengths: the kept SQL, these values
            ([], ["din-0", "din-1"]),
            (["lot-5"], []),
            (["lot-1", "lot-2", "lot-3"], ["din-3", "nope"]),  # a fourth shape: more than are kept
            (["lot-0", "lot-1"], ["din-4"]),
        ]
        for lots, dins in calls:
            params = {"a0": "lot", "b0": lots, "a1": "din", "b1": dins}
            direct = sorted(read.rows(connection, params))
            assert direct == sorted(tuple(r) for r in connection.execute(read.statement, params))
            assert [value for _kind, value, _order in direct] == sorted(v for v in lots + dins if v != "nope")
        assert 0 < len(read._plans[connection.dialect].texts) <= 3
