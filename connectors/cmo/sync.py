"""CMO sync entry points: `pull()` walks the event feed from its saved sequence cursor, archiving
and mapping each page in the transaction that moves the cursor; `push(payload)` tells the CMO about
order changes it must act on (collection, shipment, hold, cancellation)."""

from __future__ import annotations

from typing import Any

from cgthub.store import session_scope
from connectors.cmo.client import CmoClient
from connectors.common import sync_state
from connectors.common.connection import get_connection
from connectors.common.http import PartnerError

CONN_ID = "cmo_api"
STREAM = "events"


def client(conn_id: str = CONN_ID) -> CmoClient:
    return CmoClient(get_connection(conn_id))


def pull(
    *, database_url: str | None = None, conn_id: str = CONN_ID, cmo: CmoClient | None = None, pages: int = 50
) -> sync_state.SyncReport:
    cmo = cmo or client(conn_id)
    report = sync_state.SyncReport(partner="cmo", stream=STREAM)
    with session_scope(database_url) as session:
        after = int(sync_state.cursor(session, "cmo", STREAM) or 0)
    report.watermark_before = str(after)
    try:
        for _ in range(pages):
            raw, events, following, problem = cmo.events_page(after)
            sync_state.ingest_page(
                report,
                raw,
                system="cmo",
                kind="batch_event",
                channel="rest",
                content_type="application/json",
                records=len(events),
                problem=problem,
                new_cursor=str(following),
                database_url=database_url,
            )
            if problem or following == after:
                break
            after = following
    except PartnerError as exc:
        report.errors.append(str(exc))
    report.watermark_after = str(after)
    return report


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
