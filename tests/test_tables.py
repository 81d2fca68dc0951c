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
    import cgthub.ops_tables
    import cgthub.outbox  # noqa: F401
    import connectors.common.sync_state  # noqa: F401
    from cgthub.store import get_engine
    from cgthub.tables import Base

    with get_engine(db_url).connect() as connection:
        schema = connection.dialect.default_schema_name if connection.dialect.name == "postgresql" else None
        context = MigrationContext.configure(connection, opts={"compare_type": False, "target_metadata": Base.metadata})
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == [], (schema, diffs)
