"""Databases that live as long as a `with` block, for tests and benches that fill one and throw it away:
a PostgreSQL schema of its own (`pg_schema`), a PostgreSQL database of its own (`pg_database`), or a
migrated SQLite file or schema (`migrated`). Whatever happens inside the block, the hub's engines are
disposed and what was made is dropped with everything in it, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from cgthub import store

# Lower case, so the name needs no quoting in search_path (which would fold it) and is the same
# unquoted in a hand-typed psql session.
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def _scratch_name(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"a scratch prefix is lower-case letters, digits and _ (at most 41): {prefix!r}")
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def _made(server_url: str, create: str, drop: str) -> Iterator[None]:
    """Runs `create` on the server, then `drop` after the block, once the hub's engines let go."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(create))
        try:
            yield
        finally:
            store.dispose_engines()  # their pooled connections would hold the schema's tables
            with admin.connect() as conn:
                conn.execute(text(drop))
    finally:
        admin.dispose()


@contextmanager
def pg_schema(server_url: str, prefix: str = "scratch") -> Iterator[str]:
    """The URL of a new, empty schema `<prefix>_<random>` on the PostgreSQL server `server_url` (a
    URL that may create schemas): `server_url` with `options=-csearch_path=<schema>`."""
    schema = _scratch_name(prefix)
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    with _made(server_url, f'CREATE SCHEMA "{schema}"', f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'):
        yield url.render_as_string(hide_password=False)


@contextmanager
def pg_database(server_url: str, prefix: str = "scratch") -> Iterator[str]:
    """The URL of a new, empty database `<prefix>_<random>` on the server of `server_url` (a URL that
    may create databases); dropped WITH (FORCE), so connections left open do not keep it."""
    name = _scratch_name(prefix)
    url = make_url(server_url).set(database=name)
    with _made(server_url, f'CREATE DATABASE "{name}"', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'):
        yield url.render_as_string(hide_password=False)


@contextmanager
def migrated(backend: str, pg_server: str, *, prefix: str = "scratch") -> Iterator[str]:
    """The URL of an empty database at the newest migration: a SQLite file in a temporary folder, or
    (backend postgresql) a `pg_schema` on `pg_server`."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as folder:
            url = f"sqlite:///{Path(folder) / 'hub.db'}"
            store.upgrade(url)
            try:
                yield url
            finally:
                store.dispose_engines()
        return
    with pg_schema(pg_server, prefix) as url:
        store.upgrade(url)
        yield url
