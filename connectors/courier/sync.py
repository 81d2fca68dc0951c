"""Courier sync entry points: `pages(mark)` reads the tracking-event feed since the watermark
(webhooks deliver the same events sooner; the archive and the ledger make the two paths meet),
and `push()` books the shipment an order needs (apheresis scheduled -> the dry shipper from the
site to the CMO; product released -> back from the CMO to the site), with the pickup window the
schedule gives. The courier's answer (shipment id, air waybill) comes back as a payload of its own,
`courier/booking`, which the hub archives and maps (mappings/courier/booking) into the order's
`shipment.booked` event: the shipment id becomes one of the order's references, so the courier's
tracking events find the order by it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from cgthub import partner_sync, partners
from cgthub.archive import Inbound
from cgthub.errors import CgthubError
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
# When the courier collects, after the date the schedule gives for each leg: the apheresis takes
# 3-4 hours and fresh material must reach the CMO within 48-72 h, so the dry shipper is collected
# the same day; a released product leaves the CMO's cryostore the next day (DOMAIN.md).
PICKUP_WINDOWS = {
    "TO_MANUFACTURER": (timedelta(hours=4), timedelta(hours=12)),
    "TO_SITE": (timedelta(hours=12), timedelta(hours=36)),
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
    """When the courier collects: after the booked apheresis (to the CMO) or the release (to the site)."""
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
    after, until = PICKUP_WINDOWS[direction]
    return start + after, start + until


def push(payload: dict[str, Any], *, conn_id: str = CONN_ID, courier: CourierClient | None = None) -> Inbound | None:
    """Book the shipment an order's new status calls for; other statuses need nothing from the courier.

    One booking per order and leg (the idempotency key), however often the order passes the status.
    A leg whose pickup window has already closed is not booked: nobody can collect in the past (the
    hub learnt of the date too late; monitoring flags the order if it stalls). Returns the courier's
    answer, for the hub to archive and map into the order.
    """
    direction = BOOKINGS.get(payload["status"])
    if direction is None:
        return None
    start, end = pickup_window(direction, payload)
    if end <= utcnow():
        log.info(
            "courier: no booking for order %s %s: its pickup window closed %s", payload.get("order_id"), direction, end
        )
        return None
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
    key = f"booking:{payload.get('order_id')}:{direction}"
    raw, _booked = (courier or client(conn_id)).book(body, key)
    return Inbound("courier", "booking", "rest", raw, utcnow(), content_type="application/json")
