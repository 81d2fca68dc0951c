"""Courier sync entry points: `pages(mark)` reads the tracking-event feed since the watermark
(webhooks deliver the same events sooner; the archive and the ledger make the two paths meet),
and `push()` books a shipment when an order needs one (collected -> to the CMO, released -> back
to the site).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from cgthub import partner_sync, partners
from cgthub.archive import Inbound
from cgthub.sync_state import SyncReport
from cgthub.tables import utcnow
from connectors.common.connection import get_connection
from connectors.courier.client import CourierClient

CONN_ID = "courier_api"
STREAM = "events"
OVERLAP = timedelta(minutes=5)
PAGES = 50
BOOKINGS = {"collected": "TO_MANUFACTURER", "released": "TO_SITE"}


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


def push(payload: dict[str, Any], *, conn_id: str = CONN_ID, courier: CourierClient | None = None) -> dict[str, Any]:
    """Book the shipment an order's new status calls for; other statuses need nothing from the courier."""
    direction = BOOKINGS.get(payload["status"])
    if direction is None:
        return {"booked": False}
    refs = payload.get("refs") or {}
    body = {
        "direction": direction,
        "reference": {"crmOrderId": refs.get("crm_order_id"), "hubOrderId": payload.get("order_id")},
        "pickup": {"site": payload.get("site") if direction == "TO_MANUFACTURER" else "CMO"},
    }
    return (courier or client(conn_id)).book(body, payload["idempotency_key"])
