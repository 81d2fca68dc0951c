"""The statements the batch ingest path runs for every group commit, cheap on SQLite.

On a small batch, SQLAlchemy's work per statement and per row costs more than SQLite's own. The
statements here are built once, and on SQLite run on the DBAPI connection of the caller's
transaction with the SQL and the value conversions SQLAlchemy compiles for them, so what is
stored and read is what Core would store and read (tests/test_tables.py compares the two).
On other backends they are plain Core statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Select, Table, and_, bindparam, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


def rows_by_pairs(
    session: Session,
    table: Table,
    wanted: tuple[str, ...],
    first: str,
    second: str,
    pairs: Iterable[tuple[str, str | int]],
    chunk: int = 500,
) -> Iterator[tuple[Any, ...]]:
    """The `wanted` columns of the rows found by (first, second) pairs, for a two-column unique index.

    `first = ? AND second IN (...)` per distinct first value, OR-ed into one statement per chunk of
    pairs: the index serves each branch (a row-value IN would scan it on SQLite), and a small batch
    costs one statement, not one per kind of key. The statement for each number of branches is
    built once and kept, its values bound as parameters: building and hashing a fresh one cost
    four times more than running it, which is most of a small batch's time.
    """
    groups: dict[str, list[str | int]] = {}
    for a, b in set(pairs):
        groups.setdefault(a, []).append(b)
    if not groups:
        return  # nothing to look up: not even the session's connection (a few microseconds)
    branches: list[tuple[str, list[str | int]]] = []
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
    branches: list[tuple[str, list[str | int]]],
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

    On SQLite SQLAlchemy compiles it once and expands its IN lists (`construct_expanded_state`),
    and the selected columns' result processors convert what comes back: Core's rows, as tuples,
    at a fifth of Core's cost a statement. The expanded SQL depends only on the lengths of the IN
    lists, so it is kept per lengths (expanding costs as much as running the read), and
    the values are the parameters in order, each list in place of its one placeholder. A statement
    whose parameters need bind processing runs on Core.
    """

    _KEEP = 256  # expanded texts kept per statement; a batch path needs a few dozen lengths

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        # Per dialect object (not its id(), which a later engine's dialect may reuse once freed).
        self._plans: WeakKeyDictionary[Any, _ReadPlan | None] = WeakKeyDictionary()

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        dialect = connection.dialect
        plan = self._plans[dialect] if dialect in self._plans else self._plan(dialect)
        if plan is None:
            return [tuple(row) for row in connection.execute(self.statement, params)]
        sql, values = plan.bound(params)
        found = _on_driver(connection, "execute", sql, values).fetchall()
        if plan.processors:
            processors = plan.processors
            return [tuple(p(v) if p else v for p, v in zip(processors, row, strict=True)) for row in found]
        return found  # type: ignore[no-any-return]

    def _plan(self, dialect: Any) -> _ReadPlan | None:
        plan = None
        if dialect.name == "sqlite":
            compiled = self.statement.compile(dialect=dialect)
            if all(b.type.dialect_impl(dialect).bind_processor(dialect) is None for b in compiled.binds.values()):
                processors = [
                    c.type.dialect_impl(dialect).result_processor(dialect, None)
                    for c in self.statement.selected_columns
                ]
                plan = _ReadPlan(compiled, processors if any(processors) else None, self._KEEP)
        self._plans[dialect] = plan
        return plan


class _ReadPlan:
    """A compiled SELECT, its result processors, and its SQL expanded for each IN-list length seen."""

    def __init__(self, compiled: Any, processors: list[Any] | None, keep: int) -> None:
        self.compiled, self.processors, self.keep = compiled, processors, keep
        self.order = list(compiled.positiontup)
        self.expanding = frozenset(name for name, bind in compiled.binds.items() if bind.expanding)
        self.texts: dict[tuple[int, ...], str] = {}

    def bound(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        values: list[Any] = []
        lengths: list[int] = []
        for name in self.order:
            value = params[name]
            if name in self.expanding:
                values.extend(value)
                lengths.append(len(value))
            else:
                values.append(value)
        shape = tuple(lengths)
        sql = self.texts.get(shape)
        if sql is None:
            state = self.compiled.construct_expanded_state(params)
            if [state.parameters[name] for name in state.positiontup] != values:  # never: the order is SQL's
                raise AssertionError(f"{self.compiled}: expanded parameters out of their SQL order")
            if len(self.texts) >= self.keep:
                self.texts.clear()
            sql = self.texts[shape] = state.statement
        return sql, values


_NOTHING = object()  # no value seen yet (None is a value)


class BulkWrite:
    """An INSERT or UPDATE that the batch write path runs for many rows at once.

    On SQLite the rows go straight to the DBAPI's `executemany`, with the SQL that SQLAlchemy
    compiles once for the statement and the bind processors of the columns' own types. The rows
    must give every parameter: a statement that needs defaults computed in Python is refused
    when first run.
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
        _on_driver(connection, "executemany", sql, values)

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
            out.extend(_on_driver(connection, "execute", text, [v for value in part for v in value]).fetchall())
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
            # A batch's rows often share one object in a column (the batch's moment in recorded_at
            # or updated_at): a bind processor is a pure conversion, so it runs once for a run of it.
            last: Any = _NOTHING
            done: Any = None
            for value in values:
                given = value[i]
                if given is not last:
                    last, done = given, process(given)
                value[i] = done
        return sql, values

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


def _on_driver(connection: Connection, method: str, sql: str, values: Any) -> Any:
    """`execute` or `executemany` on the DBAPI connection under `connection`'s transaction; its
    errors raised as Core raises them (IntegrityError and friends), for the callers' retries."""
    dbapi = connection.dialect.loaded_dbapi
    try:
        return getattr(connection.connection.driver_connection, method)(sql, values)
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=connection.dialect) from exc
