"""The change feed: one row per change of an order's normalized status, hold flag or milestones.

`projection.refresh_many` writes `change_row`s for the projection before and after, in the same transaction,
so a consumer of the feed sees every change exactly when the order row shows it. The feed is read
in a total order that never lets a late commit slip behind a reader's cursor:

* PostgreSQL: each row carries the id of the transaction that wrote it (`tx`). Only rows of
  transactions older than the oldest one still running that can write to this database (`_pg_horizon`)
  are served, ordered by (tx, id); no row can ever appear below a served position, so resuming from a
  cursor is exact.
* SQLite: writers are serialized (BEGIN IMMEDIATE), ids commit in order, and `tx` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ColumnElement, Index, String, and_, select, text, tuple_
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.schema import FetchedValue

from cgthub.tables import Base, BigId, utcnow

# What a change consumer cares about; everything else in the projection is detail.
WATCHED: dict[str, Any] = {"status": None, "on_hold": False, "milestones": {}}  # field -> value before any event
PG_TX_DEFAULT = "(pg_current_xact_id()::text)::bigint"


class OrderChange(Base):
    __tablename__ = "order_changes"
    __table_args__ = (Index("ix_order_changes_position", "tx", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tx: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    order_id: Mapped[str] = mapped_column(String(40))  # not indexed: no query reads by it (migration 0010)
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str | None] = mapped_column(String(32))
    on_hold: Mapped[bool] = mapped_column(Boolean)
    milestones: Mapped[dict[str, Any]]
    changed: Mapped[list[Any]]
    status_since: Mapped[datetime | None]
    market: Mapped[str | None] = mapped_column(String(2))
    site: Mapped[str | None] = mapped_column(String(64))
    cmo: Mapped[str | None] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True, order=True)
class FeedPosition:
    """Where a consumer is in the feed: after the change at (tx, id). (0, 0) is the beginning."""

    tx: int = 0
    id: int = 0


def change_row(
    order_id: str, before: dict[str, Any] | None, after: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any] | None:
    """The change-feed row for an order whose projection went from `before` to `after`, if a watched
    field differs; `fields` are the order row's new values (status_since, market, site, cmo, and
    updated_at, which is when the change is recorded: the moment the order row shows it).
    `projection.refresh_many` inserts these rows in bulk in the transaction that updates the orders."""
    before = before or {}
    changed = [name for name, empty in WATCHED.items() if before.get(name, empty) != after.get(name, empty)]
    if not changed:
        return None
    return {
        "order_id": order_id,
        "status": after["status"],
        "previous_status": before.get("status"),
        "on_hold": bool(after.get("on_hold")),
        "milestones": dict(after.get("milestones") or {}),
        "changed": changed,
        "status_since": fields.get("status_since"),
        "market": fields.get("market"),
        "site": fields.get("site"),
        "cmo": fields.get("cmo"),
        "recorded_at": fields.get("updated_at") or utcnow(),
    }


def read(
    session: Session,
    after: FeedPosition,
    limit: int,
    *,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[OrderChange]:
    """Up to `limit` changes after `after`, in feed order; `where` narrows them (data scope, filters)."""
    query = (
        select(OrderChange).where(_after(session, after), *where).order_by(OrderChange.tx, OrderChange.id).limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.where(OrderChange.tx < _pg_horizon(session))
    return list(session.scalars(query))


def read_rows(
    session: Session, after: FeedPosition, limit: int, *, where: Sequence[ColumnElement[bool]] = ()
) -> list[Any]:
    """Like `read` but as plain rows (no ORM identity map): the fast path for the HTTP feed."""
    columns = OrderChange.__table__.c
    query = select(*columns).where(_after(session, after), *where).order_by(columns.tx, columns.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.where(columns.tx < _pg_horizon(session))
    return list(session.execute(query))


def scan(
    session: Session,
    after: FeedPosition,
    limit: int,
    *,
    where: Sequence[ColumnElement[bool]] = (),
    columns: Sequence[Any] = (),
) -> tuple[list[Any], FeedPosition]:
    """Up to `limit` rows after `after` (as `read_rows`), and the position the feed was scanned to.

    When `where` filters rows out, the scanned position moves past them, so a narrow reader (a
    site's key, a subscription to one status) does not rescan the same foreign rows on every call.
    Both statements share one horizon, so nothing below the scanned position can still appear.
    `columns` picks what to select (tx and id must be among them); default: every column.
    """
    table = OrderChange.__table__.c
    final = [table.tx < _pg_horizon(session)] if session.get_bind().dialect.name == "postgresql" else []
    query = (
        select(*(columns or table))
        .where(_after(session, after), *where, *final)
        .order_by(table.tx, table.id)
        .limit(limit)
    )
    rows = list(session.execute(query))
    if len(rows) == limit:
        return rows, position(rows[-1])
    last = session.execute(
        select(table.tx, table.id)
        .where(_after(session, after), *final)
        .order_by(table.tx.desc(), table.id.desc())
        .limit(1)
    ).first()
    return rows, position(last) if last is not None else after


def end(session: Session) -> FeedPosition:
    """The position after the last final change: a reader starting here misses nothing still in flight."""
    table = OrderChange.__table__.c
    final = [table.tx < _pg_horizon(session)] if session.get_bind().dialect.name == "postgresql" else []
    last = session.execute(
        select(table.tx, table.id).where(*final).order_by(table.tx.desc(), table.id.desc()).limit(1)
    ).first()
    return position(last) if last is not None else FeedPosition()


def position(change: Any) -> FeedPosition:
    return FeedPosition(int(change.tx or 0), int(change.id))


def _after(session: Session, pos: FeedPosition) -> ColumnElement[bool]:
    """Rows past `pos`, as an index range on (tx, id): an OR of the two cases would scan from the start."""
    if session.get_bind().dialect.name == "postgresql":
        return tuple_(OrderChange.tx, OrderChange.id) > tuple_(pos.tx, pos.id)
    return and_(OrderChange.tx == pos.tx, OrderChange.id > pos.id)  # SQLite: tx is always 0


# The snapshot's in-progress xids, less those known to be another database's; the oldest left, or the
# snapshot's xmax when none is left; or the reader's own xid, if it has one and it is older (a snapshot
# leaves its own transaction out of its list; xmin counts it). NOT EXISTS, not NOT IN: a NULL must
# never clear an xid. LEAST skips a NULL (no xid of its own).
_PG_HORIZON = text(
    """
    SELECT (LEAST(
        (SELECT min(x) FROM pg_snapshot_xip(s) AS x
         WHERE NOT EXISTS (SELECT FROM pg_stat_activity AS a
                           WHERE a.backend_xid = x::xid AND a.datname <> current_database())
           AND NOT EXISTS (SELECT FROM pg_prepared_xacts AS p
                           WHERE p.transaction = x::xid AND p.database <> current_database())),
        pg_snapshot_xmax(s),
        pg_current_xact_id_if_assigned())::text)::bigint
    FROM pg_current_snapshot() AS s
    """
)


def _pg_horizon(session: Session) -> int:
    """The oldest transaction id that may still commit a row of this database: every row below it is final.

    PostgreSQL's own xmin is the server's: a transaction in any database (Airflow's metadata database
    beside the hub's, a report, a session left idle in transaction) would hold the feed back for as
    long as it runs. So the horizon is taken from one snapshot (`pg_current_snapshot`): its xmax, or the
    oldest of its in-progress xids that is not known to belong to another database, or the reader's
    own xid when it has one (a transaction that wrote changes must not serve them before it commits,
    as under xmin). That is safe:
    - the snapshot fixes the set: below its xmax, an xid not listed in progress (the reader's own
      aside, counted above) has ended; one at or above xmax (running, or still to be assigned) is
      beyond the horizon anyway;
    - an xid belongs to one database for life: a backend is connected to one database until it exits
      (a prepared transaction keeps its database, `pg_prepared_xacts.database`), and a row of our
      tables can only be written by a transaction of our database (dblink or postgres_fdw open a
      session of their own in it, with an xid of its own);
    - an xid is cleared only when it is seen in another database (`pg_stat_activity.backend_xid` with
      its `datname`, or a prepared one's `database`); one not seen there (it ended between the two
      reads, a backend without a database, a lookup that shows nothing) still bounds the horizon.
      `pg_stat_activity` shows `datid` and `backend_xid` of every session to every role (only the
      query text and the like need `pg_read_all_stats`), and a transaction reads it once: a later
      read in the same transaction may miss new sessions, which then bound the horizon, never clear it.
    `pg_current_xact_id` (the rows' `tx`) and `backend_xid` are both the top-level transaction's id.
    """
    return int(session.execute(_PG_HORIZON).scalar_one())


__all__ = ["FeedPosition", "OrderChange", "change_row", "end", "position", "read", "read_rows", "scan"]
