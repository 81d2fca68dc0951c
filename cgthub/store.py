"""Database connections for the hub: engines, sessions and schema upgrades.

SQLite (default, a file under var/) and PostgreSQL. SQLite writers start with BEGIN IMMEDIATE so
two processes appending to one order serialize instead of failing on a lock upgrade; readers use a
separate engine with deferred transactions so API reads never queue behind the write lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from operator import itemgetter
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, Select, Table, and_, bindparam, create_engine, event, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from cgthub.jsontext import canonical_json
from cgthub.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def database_url(url: str | None = None) -> str:
    return url or get_settings().database_url


def _sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every ~40 MB of WAL, not every 4 MB: pages a busy feed rewrites on each commit
        # (index leaves, order rows) are copied back once per checkpoint, so fewer is much cheaper.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_engines: dict[tuple[str, bool], Engine] = {}
_factories: dict[tuple[str, bool], sessionmaker[Session]] = {}


def _create_engine(url: str, readonly: bool) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, json_serializer=canonical_json
        )
        _sqlite_pragmas(engine, immediate=not readonly)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, json_serializer=canonical_json)


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
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _factories.clear()


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
    """Bring the schema to `revision` (Alembic)."""
    from alembic import command

    cfg = alembic_config(url)
    with get_engine(url).connect() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
        connection.commit()


def rows_by_pairs(
    session: Session,
    table: Table,
    wanted: tuple[str, ...],
    first: str,
    second: str,
    pairs: Iterable[tuple[str, str]],
    chunk: int = 500,
) -> Iterator[tuple[Any, ...]]:
    """The `wanted` columns of the rows found by (first, second) pairs, for a two-column unique index.

    `first = ? AND second IN (...)` per distinct first value, OR-ed into one statement per chunk of
    pairs: the index serves each branch (a row-value IN would scan it on SQLite), and a small batch
    costs one statement, not one per kind of key. The statement for each number of branches is
    built once and kept, its values bound as parameters: building and hashing a fresh one cost
    four times more than running it, which is most of a small batch's time.
    """
    groups: dict[str, list[str]] = {}
    for a, b in set(pairs):
        groups.setdefault(a, []).append(b)
    branches: list[tuple[str, list[str]]] = []
    size = 0
    connection = session.connection()
    for a, values in groups.items():
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            branches.append((a, part))
            size += len(part)
            if size >= chunk:
                yield from _run_pairs(connection, table, wanted, first, second, branches)
                branches, size = [], 0
    if branches:
        yield from _run_pairs(connection, table, wanted, first, second, branches)


_pair_reads: dict[tuple[str, tuple[str, ...], str, str, int], BatchRead] = {}


def _run_pairs(
    connection: Connection,
    table: Table,
    wanted: tuple[str, ...],
    first: str,
    second: str,
    branches: list[tuple[str, list[str]]],
) -> list[tuple[Any, ...]]:
    shape = (table.name, wanted, first, second, len(branches))
    read = _pair_reads.get(shape)
    if read is None:
        read = _pair_reads[shape] = BatchRead(
            select(*(table.c[name] for name in wanted)).where(
                or_(
                    *(
                        and_(
                            table.c[first] == bindparam(f"a{i}"),
                            table.c[second].in_(bindparam(f"b{i}", expanding=True)),
                        )
                        for i in range(len(branches))
                    )
                )
            )
        )
    params: dict[str, Any] = {}
    for i, (a, values) in enumerate(branches):
        params[f"a{i}"], params[f"b{i}"] = a, values
    return read.rows(connection, params)


class BatchRead:
    """A SELECT that the batch path runs once a batch with that batch's values (IN lists).

    On SQLite it runs on the DBAPI cursor: SQLAlchemy compiles it once and expands its IN lists
    (`construct_expanded_state`), and the selected columns' result processors convert what comes
    back, so the rows are Core's rows as tuples (tests/test_tables.py compares them) at a fifth of
    Core's cost a statement. A statement whose parameters need bind processing runs on Core, as it
    does on other backends.
    """

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        # Per dialect object (not its id(), which a later engine's dialect may reuse once freed).
        self._plans: WeakKeyDictionary[Any, tuple[Any, list[Any]] | None] = WeakKeyDictionary()

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        dialect = connection.dialect
        plan = self._plans[dialect] if dialect in self._plans else self._plan(dialect)
        if plan is None:
            return [tuple(row) for row in connection.execute(self.statement, params)]
        compiled, processors = plan
        state = compiled.construct_expanded_state(params)
        values = [state.parameters[name] for name in state.positiontup]
        dbapi = dialect.loaded_dbapi
        try:
            found = connection.connection.driver_connection.execute(state.statement, values).fetchall()  # type: ignore[union-attr]
        except dbapi.Error as exc:
            raise DBAPIError.instance(state.statement, values, exc, dbapi.Error, dialect=dialect) from exc
        if any(processors):
            return [tuple(p(v) if p else v for p, v in zip(processors, row, strict=True)) for row in found]
        return found  # type: ignore[no-any-return]

    def _plan(self, dialect: Any) -> tuple[Any, list[Any]] | None:
        plan = None
        if dialect.name == "sqlite":
            compiled = self.statement.compile(dialect=dialect)
            if all(b.type.dialect_impl(dialect).bind_processor(dialect) is None for b in compiled.binds.values()):
                processors = [
                    c.type.dialect_impl(dialect).result_processor(dialect, None)
                    for c in self.statement.selected_columns
                ]
                plan = (compiled, processors)
        self._plans[dialect] = plan
        return plan


class BulkWrite:
    """An INSERT or UPDATE that the batch write path runs for many rows at once.

    On SQLite the rows go straight to the DBAPI's `executemany`, with the SQL that SQLAlchemy
    compiles once for the statement and the bind processors of the columns' own types (so a value
    is stored exactly as Core would store it; tests/test_tables.py compares the two). Core spends
    about 40 us a statement and 4 us a row before SQLite starts, more than SQLite's own work on a
    small group commit. On other backends it is the Core statement. The rows must give every
    parameter: a statement that needs defaults computed in Python is refused when first run.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._plans: WeakKeyDictionary[Any, dict[tuple[str, ...], tuple[str, Any, list[tuple[int, Any]]]]] = (
            WeakKeyDictionary()
        )

    def run(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if connection.dialect.name != "sqlite":
            connection.execute(self.statement, rows)
            return
        sql, values = self._bound(connection.dialect, rows)
        self._call(connection, "executemany", sql, values)

    def returning(self, connection: Connection, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """An INSERT ... RETURNING of all the rows, with what it returns for each (in no set order).
        On SQLite one multi-row INSERT per chunk of rows (as Core's "insertmanyvalues" does)."""
        if not rows:
            return []
        dialect = connection.dialect
        if dialect.name != "sqlite":
            return [tuple(row) for row in connection.execute(self.statement, rows)]
        sql, values = self._bound(dialect, rows)
        head, sep, tail = sql.partition(" RETURNING ")
        group_at = head.rfind(" VALUES (")
        if not sep or group_at < 0 or head[group_at + 8 :] != "(" + ", ".join("?" * len(values[0])) + ")":
            raise ValueError(f"{self.statement}: not an INSERT ... VALUES (...) RETURNING ... statement")
        group, per_chunk = head[group_at + 8 :], max(1, 32_000 // len(values[0]))  # SQLite binds at most 32,766
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(values), per_chunk):
            part = values[start : start + per_chunk]
            text = f"{head[:group_at]} VALUES {', '.join([group] * len(part))} RETURNING {tail}"
            out.extend(self._call(connection, "execute", text, [v for value in part for v in value]).fetchall())
        return out

    def _bound(self, dialect: Any, rows: list[dict[str, Any]]) -> tuple[str, list[list[Any]]]:
        """The compiled SQL, and each row's values in its parameters' order, bind-processed."""
        keys = tuple(rows[0])
        plans = self._plans.get(dialect)
        if plans is None:
            plans = self._plans[dialect] = {}
        plan = plans.get(keys)
        if plan is None:
            plan = plans[keys] = self._compile(dialect, keys)
        sql, pick, processors = plan
        values = [list(pick(row)) for row in rows]
        for i, process in processors:
            for value in values:
                value[i] = process(value[i])
        return sql, values

    @staticmethod
    def _call(connection: Connection, method: str, sql: str, values: Any) -> Any:
        dbapi = connection.dialect.loaded_dbapi
        try:
            return getattr(connection.connection.driver_connection, method)(sql, values)
        except dbapi.Error as exc:  # as Core raises it (IntegrityError and friends), for the callers' retries
            raise DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=connection.dialect) from exc

    def _compile(self, dialect: Any, keys: tuple[str, ...]) -> tuple[str, Any, list[tuple[int, Any]]]:
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
        if compiled.insert_prefetch or compiled.update_prefetch or compiled.positiontup is None:
            raise ValueError(f"{self.statement}: a bulk write must be given every value (no Python defaults)")
        names = list(compiled.positiontup)
        types = {name: compiled.binds[name].type for name in names}
        processors = [
            (i, process)
            for i, name in enumerate(names)
            if (process := types[name].dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        pick = itemgetter(*names) if len(names) > 1 else (lambda row, _n=names[0]: (row[_n],))
        return compiled.string, pick, processors


def race_guard(session: Session) -> AbstractContextManager[Any]:
    """A savepoint where another writer may win a race (PostgreSQL), so the loser can look again.

    SQLite writers are serialized by BEGIN IMMEDIATE: no concurrent insert can collide, and the
    savepoint's two extra statements per batch are saved.
    """
    return nullcontext() if session.get_bind().dialect.name == "sqlite" else session.begin_nested()
