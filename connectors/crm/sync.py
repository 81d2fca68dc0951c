"""CRM sync entry points: `pages(mark)` (incremental, by modified-since watermark) and
`push(payload)` (one outbox message: the normalized status back to the CRM).

Each page is yielded exactly as received with the newest record's modification time as its
watermark; the hub archives, maps and applies it and moves the watermark in one transaction
(cgthub.partner_sync). Each read starts `OVERLAP` before the watermark so records modified during
a page walk are not missed (the archive and the ledger absorb the repeats).
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
from connectors.common.http import PartnerError
from connectors.crm.client import CrmClient

CONN_ID = "crm_api"
STREAM = "orders"
OVERLAP = timedelta(minutes=5)


def client(conn_id: str = CONN_ID) -> CrmClient:
    return CrmClient(get_connection(conn_id))


def pages(mark: partners.Mark, *, crm: CrmClient | None = None) -> Iterator[partners.Page]:
    """The CRM's orders modified since the mark, page by page, as received."""
    crm = crm or client()
    for page in crm.pages(mark.watermark - OVERLAP if mark.watermark else None):
        item = Inbound("crm", "enrollment", "rest", page.raw, utcnow(), content_type="application/json")
        yield partners.Page([item], records=len(page.records), watermark=_newest(page.records), problem=page.problem)


def pull(*, database_url: str | None = None, conn_id: str = CONN_ID, crm: CrmClient | None = None) -> SyncReport:
    """One incremental pull into the hub (what the CRM ingest DAG runs, for one client)."""
    chosen = crm or client(conn_id)
    partner = partners.get("crm")
    return partner_sync.pull_stream(
        partner, partner.pulls[0], database_url=database_url, fetch=lambda mark: pages(mark, crm=chosen)
    )


def _newest(records: list[dict[str, Any]]) -> datetime | None:
    stamps = [datetime.fromisoformat(r["modifiedAt"]) for r in records if r.get("modifiedAt")]
    return max(stamps) if stamps else None


def push(payload: dict[str, Any], *, conn_id: str = CONN_ID, crm: CrmClient | None = None) -> dict[str, Any]:
    """Tell the CRM the hub's normalized status of one order (idempotent on the outbox key)."""
    crm_order_id = (payload.get("refs") or {}).get("crm_order_id")
    if not crm_order_id:
        raise PartnerError(f"order {payload.get('order_id')} has no CRM order id: nothing to update in the CRM")
    body = {
        "status": payload["status"],
        "onHold": payload.get("on_hold", False),
        "statusSince": payload.get("status_since"),
        "hubOrderId": payload.get("order_id"),
    }
    return (crm or client(conn_id)).patch_status(crm_order_id, body, payload["idempotency_key"])
