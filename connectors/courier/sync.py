"""Courier sync entry points: `pull()` reads the tracking-event feed since the watermark (webhooks
deliver the same events sooner; the archive and the ledger make the two paths meet), and `push()`
books a shipment when an order needs one (collected -> to the CMO, released -> back to the site).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cgthub.store import session_scope
from connectors.common import sync_state
from connectors.common.connection import get_connection
from connectors.common.http import PartnerError
from connectors.courier.client import CourierClient

log = logging.getLogger(__name__)
CONN_ID = "courier_api"
STREAM = "events"
OVERLAP = timedelta(minutes=5)
BOOKINGS = {"collected": "TO_MANUFACTURER", "released": "TO_SITE"}


def client(conn_id: str = CONN_ID) -> CourierClient:
    return CourierClient(get_connection(conn_id))


def pull(
    *, database_url: str | None = None, conn_id: str = CONN_ID, courier: CourierClient | None = None, pages: int = 50
) -> sync_state.SyncReport:
    courier = courier or client(conn_id)
    report = sync_state.SyncReport(partner="courier", stream=STREAM)
    with session_scope(database_url) as session:
        mark = sync_state.watermark(session, "courier", STREAM)
    report.watermark_before = mark.isoformat() if mark else None
    since = mark - OVERLAP if mark else None
    try:
        for _ in range(pages):
            raw, events, problem = courier.events_page(since)
            newest = max((datetime.fromisoformat(e["recordedAt"]) for e in events if "recordedAt" in e), default=None)
            sync_state.ingest_page(
                report,
                raw,
                system="courier",
                kind="tracking_event",
                channel="rest",
                content_type="application/json",
                records=len(events),
                problem=problem,
                watermark=newest,
                database_url=database_url,
            )
            if problem or not events or newest is None or (since is not None and newest <= since):
                break
            since = newest
    except PartnerError as exc:
        report.errors.append(str(exc))
    return report


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
