"""ERP sync entry points: `pages(kind, mark)` reads sales orders or goods movements changed since
the watermark (each SOAP response yielded as received, mapped by mappings/erp), and `push(payload)`
posts the hub's status to the order's sales order, creating the sales order first when the ERP
has none for it (the ERP keys sales orders by the CRM order id, so that is idempotent too).

A SOAP fault answer is yielded as a refused page: the hub archives and quarantines it with the
fault's code (its text stays in the archived answer: the ERP's free text may name a patient), like
any payload it cannot use, and the stream's watermark stays where it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from cgthub import partner_sync, partners
from cgthub.archive import Inbound
from cgthub.sync_state import SyncReport
from cgthub.tables import utcnow
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


def pages(kind: str, mark: partners.Mark, *, erp: ErpClient | None = None) -> Iterator[partners.Page]:
    """One SOAP read of `kind` changed since the mark; its start time is the stream's next watermark."""
    erp = erp or client()
    started = utcnow()
    try:
        raw = getattr(erp, STREAMS[kind])(mark.watermark - OVERLAP if mark.watermark else None)
    except ErpFault as fault:
        if fault.raw is None:
            raise
        yield partners.Page(
            [Inbound("erp", kind, "soap", fault.raw, started, content_type="text/xml")], refused=str(fault)
        )
        return
    yield partners.Page([Inbound("erp", kind, "soap", raw, started, content_type="text/xml")], watermark=started)


def sales_orders(mark: partners.Mark) -> Iterator[partners.Page]:
    return pages("sales_order", mark)


def goods_movements(mark: partners.Mark) -> Iterator[partners.Page]:
    return pages("goods_movement", mark)


def pull(*, database_url: str | None = None, conn_id: str = CONN_ID, erp: ErpClient | None = None) -> SyncReport:
    """Both streams into the hub (what the ERP ingest DAG runs, for one client)."""
    chosen = erp or client(conn_id)
    partner = partners.get("erp")
    report = SyncReport(partner="erp", stream="+".join(p.stream for p in partner.pulls))
    for declared in partner.pulls:
        partner_sync.pull_stream(
            partner,
            declared,
            database_url=database_url,
            report=report,
            fetch=lambda mark, kind=declared.stream: pages(kind, mark, erp=chosen),
        )
    return report


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
