"""ERP sync entry points: `pull()` reads sales orders and goods movements changed since the
watermark (each SOAP response archived as received, mapped by mappings/erp), and `push(payload)`
posts the hub's status to the order's sales order, creating the sales order first when the ERP
has none for it (the ERP keys sales orders by the CRM order id, so that is idempotent too).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cgthub import archive, pipeline, quarantine, routing
from cgthub.archive import Inbound
from cgthub.store import session_scope
from cgthub.tables import utcnow
from connectors.common import sync_state
from connectors.common.connection import get_connection
from connectors.common.http import PartnerError
from connectors.erp.client import ErpClient, ErpFault

CONN_ID = "erp_soap"
OVERLAP = timedelta(minutes=5)
STREAMS = {"sales_order": "sales_orders_raw", "goods_movement": "goods_movements_raw"}
DEFAULT_MATERIAL = {"CART-19": "MAT-CART19", "CART-BCMA": "MAT-CARTBCMA"}
# Hub status -> the goods movement the ERP books for it: receipt of the released lot, issue to the site.
MOVEMENTS = {"released": "101", "in_transit_to_site": "601"}


def client(conn_id: str = CONN_ID) -> ErpClient:
    return ErpClient(get_connection(conn_id))


def pull(
    *, database_url: str | None = None, conn_id: str = CONN_ID, erp: ErpClient | None = None
) -> sync_state.SyncReport:
    erp = erp or client(conn_id)
    report = sync_state.SyncReport(partner="erp", stream="sales_order+goods_movement")
    orders: set[str] = set()
    for kind, method in STREAMS.items():
        with session_scope(database_url) as session:
            mark = sync_state.watermark(session, "erp", kind)
        started = utcnow()
        try:
            raw = getattr(erp, method)(mark - OVERLAP if mark else None)
        except ErpFault as fault:
            report.errors.append(f"{kind}: {fault}")
            if fault.raw is not None:
                _quarantine_fault(database_url, kind, fault, report)
            continue
        except PartnerError as exc:
            report.errors.append(f"{kind}: {exc}")
            continue
        item = Inbound("erp", kind, "soap", raw, started, content_type="text/xml")
        with session_scope(database_url) as session:
            (result,) = pipeline.ingest_batch(session, [item], routing.mapper_for(session))
            report.payloads += 1
            report.appended += result.appended
            report.duplicates += result.duplicates
            report.quarantined += result.quarantined
            orders |= result.order_ids
            report.errors.extend(f"{kind}: {reason}" for reason in result.reasons if result.rejected)
            stream_report = sync_state.SyncReport(partner="erp", stream=kind)
            sync_state.advance(session, stream_report, started)
    report.order_ids = sorted(orders)
    return report


def _quarantine_fault(database_url: str | None, kind: str, fault: ErpFault, report: sync_state.SyncReport) -> None:
    """A SOAP fault answer is kept like any inbound payload: archived, and quarantined with its text."""
    assert fault.raw is not None
    with session_scope(database_url) as session:
        stored = archive.store(
            session, system="erp", kind=kind, channel="soap", payload=fault.raw, content_type="text/xml"
        )
        quarantine.put(
            session, stage=quarantine.Stage.RECEIVE, reason=str(fault), system="erp", kind=kind, raw_id=stored.raw_id
        )
        archive.mark(session, stored.raw_id, "quarantined")
    report.quarantined += 1


def push(payload: dict[str, Any], *, conn_id: str = CONN_ID, erp: ErpClient | None = None) -> dict[str, Any]:
    erp = erp or client(conn_id)
    refs = payload.get("refs") or {}
    sales_order = refs.get("erp_sales_order")
    plant = "DE10" if payload.get("market") == "DE" else "US10"
    if not sales_order:
        if not refs.get("crm_order_id"):
            raise PartnerError(f"order {payload.get('order_id')} has neither an ERP sales order nor a CRM order id")
        material = DEFAULT_MATERIAL.get(str(payload.get("therapy")), "MAT-CART19")
        sales_order = erp.create_sales_order(refs["crm_order_id"], material, plant)["salesOrderNumber"]
    movement = MOVEMENTS.get(payload["status"])
    posted = None
    lot = payload.get("lot") or refs.get("lot")
    if movement and lot:
        posted = erp.post_goods_movement(sales_order, movement, lot, plant, f"{payload['idempotency_key']}:gm")
    erp.post_status(sales_order, payload["status"], payload["idempotency_key"])
    return {"sales_order": sales_order, "status": payload["status"], "goods_movement": posted}
