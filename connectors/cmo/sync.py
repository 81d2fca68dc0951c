"""CMO sync entry points: `pages(mark)` walks the event feed from the saved sequence cursor, each
page yielded as received with the cursor after it (the hub archives, maps and applies the page in
the transaction that moves the cursor); `push(payload)` tells the CMO about order changes it must
act on (collection, shipment, hold, cancellation); `slot_provider()` is the CMO's manufacturing
capacity, slot reservations and releases for the hub's scheduling (cgthub.slots, through the registry)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from cgthub import partner_sync, partners, slots
from cgthub.archive import Inbound
from cgthub.sync_state import SyncReport
from cgthub.tables import utcnow
from connectors.cmo.client import CmoClient
from connectors.common.connection import get_connection

CONN_ID = "cmo_api"
STREAM = "events"
PAGES = 50  # per run: the next run goes on from the cursor


def client(conn_id: str = CONN_ID) -> CmoClient:
    return CmoClient(get_connection(conn_id))


def pages(mark: partners.Mark, *, cmo: CmoClient | None = None, limit: int = PAGES) -> Iterator[partners.Page]:
    cmo = cmo or client()
    after = int(mark.cursor or 0)
    for _ in range(limit):
        raw, events, following, problem = cmo.events_page(after)
        if following < after:  # the feed's sequence never goes back: the cursor is kept where it was
            following, problem = after, problem or f"the CMO's next cursor goes back before {after}; kept at {after}"
        item = Inbound("cmo", "batch_event", "rest", raw, utcnow(), content_type="application/json")
        yield partners.Page([item], records=len(events), cursor=str(following), problem=problem)
        if problem or following == after:
            return
        after = following


def pull(
    *, database_url: str | None = None, conn_id: str = CONN_ID, cmo: CmoClient | None = None, pages: int = PAGES
) -> SyncReport:
    """One walk of the event feed into the hub (what the CMO ingest DAG runs, for one client)."""
    chosen, limit = cmo or client(conn_id), pages
    partner = partners.get("cmo")
    return partner_sync.pull_stream(
        partner, partner.pulls[0], database_url=database_url, fetch=lambda mark: _pages(mark, chosen, limit)
    )


def _pages(mark: partners.Mark, cmo: CmoClient, limit: int) -> Iterator[partners.Page]:
    return pages(mark, cmo=cmo, limit=limit)


def push(payload: dict[str, Any], *, conn_id: str = CONN_ID, cmo: CmoClient | None = None) -> dict[str, Any]:
    refs = payload.get("refs") or {}
    body = {
        "orderReference": refs.get("crm_order_id"),
        "batchId": refs.get("cmo_batch_id"),
        "hubOrderId": payload.get("order_id"),
        "status": payload["status"],
        "onHold": payload.get("on_hold", False),
    }
    return (cmo or client(conn_id)).notify(body, payload["idempotency_key"])


class CmoSlots:
    """The CMO as a `cgthub.slots.SlotProvider`: its capacity API and its slot reservations."""

    def __init__(self, cmo: CmoClient) -> None:
        self.cmo = cmo

    def capacity(self, start: date, end: date, therapy: str | None = None) -> list[slots.Capacity]:
        return [
            slots.Capacity(
                cmo=str(row["cmo"]),
                therapy=str(row["therapy"]),
                day=date.fromisoformat(str(row["date"])),
                capacity=int(row["capacity"]),
                booked=int(row["booked"]),
            )
            for row in self.cmo.capacity(start, end, therapy)
        ]

    def reserve(self, reservation: slots.Reservation, idempotency_key: str) -> slots.Reserved:
        body = {
            "cmo": reservation.cmo,
            "therapy": reservation.therapy,
            "slotDate": reservation.slot_day.isoformat(),
            "orderReference": reservation.order_reference,
            "hubOrderId": reservation.order_id,
            "coiId": reservation.coi_id,
        }
        answer = self.cmo.book_slot(body, idempotency_key)
        return slots.Reserved(str(answer["reservationId"]), date.fromisoformat(str(answer["slotDate"])))

    def release(self, reservation_id: str, idempotency_key: str) -> None:
        self.cmo.release_slot(reservation_id, idempotency_key)


def slot_provider(conn_id: str = CONN_ID) -> CmoSlots:
    return CmoSlots(client(conn_id))
