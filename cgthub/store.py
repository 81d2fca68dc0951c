"""Database connections for the hub: engines, sessions and schema upgrades.

SQLite (default, a file under var/) and PostgreSQL. SQLite writers start with BEGIN IMMEDIATE so
two processes appending to one order serialize instead of failing on a lock upgrade; readers use a
separate engine with deferred transactions so API reads never queue behind the write lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from cgthub.jsontext import canonical_json
from cgthub.settings import SettingError, get_settings
from cgthub.wal_checkpoint import Watched, checkpointer

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def database_url(url: str | None = None) -> str:
    return url or get_settings().database_url


class DatabaseMissing(SettingError):
    """The database a command would read or write is not there (only `cgthub db upgrade` makes one)."""


class NotADatabaseURL(SettingError):
    """The configured URL names no database the hub can use."""


def safe_url(url: str) -> str:
    """The database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


_URL_FORMS = "sqlite:///path/to/cgthub.db or postgresql://user@host:5432/database"


def check_database(url: str | None = None, *, may_create: bool = False) -> None:
    """Refuse a URL that is no database, and an SQLite file that does not exist, before anything is
    made: SQLite would otherwise create an empty database (and its directories) at any typo.
    `may_create` (schema upgrades only) allows a new file in an existing directory, or in the var
    directory, which the hub makes itself."""
    url = database_url(url)
    if not url.startswith(("sqlite://", "sqlite+", "postgresql://", "postgresql+")):
        raise NotADatabaseURL(f"{safe_url(url)} is not a database URL", f"set CGTHUB_DATABASE_URL to {_URL_FORMS}")
    path = _sqlite_file(url)
    if path is None or Path(path).exists():
        return
    file = Path(path)
    if not may_create:
        raise DatabaseMissing(
            f"the database {file} does not exist",
            "create it with `cgthub db upgrade`, or set CGTHUB_DATABASE_URL (or CGTHUB_VAR_DIR) to the hub's database",
        )
    if file.parent.resolve() == get_settings().var_dir.resolve():
        file.parent.mkdir(parents=True, exist_ok=True)
    elif not file.parent.is_dir():
        raise DatabaseMissing(
            f"cannot create the database {file}: the directory {file.parent} does not exist",
            "create the directory first, or correct CGTHUB_DATABASE_URL",
        )


def _sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit syncs the WAL before it returns. An AA is sent only after the commit, and
        # with NORMAL a committed transaction can still vanish in a power cut or an OS crash, after
        # the sender has let its copy go. It costs one fsync per commit.
        cursor.execute("PRAGMA synchronous=FULL")
        # A commit checkpoints only past ~40 MB of WAL, not 4 MB: the process's background checkpointer
        # (`cgthub.wal_checkpoint`) copies the log back first, so this is the fallback.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_engines: dict[tuple[str, bool], Engine] = {}
_factories: dict[tuple[str, bool], sessionmaker[Session]] = {}


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL; None for another backend or an in-memory database."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return path if path and path != ":memory:" else None


def _create_private(path: Path) -> None:
    """Make a new database file readable by its owner only, before SQLite opens it: SQLite gives the
    -wal and -shm files it makes beside it the database file's mode, so none of the three, which
    hold every payload's metadata and the pseudonymized ledger, is readable by other users."""
    if path.parent.is_dir():  # a missing folder is the caller's mistake: SQLite then names it, nothing is made
        # O_EXCL: an existing file is never opened here. Closing any descriptor of the database file
        # drops every POSIX lock this process's SQLite connections hold on it (fcntl locks belong to
        # the process), so another process could take the file as unused, checkpoint and reset the
        # WAL under them, and they read a stale snapshot (a CLI's committed write unseen).
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # an existing file keeps its mode


def _create_engine(url: str, readonly: bool) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_serializer=canonical_json,
            hide_parameters=True,  # a failed statement's error and log never quote the values (PHI)
        )
        if path is not None:
            # On the first connection, not here: making an engine (or watching its file) creates nothing.
            event.listen(engine, "do_connect", lambda *_args: _create_private(Path(path)))
        _sqlite_pragmas(engine, immediate=not readonly)
        if not readonly and path is not None:
            checkpointer.watch(path)  # commits then seldom pay for copying the WAL back
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        json_serializer=canonical_json,
        hide_parameters=True,  # a failed statement's error and log never quote the values (PHI)
    )


def get_engine(url: str | None = None, *, readonly: bool = False) -> Engine:
    key = (database_url(url), readonly)
    if key not in _engines:
        _engines[key] = _create_engine(*key)
    return _engines[key]


def point_read_engine(url: str | None = None) -> Engine:
    """For reads of one statement each (the API's hot path). On PostgreSQL an AUTOCOMMIT engine: no
    BEGIN and ROLLBACK round trips around the statement, which is its own snapshot; so never use it
    for reads that must agree with each other. On SQLite the read-only engine (reads cost no trip)."""
    url = database_url(url)
    if url.startswith("sqlite"):
        return get_engine(url, readonly=True)
    key = (url + "#autocommit", True)
    if key not in _engines:
        _engines[key] = get_engine(url, readonly=True).execution_options(isolation_level="AUTOCOMMIT")
    return _engines[key]


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines (tests, after fork)."""
    for (url, readonly), engine in _engines.items():
        path = _sqlite_file(url)
        if path is not None and not readonly:
            checkpointer.forget(path)
        engine.dispose()
    _engines.clear()
    _factories.clear()


def wal_checkpoints(url: str | None = None) -> Watched | None:
    """What this process's background WAL checkpoints did for a SQLite database it writes."""
    path = _sqlite_file(database_url(url))
    return checkpointer.watching(path) if path is not None else None


@contextmanager
def session_scope(url: str | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    key = (database_url(url), readonly)
    factory = _factories.get(key)
    if factory is None:  # one per engine: a new sessionmaker is a new Session class, costly to set up
        factory = _factories[key] = sessionmaker(bind=get_engine(url, readonly=readonly), expire_on_commit=False)
    session = factory()
    try:
        yield session
        if not readonly:
            session.commit()
        # A read-only session just closes: the pool rolls the connection back, and the objects
        # read stay usable (a rollback would expire them).
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "heads") -> None:
    """Bring the schema to `revision` (Alembic); the only way a new database is made."""
    from alembic import command

    check_database(url, may_create=True)
    cfg = alembic_config(url)
    with get_engine(url).connect() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
        connection.commit()


def race_guard(session: Session) -> AbstractContextManager[Any]:
    """A savepoint where another writer may win a race (PostgreSQL), so the loser can look again.

    SQLite writers are serialized by BEGIN IMMEDIATE: no concurrent insert can collide, and the
    savepoint's two extra statements per batch are saved.
    """
    return nullcontext() if session.get_bind().dialect.name == "sqlite" else session.begin_nested()


_IGNORING_INSERTS: dict[tuple[str, str], Any] = {}


def insert_ignoring_conflicts(session: Session, model: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING into `model`'s table (built once per backend and table): two
    writers adding the same row at once (workers judging one batch, replicas recording one key) do
    not fail each other."""
    dialect = session.get_bind().dialect.name
    key = (dialect, model.__tablename__)
    if key not in _IGNORING_INSERTS:
        maker = postgresql.insert if dialect == "postgresql" else sqlite.insert
        _IGNORING_INSERTS[key] = maker(model.__table__).on_conflict_do_nothing()
    return _IGNORING_INSERTS[key]
