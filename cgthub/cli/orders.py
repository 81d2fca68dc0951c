"""`cgthub orders`: what the hub believes about each order.

The database, ledger and table code is imported in the commands that use it: `cgthub orders
--help` imports only what the commands' options name (tests/test_cli_start.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from cgthub.cli.common import CliError, console, open_session
from cgthub.lifecycle import OrderStatus
from cgthub.model import CanonicalEvent, ExternalRefs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cgthub.tables import Order

app = typer.Typer(help="Normalized orders.", no_args_is_help=True)


@app.command("list")
def list_orders(
    status: OrderStatus | None = typer.Option(None, help="only orders in this status"),
    market: str | None = typer.Option(None, help="only orders of this market (country code)"),
    site: str | None = typer.Option(None, help="only orders of this treatment site, e.g. US-SITE-1"),
    limit: int = typer.Option(100, min=1, max=10_000, help="most orders to show"),
) -> None:
    """One line per order: status, market, site, milestones reached, vein-to-vein so far, alerts."""
    from rich.table import Table
    from sqlalchemy import select

    from cgthub import alerts, projection
    from cgthub.tables import Order

    now = datetime.now(UTC)
    with open_session(readonly=True) as session:
        query = select(Order).order_by(Order.created_at, Order.id).limit(limit)
        if status:
            query = query.where(Order.status == status.value)
        if market:
            query = query.where(Order.market == market.upper())
        if site:
            query = query.where(Order.site == site)
        rows = list(session.scalars(query))
        open_by_order: dict[str, int] = {}
        for alert in alerts.open_alerts(session):
            if alert.order_id:
                open_by_order[alert.order_id] = open_by_order.get(alert.order_id, 0) + 1
    table = Table(title=f"{len(rows)} orders")
    for col in ("order", "therapy", "market", "site", "status", "milestones", "v2v days", "alerts"):
        table.add_column(col)
    for order in rows:
        state = projection.load(order)
        v2v = state.vein_to_vein_days(now)
        table.add_row(
            order.id,
            order.therapy or "",
            order.market or "",
            order.site or "",
            order.status,
            str(len(state.milestones)),
            "" if v2v is None else f"{v2v:.1f}",
            str(open_by_order.get(order.id, 0) or ""),
        )
    console.print(table)


# Every kind of key the order index holds: each partner's own reference, then the identity keys.
_REFERENCE_KINDS = tuple(
    kind
    for kind, _ in ExternalRefs(
        **{name: ("?",) if name == "courier_shipment_ids" else "?" for name in ExternalRefs.model_fields}
    ).pairs()
)
_IDENTITY_KINDS = ("coi_id", "din", "lot")


def find_order(session: Session, reference: str) -> Order:
    """The order a hub id or any partner reference (CRM id, hospital order, DIN, COI id...) names.

    People arrive with whatever id their own system shows; the order index already maps each to
    its order, so the lookup asks it rather than making them find the hub's id first.
    """
    from cgthub.correlation import KeyIndex
    from cgthub.tables import Order

    order = session.get(Order, reference)
    if order is not None:
        return order
    owners = KeyIndex(session).owners([(kind, reference) for kind in (*_REFERENCE_KINDS, *_IDENTITY_KINDS)])
    found = sorted(set(owners.values()))
    if not found:
        raise CliError(
            f"no order {reference}: neither a hub order id nor a partner reference the hub knows",
            "list orders with `cgthub orders list` (a CRM order id, hospital order number, DIN or COI id also works)",
        )
    if len(found) > 1:
        named = ", ".join(f"{order_id} ({kind})" for (kind, _v), order_id in sorted(owners.items()))
        raise CliError(f"{reference} names several orders: {named}", "show one of them by its hub order id")
    return session.get(Order, found[0])  # type: ignore[return-value]


@app.command()
def show(
    reference: str = typer.Argument(
        ..., metavar="ORDER", help="hub order id (ORD-...) or a partner reference: CRM id, hospital order, DIN, COI id"
    ),
) -> None:
    """Status, milestones, external references, alerts and the full timeline of one order."""
    from rich.table import Table

    from cgthub import alerts, ledger, projection

    with open_session(readonly=True) as session:
        order = find_order(session, reference)
        order_id = order.id
        state = projection.load(order)
        entries = ledger.entries(session, order_id)
        open_alerts = alerts.open_alerts(session, order_id)
    console.print(f"[bold]{order.id}[/]  {order.therapy or ''}  market {order.market or '?'}  site {order.site or '?'}")
    console.print(f"status: [bold]{order.status}[/] since {state.status_since}  COI id: {state.coi_id or '-'}")
    if state.on_hold:
        console.print(f"[red]on hold:[/] {state.hold_reason}")
    refs = Table(title="external references", show_header=False)
    for kind, value in state.refs.pairs():
        refs.add_row(kind, value)
    for kind, token in state.patient_pseudonyms.items():
        refs.add_row(f"patient {kind}", token)
    console.print(refs)
    milestones = Table(title="milestones")
    milestones.add_column("milestone")
    milestones.add_column("at")
    for name, at in sorted(state.milestones.items(), key=lambda kv: kv[1]):
        milestones.add_row(name, at.isoformat())
    for name, at in state.scheduled.items():
        milestones.add_row(f"{name} scheduled for", at.isoformat())
    console.print(milestones)
    if state.shipments:
        shipments = Table(title="shipments")
        for col in ("shipment", "direction", "courier", "last event", "at", "customs hold", "excursions"):
            shipments.add_column(col)
        for view in state.shipments.values():
            shipments.add_row(
                view.shipment_id,
                view.direction or "",
                view.courier or "",
                view.last_event or "",
                view.last_event_at.isoformat() if view.last_event_at else "",
                "yes" if view.customs_hold else "",
                str(view.excursions or ""),
            )
        console.print(shipments)
    for anomaly in state.anomalies:
        console.print(f"[yellow]anomaly:[/] {anomaly.message} ({anomaly.source_system} {anomaly.source_event_id})")
    for alert in open_alerts:
        console.print(f"[red]alert[/] #{alert.id} {alert.kind}: {alert.message}")
    timeline = Table(title="timeline (ledger)")
    for col in ("seq", "occurred", "received", "source", "event", "mapping", "hash"):
        timeline.add_column(col)
    for entry in entries:
        body = entry.body
        event = CanonicalEvent.model_validate_json(body)
        timeline.add_row(
            str(entry.seq),
            event.occurred_at.isoformat(),
            event.received_at.isoformat(),
            f"{entry.source_system}:{entry.source_event_id}",
            entry.event_type,
            f"{event.provenance.mapping_id}@{event.provenance.mapping_version}",
            entry.entry_hash[:12],
        )
    console.print(timeline)
