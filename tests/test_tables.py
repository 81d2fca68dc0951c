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
