"""CRM sync entry points for the DAGs: `pull()` (incremental, by modified-since watermark) and
`push(payload)` (one outbox message: the normalized status back to the CRM).

Each page is archived exactly as received and mapped with mappings/crm/enrollment in one
transaction, which also moves the watermark past the page's newest record; the next pull starts
`overlap` earlier so records modified during a page walk are not missed (the archive and the
ledger absorb the repeats).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from cgthub.store import session_scope
from connectors.common import sync_state
from connectors.common.connection import get_connection
from connectors.common.http import PartnerError
from connectors.crm.client import CrmClient

log = logging.getLogger(__name__)
CONN_ID = "crm_api"
STREAM = "orders"
OVERLAP = timedelta(minutes=5)


def client(conn_id: str = CONN_ID) -> CrmClient:
    return CrmClient(get_connection(conn_id))


def pull(
    *, database_url: str | None = None, conn_id: str = CONN_ID, crm: CrmClient | None = None
) -> sync_state.SyncReport:
    crm = crm or client(conn_id)
    report = sync_state.SyncReport(partner="crm", stream=STREAM)
    with session_scope(database_url) as session:
        mark = sync_state.watermark(session, "crm", STREAM)
    report.watermark_before = mark.isoformat() if mark else None
    try:
        for page in crm.pages(mark - OVERLAP if mark else None):
            sync_state.ingest_page(
                report,
                page.raw,
                system="crm",
                kind="enrollment",
                channel="rest",
                content_type="application/json",
                records=len(page.records),
                problem=page.problem,
                watermark=_newest(page.records),
                database_url=database_url,
            )
    except PartnerError as exc:
        report.errors.append(str(exc))
        with session_scope(database_url) as session:
            sync_state.advance(session, report, None)
    log.info("crm pull: %s", {k: v for k, v in report.as_dict().items() if k != "order_ids"})
    return report


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
