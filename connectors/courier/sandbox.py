"""A courier on loopback: books shipments, records tracking events (the shapes of
mappings/courier/tracking_event fixtures), serves them as an incremental feed, and pushes each new
event to registered webhooks with an HMAC signature.

A booking (`POST /v1/shipments`) may carry a pickup window (`pickup.windowStart` < `windowEnd`,
ISO 8601 with offsets) and answers the shipment id and air waybill (`trackingNumber`). It is
idempotent twice over, as couriers' booking APIs are: the same `Idempotency-Key` answers the same
booking, and so does a second booking of the same leg (direction) for the same order reference,
whoever books it (the hub's outbound DAG, or the courier's own staff for the demo's story).
`POST /v1/shipments/cancel` cancels the shipment booked for an order's leg (by the order's
reference and the direction), so the leg can be booked again; the same Idempotency-Key answers the
same cancellation, and a leg with nothing booked answers an empty list.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from fastapi import FastAPI, Header, HTTPException, Request

from connectors.common.sandbox import FaultConfig, FaultInjector
from connectors.courier.signature import HEADER, sign


class CourierState:
    def __init__(self, api_key: str, webhook_secret: str, faults: FaultConfig) -> None:
        self.api_key, self.webhook_secret, self.faults = api_key, webhook_secret, faults
        self.random = random.Random(faults.seed + 2)
        self.shipments: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.bookings: dict[str, dict[str, Any]] = {}
        self.cancellations: dict[str, dict[str, Any]] = {}
        self.legs: dict[tuple[str, str], dict[str, Any]] = {}  # (order reference, direction) -> shipment
        self.webhooks: list[str] = []
        self.deliveries: list[int] = []
        self.lock = threading.Lock()

    def add_event(self, shipment_id: str, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            shipment = self.shipments[shipment_id]
            seq = len(self.events) + 1
            stored = {
                "eventId": f"EVT-{seq:06d}",
                "shipmentId": shipment_id,
                "trackingNumber": shipment["trackingNumber"],
                "direction": shipment["direction"],
                "reference": shipment["reference"],
                "shipper": {"id": shipment["shipperId"]},
                **event,
                "recordedAt": (datetime.now(UTC) + timedelta(microseconds=seq)).isoformat(),
            }
            self.events.append(stored)
        for url in list(self.webhooks):
            self.deliver(url, stored)
        return stored

    def deliver(self, url: str, event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        try:
            answer = requests.post(
                url,
                data=body,
                headers={HEADER: sign(self.webhook_secret, body), "content-type": "application/json"},
                timeout=5,
            )
            self.deliveries.append(answer.status_code)
        except requests.RequestException:
            self.deliveries.append(0)


def create_app(
    *,
    api_key: str = "courier-key",
    webhook_secret: str = "whsec-sandbox",  # noqa: S107 - the sandbox's own test secret
    faults: FaultConfig | None = None,
) -> Any:
    faults = faults or FaultConfig.from_env()
    state = CourierState(api_key, webhook_secret, faults)
    app = FastAPI(title="Courier sandbox")

    def authorize(key: str | None) -> None:
        if key != state.api_key:
            raise HTTPException(401, "missing or wrong API key")

    @app.post("/v1/shipments")
    async def book(request: Request, x_api_key: str | None = Header(None), idempotency_key: str = Header(...)) -> Any:
        authorize(x_api_key)
        if idempotency_key in state.bookings:
            return state.bookings[idempotency_key]
        body = await request.json()
        if body.get("direction") not in ("TO_MANUFACTURER", "TO_SITE"):
            raise HTTPException(422, "direction must be TO_MANUFACTURER or TO_SITE")
        pickup = _pickup(body.get("pickup") or {})
        reference = body.get("reference") or {}
        order = reference.get("crmOrderId") or reference.get("hubOrderId")
        with state.lock:
            same_leg = state.legs.get((order, body["direction"])) if order else None
            if same_leg is not None:
                state.bookings[idempotency_key] = same_leg
                return same_leg
            n = len(state.shipments) + 1
            shipment = {
                "shipmentId": body.get("shipmentId") or f"SHP-{n:06d}",
                "trackingNumber": f"CRY{7781200 + n}",
                "status": "BOOKED",
                "direction": body["direction"],
                "reference": reference,
                "shipperId": f"DS-{4400 + n}",
                "pickup": pickup,
                "delivery": body.get("delivery") or {},
                "bookedAt": datetime.now(UTC).isoformat(),
            }
            state.shipments[shipment["shipmentId"]] = shipment
            state.bookings[idempotency_key] = shipment
            if order:
                state.legs[(order, body["direction"])] = shipment
        return shipment

    @app.post("/v1/shipments/cancel")
    async def cancel(request: Request, x_api_key: str | None = Header(None), idempotency_key: str = Header(...)) -> Any:
        """Cancel the shipment booked for {reference: {crmOrderId | hubOrderId}, direction}."""
        authorize(x_api_key)
        body = await request.json()
        reference = body.get("reference") or {}
        order = reference.get("crmOrderId") or reference.get("hubOrderId")
        if not order or body.get("direction") not in ("TO_MANUFACTURER", "TO_SITE"):
            raise HTTPException(422, "reference (crmOrderId or hubOrderId) and direction are required")
        with state.lock:
            if idempotency_key in state.cancellations:
                return state.cancellations[idempotency_key]
            shipment = state.legs.pop((order, body["direction"]), None)
            if shipment is not None:
                shipment["status"] = "CANCELLED"
                shipment["cancelledAt"] = datetime.now(UTC).isoformat()
            answer = {"cancelled": [shipment["shipmentId"]] if shipment is not None else []}
            state.cancellations[idempotency_key] = answer
            return answer

    @app.get("/v1/events")
    def events(since: str | None = None, limit: int = 200, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        authorize(x_api_key)
        after = datetime.fromisoformat(since) if since else None
        with state.lock:
            found = [e for e in state.events if after is None or datetime.fromisoformat(e["recordedAt"]) >= after]
        page = found[:limit]
        if faults.duplicate_rate and page and state.random.random() < faults.duplicate_rate:
            page = [*page, page[0]]
        if faults.reorder:
            page = state.random.sample(page, len(page))
        return {"events": page, "hasMore": len(found) > limit}

    @app.post("/sandbox/shipments/{shipment_id}/events")
    async def sandbox_event(shipment_id: str, request: Request) -> dict[str, Any]:
        if shipment_id not in state.shipments:
            raise HTTPException(404, f"no shipment {shipment_id}")
        return state.add_event(shipment_id, await request.json())

    @app.post("/sandbox/webhooks")
    async def sandbox_webhook(request: Request) -> dict[str, Any]:
        state.webhooks.append((await request.json())["url"])
        return {"registered": len(state.webhooks)}

    served = FaultInjector(app, faults)
    served.sandbox_state = state
    return served


def _pickup(pickup: dict[str, Any]) -> dict[str, Any]:
    """The pickup as booked; a window, when given, is two aware times, the start before the end."""
    if not ("windowStart" in pickup or "windowEnd" in pickup):
        return pickup
    try:
        start, end = (datetime.fromisoformat(str(pickup[name])) for name in ("windowStart", "windowEnd"))
    except (KeyError, ValueError):
        raise HTTPException(422, "pickup.windowStart and pickup.windowEnd must both be ISO 8601 times") from None
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(422, "the pickup window's times need their UTC offset")
    if start >= end:
        raise HTTPException(422, "the pickup window must start before it ends")
    return pickup
