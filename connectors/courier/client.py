"""Courier REST client: book and cancel shipments (idempotent), read the tracking-event feed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError, PartnerSession


class CourierClient:
    partner = "courier"

    def __init__(self, conn: PartnerConnection, *, attempts: int = 6) -> None:
        if not conn.password:
            raise PartnerError(f"connection {conn.conn_id!r} needs the courier API key as its password")
        self.conn = conn
        self.session = PartnerSession(self.partner, conn.base_url, attempts=attempts)
        self.headers = {"X-API-Key": conn.password}

    def book(self, body: dict[str, Any], idempotency_key: str) -> tuple[bytes, dict[str, Any]]:
        """Book a shipment: the courier's answer as received (archived as is) and read."""
        answer = self.session.request(
            "POST", "/v1/shipments", json=body, headers={**self.headers, "Idempotency-Key": idempotency_key}
        )
        if answer.status != 200:
            raise PartnerError(f"courier: booking answered {answer.status}")
        booked = answer.json()
        if not isinstance(booked, dict) or not booked.get("shipmentId"):
            raise PartnerError("courier: the booking answer names no shipment")
        return answer.body, booked

    def cancel_leg(self, reference: dict[str, Any], direction: str, idempotency_key: str) -> list[str]:
        """Cancel the shipment booked for an order's leg (by its reference), if any: the ids cancelled."""
        answer = self.session.request(
            "POST",
            "/v1/shipments/cancel",
            json={"reference": reference, "direction": direction},
            headers={**self.headers, "Idempotency-Key": idempotency_key},
        )
        if answer.status != 200:
            raise PartnerError(f"courier: cancellation answered {answer.status}")
        cancelled = answer.json()
        if not isinstance(cancelled, dict) or not isinstance(cancelled.get("cancelled"), list):
            raise PartnerError("courier: the cancellation answer names no shipments")
        return [str(s) for s in cancelled["cancelled"]]

    def events_page(self, since: datetime | None, limit: int = 200) -> tuple[bytes, list[dict[str, Any]], str | None]:
        """One page of the event feed: raw bytes (archived as is), events, and a problem if unusable."""
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since.isoformat()
        answer = self.session.request("GET", "/v1/events", params=params, headers=self.headers)
        if answer.status != 200:
            raise PartnerError(f"courier: event feed answered {answer.status}")
        try:
            return answer.body, list(answer.json()["events"]), None
        except (PartnerError, KeyError, TypeError) as exc:
            return answer.body, [], str(exc)
