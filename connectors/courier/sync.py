"""Courier sync entry points: `pages(mark)` reads the tracking-event feed since the watermark
(webhooks deliver the same events sooner; the archive and the ledger make the two paths meet),
and `push()` books the shipment an order needs (apheresis scheduled -> the dry shipper from the
site to the CMO; product released -> back from the CMO to the site), with the pickup window the
schedule gives (config/scheduling.yaml `pickup_windows`); a moved or cancelled booking
(cgthub.booking) cancels the leg and books it again. The courier's answer (shipment id, air
waybill) comes back as a payload of its own, `courier/booking`, which the hub archives and maps
(mappings/courier/booking) into the order's `shipment.booked` event: the shipment id becomes one of
the order's references, so the courier's tracking events find the order by it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from cgthub import partner_sync, partners, slots
from cgthub.archive import Inbound
from cgthub.errors import CgthubError
from cgthub.lifecycle import RANK, TERMINAL, OrderStatus
from cgthub.sync_state import SyncReport
from cgthub.tables import utcnow
from connectors.common.connection import get_connection
from connectors.courier.client import CourierClient

log = logging.getLogger(__name__)
CONN_ID = "courier_api"
STREAM = "events"
OVERLAP = timedelta(minutes=5)
PAGES = 50
BOOKINGS = {"apheresis_scheduled": "TO_MANUFACTURER", "released": "TO_SITE"}
LEGS = {"TO_MANUFACTURER": "to_manufacturer", "TO_SITE": "to_site"}  # config/scheduling.yaml pickup_windows
# A leg is moot once the order is past it: the material has left the site (or the product the CMO),
# or the order ended. Until then a leg is booked however late the hub learns of it.
_PAST_LEG = {
    "TO_MANUFACTURER": RANK[OrderStatus.COLLECTED],
    "TO_SITE": RANK[OrderStatus.RELEASED],
}


def client(conn_id: str = CONN_ID) -> CourierClient:
    return CourierClient(get_connection(conn_id))


def pages(mark: partners.Mark, *, courier: CourierClient | None = None, limit: int = PAGES) -> Iterator[partners.Page]:
    courier = courier or client()
    since = mark.watermark - OVERLAP if mark.watermark else None
    for _ in range(limit):
        raw, events, problem = courier.events_page(since)
        newest = max((datetime.fromisoformat(e["recordedAt"]) for e in events if "recordedAt" in e), default=None)
        item = Inbound("courier", "tracking_event", "rest", raw, utcnow(), content_type="application/json")
        yield partners.Page([item], records=len(events), watermark=newest, problem=problem)
        if problem or not events or newest is None or (since is not None and newest <= since):
            return
        since = newest


def pull(
    *, database_url: str | None = None, conn_id: str = CONN_ID, courier: CourierClient | None = None, pages: int = PAGES
) -> SyncReport:
    """One walk of the tracking feed into the hub (what the courier ingest DAG runs, for one client)."""
    chosen, limit = courier or client(conn_id), pages
    partner = partners.get("courier")
    return partner_sync.pull_stream(
        partner, partner.pulls[0], database_url=database_url, fetch=lambda mark: _pages(mark, chosen, limit)
    )


def _pages(mark: partners.Mark, courier: CourierClient, limit: int) -> Iterator[partners.Page]:
    return pages(mark, courier=courier, limit=limit)


class NoPickupDate(CgthubError, ValueError):
    """The order's schedule gives no date to collect from: nothing can be booked yet."""


def pickup_window(direction: str, payload: dict[str, Any]) -> tuple[datetime, datetime]:
    """When the courier collects: the window config/scheduling.yaml gives the order's site (or
    market) after the booked apheresis (to the CMO) or the release (to the site)."""
    if direction == "TO_MANUFACTURER":
        scheduled = (payload.get("scheduled") or {}).get("apheresis")
        if not scheduled:
            raise NoPickupDate(f"order {payload.get('order_id')} has no booked apheresis date to collect after")
        start = datetime.fromisoformat(scheduled)
    else:
        released = payload.get("status_since")
        if not released:
            raise NoPickupDate(f"order {payload.get('order_id')} has no release time to collect after")
        start = datetime.fromisoformat(released)
    after, until = slots.config().pickup_windows.window(LEGS[direction], payload.get("site"), payload.get("market"))
    return start + after, start + until


def moot(direction: str, payload: dict[str, Any]) -> bool:
    """Whether the order is already past the leg (`stage`: the order's stage when the message was routed)."""
    try:
        current = OrderStatus(str(payload.get("stage")))
    except ValueError:  # routed before the stage was part of the message
        return False
    return current in TERMINAL or RANK.get(current, -1) > _PAST_LEG[direction]


def push(payload: dict[str, Any], *, conn_id: str = CONN_ID, courier: CourierClient | None = None) -> Inbound | None:
    """What an order's new status (or a changed booking) asks of the courier: book a leg, rebook it
    for a new date, or cancel it. Other statuses need nothing from the courier.

    One booking per order and leg (the idempotency key), however often the order passes the status.
    A leg the order is already past is not booked; a leg whose pickup window closed before the hub
    learnt of it is booked for the next pickup the courier can make (a window of the same length
    from now): the material still has to travel, and monitoring shows the order late. Returns the
    courier's answer, for the hub to archive and map into the order.
    """
    action = payload.get("courier_action")
    if action in ("book", "cancel", "rebook"):
        return _change_leg(payload, conn_id=conn_id, courier=courier)
    direction = BOOKINGS.get(payload["status"])
    if direction is None:
        return None
    if moot(direction, payload):
        log.info("courier: no booking for order %s %s: the order is past that leg", payload.get("order_id"), direction)
        return None
    key = f"booking:{payload.get('order_id')}:{direction}"
    return _book(payload, direction, key, courier or client(conn_id))


def _book(payload: dict[str, Any], direction: str, key: str, courier: CourierClient) -> Inbound | None:
    start, end = pickup_window(direction, payload)
    now = utcnow()
    if end <= now:
        log.info(  # monitoring shows the order late (milestone overdue, stuck): this is the booking's side
            "courier: order %s %s is late: its pickup window closed %s; booked for the next pickup",
            payload.get("order_id"),
            direction,
            end,
        )
        start, end = now, now + (end - start)
    refs = payload.get("refs") or {}
    to_cmo = direction == "TO_MANUFACTURER"
    body = {
        "direction": direction,
        "reference": {"crmOrderId": refs.get("crm_order_id"), "hubOrderId": payload.get("order_id")},
        "pickup": {
            "location": payload.get("site") if to_cmo else payload.get("cmo"),
            "windowStart": start.isoformat(),
            "windowEnd": end.isoformat(),
        },
        "delivery": {"location": payload.get("cmo") if to_cmo else payload.get("site")},
    }
    raw, booked = courier.book(body, key)
    if booked.get("status") == "CANCELLED":  # the key's booking was cancelled since (a booking moved)
        log.info("courier: order %s %s: the booking under %s was cancelled", payload.get("order_id"), direction, key)
        return None
    return Inbound("courier", "booking", "rest", raw, utcnow(), content_type="application/json")


def _change_leg(payload: dict[str, Any], *, conn_id: str, courier: CourierClient | None) -> Inbound | None:
    """A booking made again, moved or cancelled (cgthub.booking): the courier's leg to the CMO is
    cancelled (by the order's reference, whoever booked it) and, for a new date, booked again under
    a key of its own. Both calls are idempotent, so a retried message does neither twice."""
    chosen = courier or client(conn_id)
    direction = "TO_MANUFACTURER"
    refs = payload.get("refs") or {}
    reference = {"crmOrderId": refs.get("crm_order_id"), "hubOrderId": payload.get("order_id")}
    change = payload["change_id"]
    if payload["courier_action"] != "book":
        chosen.cancel_leg(reference, direction, f"cancel:{payload.get('order_id')}:{direction}:{change}")
    if payload["courier_action"] == "cancel":
        return None
    return _book(payload, direction, f"booking:{payload.get('order_id')}:{direction}:{change}", chosen)
