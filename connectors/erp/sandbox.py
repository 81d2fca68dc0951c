"""An ERP SOAP endpoint on loopback: serves its WSDL and answers the four operations with state;
bad requests get SOAP faults, as the real one does. Responses have the shape of the
mappings/erp fixtures (document/literal, namespace urn:cgthub:sandbox:erp).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from fastapi import FastAPI, Request
from fastapi.responses import Response
from lxml import etree

from connectors.common.sandbox import FaultConfig, FaultInjector

WSDL = Path(__file__).with_name("erp.wsdl")
NS = "urn:cgthub:sandbox:erp"
MATERIALS = {
    "MAT-CART19": {
        "description": "Anti-CD19 CAR-T cell suspension for infusion",
        "storageCondition": "vapour LN2 <= -150 C",
        "shelfLifeHours": 8760,
    },
    "MAT-CARTBCMA": {
        "description": "Anti-BCMA CAR-T cell suspension for infusion",
        "storageCondition": "vapour LN2 <= -150 C",
        "shelfLifeHours": 8760,
    },
}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


class ErpState:
    def __init__(self) -> None:
        self.sales_orders: dict[str, dict[str, Any]] = {}
        self.movements: list[dict[str, Any]] = []
        self.statuses: dict[str, dict[str, str]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.posted: dict[str, dict[str, Any]] = {}
        self.changed_at: dict[str, datetime] = {}
        self.closed_period: str | None = None  # set to make GetGoodsMovements answer a SOAP fault
        self.lock = threading.Lock()

    def create(
        self, crm_order_id: str, material: str, plant: str, *, number: str | None = None, created_at: str | None = None
    ) -> dict[str, Any]:
        """A sales order; `number` and `created_at` are the ERP users' own (sandbox seeding), else the ERP's."""
        with self.lock:
            for order in self.sales_orders.values():
                if order["crmOrderId"] == crm_order_id:
                    return order  # the ERP keys sales orders by the CRM reference: creating twice is a no-op
            number = number or f"SO-{4500001 + len(self.sales_orders)}"
            now = datetime.now(UTC)
            order = {
                "salesOrderNumber": number,
                "crmOrderId": crm_order_id,
                "createdAt": created_at or now.isoformat(),
                "materialNumber": material,
                "plant": plant,
            }
            self.sales_orders[number] = order
            # The ERP's change log stamps the system time, whatever the document's own dates say:
            # GetSalesOrders' changedSince reads that, as a real ERP's change pointers do.
            self.changed_at[number] = now
            return order

    def post_movement(self, sales_order: str, movement_type: str, batch: str, plant: str) -> dict[str, Any]:
        with self.lock:
            movement = {
                "documentNumber": str(4900001 + len(self.movements)),
                "itemNumber": "1",
                "salesOrder": sales_order,
                "movementType": movement_type,
                "postingDate": datetime.now(UTC).isoformat(),
                "batch": batch,
                "plant": plant,
            }
            self.movements.append(movement)
            return movement


def _envelope(body: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:erp="{NS}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    )


def _element(tag: str, fields: dict[str, Any]) -> str:
    inner = "".join(f"<erp:{k}>{escape(str(v))}</erp:{k}>" for k, v in fields.items() if v is not None)
    return f"<erp:{tag}>{inner}</erp:{tag}>"


def _answer(operation: str, inner: str) -> str:
    return f"<erp:{operation}Response>{inner}</erp:{operation}Response>"


def _fault(code: str, text: str) -> Response:
    body = f"<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{escape(text)}</faultstring></soap:Fault>"
    return Response(_envelope(body), status_code=500, media_type="text/xml")


def create_app(*, faults: FaultConfig | None = None) -> Any:
    faults = faults or FaultConfig.from_env()
    state = ErpState()
    app = FastAPI(title="ERP SOAP sandbox")

    @app.get("/erp/soap")
    def wsdl(request: Request) -> Response:
        location = str(request.url.replace(query=""))
        text = WSDL.read_text().replace("http://127.0.0.1/erp/soap", location)
        return Response(text, media_type="text/xml")

    @app.post("/erp/soap")
    async def soap(request: Request) -> Response:
        try:
            root = etree.fromstring(await request.body(), parser=_PARSER)
            body = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
            call = next(iter(body)) if body is not None else None
        except (etree.XMLSyntaxError, StopIteration):
            return _fault("Client", "request is not a SOAP envelope")
        if call is None:
            return _fault("Client", "empty SOAP body")
        name = etree.QName(call).localname
        args = {etree.QName(child).localname: (child.text or "") for child in call}
        if name == "CreateSalesOrder":
            if args.get("materialNumber") not in MATERIALS:
                return _fault(
                    "Client", f"material {args.get('materialNumber')} does not exist in plant {args.get('plant')}"
                )
            order = state.create(args["crmOrderId"], args["materialNumber"], args.get("plant", "US10"))
            out = _answer(name, _element("salesOrder", order))
        elif name == "GetSalesOrders":
            since = datetime.fromisoformat(args["changedSince"]) if args.get("changedSince") else None
            found = [
                o for number, o in state.sales_orders.items() if since is None or state.changed_at[number] >= since
            ]
            out = _answer(name, "".join(_element("salesOrder", o) for o in found))
        elif name == "GetGoodsMovements" and state.closed_period:
            return _fault("Server", f"posting period {state.closed_period} is closed for reporting")
        elif name == "GetGoodsMovements":
            since = datetime.fromisoformat(args["postedSince"]) if args.get("postedSince") else None
            found = [m for m in state.movements if since is None or datetime.fromisoformat(m["postingDate"]) >= since]
            out = _answer(name, "".join(_element("movement", m) for m in found))
        elif name == "GetMaterial":
            material = MATERIALS.get(args.get("materialNumber", ""))
            if material is None:
                return _fault("Client", f"material {args.get('materialNumber')} does not exist")
            out = _answer(name, _element("material", {"materialNumber": args["materialNumber"], **material}))
        elif name == "GetBatch":
            batch = state.batches.get(args.get("batchNumber", ""))
            if batch is None:
                return _fault("Client", f"batch {args.get('batchNumber')} does not exist")
            out = _answer(name, _element("batch", batch))
        elif name == "PostGoodsMovement":
            if args.get("salesOrderNumber") not in state.sales_orders:
                return _fault("Client", f"sales order {args.get('salesOrderNumber')} does not exist")
            key = args["idempotencyKey"]
            if key not in state.posted:
                state.posted[key] = state.post_movement(
                    args["salesOrderNumber"], args["movementType"], args.get("batch", ""), args.get("plant", "US10")
                )
            out = _answer(name, _element("movement", state.posted[key]))
        elif name == "PostOrderStatus":
            if args.get("salesOrderNumber") not in state.sales_orders:
                return _fault("Client", f"sales order {args.get('salesOrderNumber')} does not exist")
            state.statuses.setdefault(
                args["idempotencyKey"], {"salesOrder": args["salesOrderNumber"], "status": args["status"]}
            )
            out = _answer(name, "<erp:accepted>true</erp:accepted>")
        else:
            return _fault("Client", f"unknown operation {name}")
        return Response(_envelope(out), media_type="text/xml")

    @app.post("/sandbox/sales_orders")
    async def sandbox_sales_order(request: Request) -> dict[str, Any]:
        """The ERP's users entering a sales order (the demo's story), with its own number and date."""
        body = await request.json()
        return state.create(
            body["crmOrderId"],
            body.get("materialNumber", "MAT-CART19"),
            body.get("plant", "US10"),
            number=body.get("salesOrderNumber"),
            created_at=body.get("createdAt"),
        )

    served = FaultInjector(app, faults)
    served.sandbox_state = state
    return served
