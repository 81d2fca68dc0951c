"""cgthub.devtools.scratch_db: the throwaway schemas and databases tests and benches fill; nothing is
left on the server after the block, even when the block fails with the hub's engines still open.

pg_database (a CREATE/DROP DATABASE costs 6-30 s on this machine) is exercised by
tests/test_celery_scaleout.py, whose Airflow metadata database it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text

from cgthub import store
from cgthub.devtools import scratch_db
from tests.conftest import PG_ADMIN_URL


def _server_has(sql: str, name: str) -> bool:
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return conn.execute(text(sql), {"name": name}).first() is not None
    finally:
        admin.dispose()


def _schemas(name: str) -> bool:
    return _server_has("select 1 from information_schema.schemata where schema_name = :name", name)


@pytest.mark.postgres
def test_a_scratch_schema_holds_what_its_url_writes_and_is_gone_after_a_failed_block(pg_schema_url: str) -> None:
    with pytest.raises(RuntimeError, match="the block failed"), scratch_db.pg_schema(PG_ADMIN_URL, "t_scratch") as url:
        assert "options=-csearch_path%3Dt_scratch_" in url
        schema = make_url(url).query["options"].removeprefix("-csearch_path=")
        with store.get_engine(url).begin() as conn:  # the hub's pooled engine, still open at the end
            conn.execute(text("create table probe (n int)"))
            conn.execute(text("insert into probe values (1)"))
        admin = create_engine(PG_ADMIN_URL)  # search_path public: the row is found in the schema by name
        with admin.connect() as conn:
            assert conn.execute(text(f'select count(*) from "{schema}".probe')).scalar() == 1
        admin.dispose()
        raise RuntimeError("the block failed")
    assert not _schemas(schema)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migrated_is_at_the_newest_migration_and_leaves_nothing(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "postgresql":
        request.getfixturevalue("pg_schema_url")  # skipped when the server is down, failed under CI=true
    with scratch_db.migrated(backend, PG_ADMIN_URL, prefix="t_migrated") as url:
        heads = set(ScriptDirectory.from_config(store.alembic_config(url)).get_heads())
        with store.get_engine(url).connect() as conn:
            assert set(conn.execute(text("select version_num from alembic_version")).scalars()) == heads
            assert conn.execute(text("select count(*) from orders")).scalar() == 0
        place = make_url(url).database if backend == "sqlite" else make_url(url).query["options"].split("=", 1)[1]
    if backend == "sqlite":
        assert place and not Path(place).parent.exists()
    else:
        assert place and not _schemas(place)


def test_a_prefix_that_would_need_quoting_is_refused() -> None:
    with pytest.raises(ValueError, match="lower-case"), scratch_db.pg_schema(PG_ADMIN_URL, 'Bench"; drop'):
        pass
