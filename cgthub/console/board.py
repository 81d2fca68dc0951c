"""The orders board: the orders a user may see, filtered, most urgent first, with alert names and references.

Urgency is what a coordinator acts on first: the most severe open alert, then a hold, then a
vein-to-vein deadline at risk, then how long the order has stood in its status. One statement
ranks and pages the orders; two more fetch the page's alert names and partner references.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, case, func, literal, select, union, union_all
from sqlalchemy.orm import Session

from cgthub.api.auth import Principal
from cgthub.deadlines import VEIN_TO_VEIN_AT_RISK
from cgthub.tables import Alert, Order, OrderKey

PAGE_SIZE = 200
_SEVERITY_RANK = case((Alert.severity == "critical", 3), (Alert.severity == "warning", 2), else_=1)


@dataclass(frozen=True)
class BoardFilters:
    status: str | None = None
    market: str | None = None
    site: str | None = None
    therapy: str | None = None
    held: bool = False
    at_risk: bool = False
    has_alerts: bool = False
    search: str | None = None

    def active(self) -> bool:
        return any((self.status, self.market, self.site, self.therapy, self.held, self.at_risk, self.has_alerts))


@dataclass
class BoardRow:
    id: str
    therapy: str | None
    market: str | None
    site: str | None
    cmo: str | None
    status: str
    on_hold: bool
    status_since: datetime | None
    at_risk: bool
    severity: int
    alerts: list[str] = field(default_factory=list)
    refs: list[tuple[str, str]] = field(default_factory=list)


def _alert_summary() -> Any:
    return (
        select(
            Alert.order_id.label("order_id"),
            func.max(_SEVERITY_RANK).label("severity"),
            func.max(case((Alert.kind == VEIN_TO_VEIN_AT_RISK, 1), else_=0)).label("at_risk"),
        )
        .where(Alert.status == "open", Alert.order_id.is_not(None))
        .group_by(Alert.order_id)
        .subquery("open_alerts")
    )


def board_query(principal: Principal, filters: BoardFilters, *, alerted: bool) -> Select[Any]:
    """One of the board's two halves, most urgent first: the orders with an open alert (`alerted`),
    which always rank above the rest, or the orders without one (severity and at-risk 0).

    Split so that the common board, where open alerts alone fill the page, ranks only the alerted
    few hundred orders instead of sorting every order on the hub."""
    if alerted:
        alerts = _alert_summary()
        severity: Any = alerts.c.severity
        at_risk: Any = alerts.c.at_risk
        query = select(*_COLUMNS, severity.label("severity"), at_risk.label("at_risk")).join(
            alerts, alerts.c.order_id == Order.id
        )
        if filters.at_risk:
            query = query.where(alerts.c.at_risk == 1)
        order_by = [severity.desc(), Order.on_hold.desc(), at_risk.desc()]
    else:
        alerted_ids = select(Alert.order_id).where(Alert.status == "open", Alert.order_id.is_not(None))
        query = select(*_COLUMNS, literal(0).label("severity"), literal(0).label("at_risk")).where(
            Order.id.not_in(alerted_ids)  # one set of ids, not a lookup per order
        )
        order_by = [Order.on_hold.desc()]
    query = query.where(*principal.data_filter(Order.site, Order.cmo, Order.market))
    if filters.status:
        query = query.where(Order.status == filters.status)
    if filters.market:
        query = query.where(Order.market == filters.market.upper())
    if filters.site:
        query = query.where(Order.site == filters.site)
    if filters.therapy:
        query = query.where(Order.therapy == filters.therapy)
    if filters.held:
        query = query.where(Order.on_hold.is_(True))
    if filters.search:
        query = query.where(Order.id.in_(_orders_named(filters.search.strip())))
    return query.order_by(*order_by, Order.status_since.asc(), Order.id).limit(PAGE_SIZE)


_COLUMNS = (
    Order.id,
    Order.therapy,
    Order.market,
    Order.site,
    Order.cmo,
    Order.status,
    Order.on_hold,
    Order.status_since,
)


# Every kind of order key the ledger indexes (CanonicalEvent.all_keys): partner references, CoI id,
# DIN, lot. Naming them lets a search use the (kind, value) index instead of scanning every key.
SEARCHED_KINDS = (
    "crm_order_id",
    "erp_sales_order",
    "hospital_placer_order",
    "hospital_filler_order",
    "cmo_batch_id",
    "courier_shipment_id",
    "coi_id",
    "din",
    "lot",
)


def _orders_named(term: str) -> Any:
    """Ids of the orders a search term names: its own id or any key the ledger indexed for it."""
    return union(
        select(Order.id).where(Order.id == term),
        select(OrderKey.order_id).where(OrderKey.kind.in_(SEARCHED_KINDS), OrderKey.value == term),
    )


def board(session: Session, principal: Principal, filters: BoardFilters) -> list[BoardRow]:
    """The board's rows: at most PAGE_SIZE orders in the user's data scope, most urgent first."""
    found = list(session.execute(board_query(principal, filters, alerted=True)))
    if len(found) < PAGE_SIZE and not (filters.at_risk or filters.has_alerts):
        rest = board_query(principal, filters, alerted=False).limit(PAGE_SIZE - len(found))
        found += session.execute(rest)
    rows = [
        BoardRow(
            id=r.id,
            therapy=r.therapy,
            market=r.market,
            site=r.site,
            cmo=r.cmo,
            status=r.status,
            on_hold=bool(r.on_hold),
            status_since=r.status_since,
            at_risk=bool(r.at_risk),
            severity=int(r.severity),
        )
        for r in found
    ]
    by_id = {row.id: row for row in rows}
    if not by_id:
        return rows
    names = session.execute(
        select(Alert.order_id, Alert.kind)
        .where(Alert.order_id.in_(by_id), Alert.status == "open")
        .order_by(Alert.order_id, _SEVERITY_RANK.desc(), Alert.kind)
    )
    for order_id, kind in names:
        row = by_id[cast(str, order_id)]  # the IN above matched only the rows' ids: never None
        if kind not in row.alerts:
            row.alerts.append(kind)
    refs = session.execute(
        select(OrderKey.order_id, OrderKey.kind, OrderKey.value)
        .where(OrderKey.order_id.in_(by_id))
        .order_by(OrderKey.order_id, OrderKey.kind, OrderKey.value)
    )
    for order_id, kind, value in refs:
        by_id[order_id].refs.append((kind, value))
    return rows


CHOICES_TTL = 30.0  # seconds a scope's filter choices are reused: markets, sites and therapies change rarely
_choices: dict[tuple[Any, ...], tuple[float, dict[str, list[str]]]] = {}
_choices_lock = threading.Lock()


def choices(session: Session, principal: Principal) -> dict[str, list[str]]:
    """The values the filters offer: only those of orders the user may see. Reading them scans
    every order, so one answer per database and data scope serves for CHOICES_TTL seconds."""
    key = (
        session.get_bind().engine.url.render_as_string(hide_password=True),
        principal.all_data,
        principal.sites,
        principal.cmos,
        principal.markets,
    )
    now = time.monotonic()
    with _choices_lock:
        kept = _choices.get(key)
    if kept is not None and now - kept[0] < CHOICES_TTL:
        return kept[1]
    found = _read_choices(session, principal)
    with _choices_lock:
        _choices[key] = (now, found)
    return found


def _read_choices(session: Session, principal: Principal) -> dict[str, list[str]]:
    """Distinct market, site and therapy of the orders in scope, in one round trip."""
    scope = principal.data_filter(Order.site, Order.cmo, Order.market)
    columns = {"market": Order.market, "site": Order.site, "therapy": Order.therapy}
    distinct = union_all(
        *(
            select(literal(name).label("name"), column.label("value")).where(*scope).distinct()
            for name, column in columns.items()
        )
    )
    found: dict[str, list[str]] = {name: [] for name in columns}
    for name, value in session.execute(distinct):
        if value is not None:
            found[name].append(value)
    return {name: sorted(values) for name, values in found.items()}
