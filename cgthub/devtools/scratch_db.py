"""A migrated database that lives as long as a `with` block: a SQLite file in a temporary folder,
or a schema of its own on a PostgreSQL server (made, migrated, dropped with everything in it).

For benches and tests that fill a database and measure it (bench.lockout_bench).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from cgthub import store


@contextmanager
def migrated(backend: str, pg_server: str, *, prefix: str = "scratch") -> Iterator[str]:
    """The URL of an empty database at the newest migration; `pg_server` is a PostgreSQL URL that
    may create schemas (used when `backend` is postgresql)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as folder:
            url = f"sqlite:///{Path(folder) / 'hub.db'}"
            store.upgrade(url)
            try:
                yield url
            finally:
                store.dispose_engines()
        return
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{pg_server}?options=-csearch_path%3D{schema}"
        store.upgrade(url)
        yield url
    finally:
        store.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
