"""The order projection: the `orders` row is the life cycle folded over the order's ledger.

`lifecycle.project` is pure, so the row can always be recomputed from the whole ledger and late
or out-of-order events land where they belong; in the common case (new events after everything
folded) they are folded onto the stored projection. Rows are written with Core statements, one
UPDATE for a whole batch. New anomalies and excursions raise alerts.

The projection folds only the events it is handed: the ledger locks the order rows, reads their
chain heads, and hands over an order's whole history when `needs_history` says the new events
cannot be folded onto what is stored. So this module never reads the ledger (nor imports it).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Row, bindparam, event, insert, select, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key
from sqlalchemy.types import TypeDecorator

from cgthub import alerts, changes
from cgthub.bulk import BatchRead, BulkWrite
from cgthub.lifecycle import OrderProjection, can_advance, fold_onto, project
from cgthub.model import CanonicalEvent
from cgthub.tables import Order, utcnow

_CHUNK = 400


@dataclass
class OrderHead:
    """What the ledger and the projection need of an order row, read once per batch with its lock."""

    id: str
    ledger_length: int = 0
    ledger_head: str = ""
    projected_length: int = 0
    projection: dict[str, Any] = field(default_factory=dict)
    is_new: bool = False
    state: OrderProjection | None = None  # the stored projection, parsed, when this process has it
    indexed: tuple[Any, ...] = ()  # the row's indexed columns that a refresh may leave as they are
    # A new order's refresh worked out before its row was inserted (`new_order_rows`): its state, its
    # dump and the row's values; the refresh then writes no UPDATE for it.
    folded: tuple[OrderProjection, dict[str, Any], dict[str, Any]] | None = None


class _RecentProjections:
    """Projections this process committed last, so a busy order's next batch skips parsing its row.

    An entry is keyed by order id and valid only for the chain head it was folded to. Entries enter
    when the writing transaction commits (never before: a rollback must not leave them behind) and
    are taken out when used, so the state folded onward in place belongs to that transaction alone.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[str, OrderProjection, dict[str, Any]]] = OrderedDict()

    def take(self, order_id: str, ledger_head: str) -> tuple[OrderProjection, dict[str, Any]] | None:
        item = self._items.pop(order_id, None)
        if item is None or item[0] != ledger_head:
            return None
        return item[1], item[2]

    def stage(self, session: Session, head: str, state: OrderProjection, dumped: dict[str, Any]) -> None:
        session.info.setdefault(_STAGED, {})[state.order_id] = (head, state, dumped)

    def commit(self, session: Session) -> None:
        for order_id, item in session.info.pop(_STAGED, {}).items():
            self._items[order_id] = item
            self._items.move_to_end(order_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


_STAGED = "cgthub.projections"
_recent = _RecentProjections()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if _STAGED in session.info:
        _recent.commit(session)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, _previous: Any) -> None:
    session.info.pop(_STAGED, None)


# Built once (building and hashing a statement costs more than running it on a small batch).
_ORDERS = Order.__table__
# Indexed columns an UPDATE names cost an index entry rewritten (and, on SQLite, its page logged)
# even when the value stays: a refresh names them only when they change. `updated_at` always does.
# The ledger reads them with the heads it locks (`OrderHead.indexed`).
KEPT_UNLESS_CHANGED = ("status", "market", "site")
_NOT_READ = (object(),) * len(KEPT_UNLESS_CHANGED)  # a head made here, not read: equal to nothing, all written

# The columns a refresh writes, bound as p_<column> (a bind may not share its column's name).
_REFRESHED = (
    "status",
    "on_hold",
    "status_since",
    "therapy",
    "market",
    "site",
    "cmo",
    "coi_id",
    "last_event_at",
    "projection",
    "updated_at",
    "ledger_length",
    "ledger_head",
    "projected_length",
)
_ALWAYS_REFRESHED = tuple(name for name in _REFRESHED if name not in KEPT_UNLESS_CHANGED)
_updates: dict[tuple[str, ...], BulkWrite] = {}


class Encoded(str):
    """A JSON document's canonical text (`cgthub.jsontext.canonical_json`), written already."""

    __slots__ = ()


class Document(TypeDecorator[Any]):
    """A JSON column's bind that takes an `Encoded` text as it is and serializes anything else as
    the column's own JSON type does. The batch path writes a document it knows to be float-free
    with orjson once, instead of the serializer's walk over every value looking for floats."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Any) -> Any:
        serialize = super().bind_processor(dialect)
        if serialize is None:
            return None

        def process(value: Any) -> Any:
            return value if type(value) is Encoded else serialize(value)

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        """A document read: text parsed by `_document`, a value the driver parsed as it is."""
        return _document


def encoded(document: dict[str, Any] | list[Any]) -> Encoded | dict[str, Any] | list[Any]:
    """`document` as its canonical text, for a `Document` bind on SQLite, when the caller knows it
    holds no float (orjson writes floats differently from the canonical text; strings, booleans,
    null, small integers and string keys alike). A lone surrogate is left to the serializer."""
    try:
        return Encoded(orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode())
    except orjson.JSONEncodeError:
        return document


# The projection read through `Document`: SQLite's text parsed with orjson, not by the JSON type's
# json.loads (about five times slower on a projection); PostgreSQL's driver parses it itself.
_STORED_PROJECTIONS = BatchRead(
    select(_ORDERS.c.id, type_coerce(_ORDERS.c.projection, Document())).where(
        _ORDERS.c.id.in_(bindparam("ids", expanding=True))
    )
)


def _update_orders(changed: tuple[str, ...]) -> BulkWrite:
    """The UPDATE of a refresh that changes these of the `KEPT_UNLESS_CHANGED` columns (few shapes)."""
    statement = _updates.get(changed)
    if statement is None:
        names = (*_ALWAYS_REFRESHED, *changed)
        statement = _updates[changed] = BulkWrite(
            update(_ORDERS)
            .where(_ORDERS.c.id == bindparam("oid"))
            .values(
                {
                    name: bindparam(f"p_{name}", type_=Document()) if name == "projection" else bindparam(f"p_{name}")
                    for name in names
                }
            )
        )
    return statement


_BINDS = {name: f"p_{name}" for name in _REFRESHED}
_CHANGES = changes.OrderChange.__table__
_INSERT_CHANGES = BulkWrite(
    insert(_CHANGES).values(
        milestones=bindparam("milestones", type_=Document()), changed=bindparam("changed", type_=Document())
    )
)


def attach_stored(session: Session, heads: Iterable[OrderHead]) -> None:
    """Give each head just read (and locked) by the ledger its stored projection: the state this
    process folded last when it is still current, else the row's projection column."""
    missing: list[str] = []
    by_id: dict[str, OrderHead] = {}
    for head in heads:
        by_id[head.id] = head
        cached = _recent.take(head.id, head.ledger_head) if head.projected_length == head.ledger_length else None
        if cached is None:
            missing.append(head.id)
        else:
            head.state, head.projection = cached
    connection = session.connection()
    for start in range(0, len(missing), _CHUNK):
        for order_id, stored in _STORED_PROJECTIONS.rows(connection, {"ids": missing[start : start + _CHUNK]}):
            by_id[order_id].projection = stored


def _document(stored: Any) -> Any:
    """A JSON column's value read as text, as the column's type would give it: orjson's parse
    (json.loads's result for any JSON it takes), the standard library for what orjson refuses
    (integers beyond 64 bits, lone surrogates); a value the driver parsed already as it is."""
    if not isinstance(stored, str):
        return stored
    try:
        return orjson.loads(stored)
    except orjson.JSONDecodeError:
        return json.loads(stored)


def needs_history(head: OrderHead, events: list[CanonicalEvent]) -> bool:
    """Whether these new events cannot be folded onto the stored projection, so the order's whole
    history must be handed to `refresh_many` (late or out-of-order events, a stale projection)."""
    if not events or head.projected_length + len(events) != head.ledger_length:
        return True
    if head.projected_length == 0:
        return False  # a new order: these are all its events
    if head.state is None:
        head.state = OrderProjection.model_validate(head.projection)
    return not can_advance(head.state, events)


def refresh_many(
    session: Session,
    heads: dict[str, OrderHead],
    new_events: dict[str, list[CanonicalEvent]],
    histories: Mapping[str, list[CanonicalEvent]],
    now: datetime | None = None,
) -> dict[str, OrderProjection]:
    """Fold each order's new ledger entries into its row, with one UPDATE and one INSERT for all.

    `new_events` are the entries just appended (their chain is already in `heads`): they are folded
    onto the stored projection, or a new order is projected from them alone; an order for which
    `needs_history` holds is projected from its whole chain in `histories` instead. A new order
    inserted with its projection already (`new_order_rows`, with the same `now`) gets no UPDATE.
    """
    session.flush()
    connection = session.connection()
    pre_encode = connection.dialect.name == "sqlite"  # elsewhere the driver's JSON adapter takes the dict
    now = now or utcnow()
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    change_rows: list[dict[str, Any]] = []
    states: dict[str, OrderProjection] = {}
    for order_id, events in new_events.items():
        head = heads[order_id]
        if head.folded is not None:  # inserted so by the ledger: no UPDATE
            state, after, _binds = head.folded
            head.folded = None
        else:
            state, after, binds = _refreshed(head, events, histories.get(order_id), now, pre_encode)
            changed = tuple(
                name
                for name, new, stored in zip(
                    KEPT_UNLESS_CHANGED,
                    (binds["p_status"], binds["p_market"], binds["p_site"]),
                    head.indexed or _NOT_READ,
                    strict=True,
                )
                if new != stored
            )
            updates.setdefault(changed, []).append(binds)
        fields = {
            "status_since": state.status_since,
            "market": state.market,
            "site": state.site,
            "cmo": state.cmo,
            "updated_at": now,
        }
        change = changes.change_row(order_id, head.projection, after, fields)
        if change is not None:
            if pre_encode:  # names and ISO texts only: no float
                change["milestones"], change["changed"] = encoded(change["milestones"]), encoded(change["changed"])
            change_rows.append(change)
        head.projection, head.projected_length, head.state = after, head.ledger_length, None
        _recent.stage(session, head.ledger_head, state, after)
        if state.anomalies or state.excursions:
            _raise_alerts(session, state)
        states[order_id] = state
    for changed, rows in updates.items():
        if changed != KEPT_UNLESS_CHANGED:
            dropped = [_BINDS[name] for name in KEPT_UNLESS_CHANGED if name not in changed]
            for r in rows:
                for bind in dropped:
                    del r[bind]
        _update_orders(changed).run(connection, rows)
    if updates:
        _expire_loaded(session, states)
    if change_rows:
        _INSERT_CHANGES.run(connection, change_rows)
    return states


def new_order_rows(
    heads: Iterable[OrderHead], new_events: Mapping[str, list[CanonicalEvent]], now: datetime, pre_encode: bool
) -> list[dict[str, Any]]:
    """The refreshed columns of orders a batch creates (each head's chain complete), for the ledger
    to insert them with their projection: an UPDATE of each new row after its insert cost about
    100,000 instructions a CRM record. `refresh_many`, given the same `now`, then only records
    their change rows and the projections this process keeps."""
    rows = []
    for head in heads:
        head.folded = _refreshed(head, list(new_events[head.id]), None, now, pre_encode)
        binds = head.folded[2]
        rows.append({name: binds[bind] for name, bind in _BINDS.items()})
    return rows


def _refreshed(
    head: OrderHead, events: list[CanonicalEvent], history: list[CanonicalEvent] | None, now: datetime, pre_encode: bool
) -> tuple[OrderProjection, dict[str, Any], dict[str, Any]]:
    """An order's state after these events, its dump, and its row's refreshed values as the UPDATE
    binds them (p_<column>, the order's id as `oid`)."""
    state = _fold_new(head, events, history)
    after = state.model_dump(mode="json")
    binds = {  # the UPDATE's parameters, bound as p_<column> (see _REFRESHED)
        "oid": head.id,
        "p_status": state.status.value,
        "p_on_hold": state.on_hold,
        "p_status_since": state.status_since,
        "p_therapy": state.therapy,
        "p_market": state.market,
        "p_site": state.site,
        "p_cmo": state.cmo,
        "p_coi_id": state.coi_id,
        "p_last_event_at": state.last_event_at,
        # Floats can sit only in the excursions' free-form details: without those, the text is orjson's.
        "p_projection": encoded(after) if pre_encode and not state.excursions else after,
        "p_updated_at": now,
        "p_ledger_length": head.ledger_length,
        "p_ledger_head": head.ledger_head,
        "p_projected_length": head.ledger_length,
    }
    return state, after, binds


def _fold_new(head: OrderHead, events: list[CanonicalEvent], history: list[CanonicalEvent] | None) -> OrderProjection:
    if history is not None:
        return project(head.id, history)
    if needs_history(head, events):
        raise ValueError(f"order {head.id}: these events cannot be folded onto its projection; hand its history")
    if head.projected_length == 0:
        return project(head.id, events)
    assert head.state is not None  # parsed by needs_history
    return fold_onto(head.state, events)


def _expire_loaded(session: Session, order_ids: Mapping[str, Any]) -> None:
    """Order objects this session loaded before are stale after a Core UPDATE: reload on next use.

    The batch path's session holds few objects, so its identity map is read, not asked once per
    order (building an identity key costs about as much as the rest of an order's row)."""
    loaded = session.identity_map
    if len(loaded) < len(order_ids):
        found = [
            obj
            for key in list(loaded.keys())
            if key[0] is Order and key[1][0] in order_ids and (obj := loaded.get(key)) is not None
        ]
    else:
        found = [obj for order_id in order_ids if (obj := loaded.get(identity_key(Order, order_id))) is not None]
    for obj in found:
        session.expire(obj)


def load(order: Order | Row[Any]) -> OrderProjection:
    """The stored projection of an order (an ORM Order or a Core row of the orders table)."""
    return OrderProjection.model_validate(order.projection)


def _raise_alerts(session: Session, state: OrderProjection) -> None:
    for anomaly in state.anomalies:
        alerts.raise_alert(
            session,
            kind="impossible_transition",
            order_id=state.order_id,
            message=f"{anomaly.message} ({anomaly.source_system} event {anomaly.source_event_id}); "
            "the event is kept in the ledger but did not change the order",
            dedupe_key=f"anomaly:{state.order_id}:{anomaly.source_system}:{anomaly.source_event_id}",
        )
    for excursion in state.excursions:
        alerts.raise_alert(
            session,
            kind="temperature_excursion",
            severity=alerts.Severity.CRITICAL,
            order_id=state.order_id,
            message=f"temperature excursion on shipment {excursion.get('shipment_id', '?')}",
            dedupe_key=f"excursion:{state.order_id}:{excursion['source_event_id']}",
            details=excursion,
        )
