"""CMO REST client: manufacturing capacity, slot reservations, the sequenced event feed, status notifications."""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import quote

from cgthub.slots import ReservationUnknown, SlotTaken
from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError, PartnerSession


class CmoClient:
    partner = "cmo"
    READ_AGAIN = 4

    def __init__(self, conn: PartnerConnection, *, attempts: int = 6) -> None:
        if not conn.password:
            raise PartnerError(f"connection {conn.conn_id!r} needs the CMO API key as its password")
        self.session = PartnerSession(self.partner, conn.base_url, attempts=attempts)
        self.headers = {"Authorization": f"ApiKey {conn.password}"}

    def capacity(self, start: date, end: date, therapy: str | None = None) -> list[dict[str, Any]]:
        """Places per CMO site, therapy and day from `start` to `end`, as the CMO publishes them."""
        params: dict[str, str] = {"from": start.isoformat(), "to": end.isoformat()}
        if therapy:
            params["therapy"] = therapy
        problem = ""
        for _ in range(self.READ_AGAIN):  # a cut-off answer to a read is asked for again
            answer = self.session.request("GET", "/api/v1/capacity", params=params, headers=self.headers)
            if answer.status != 200:
                raise PartnerError(f"cmo: capacity answered {answer.status}")
            try:
                return list(answer.json()["items"])
            except (PartnerError, KeyError, TypeError) as exc:
                problem = str(exc)
        raise PartnerError(f"cmo: capacity unusable {self.READ_AGAIN} times: {problem}")

    def book_slot(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Reserve one place; raises SlotTaken when the CMO answers that the day is full (409)."""
        answer = self.session.request(
            "POST", "/api/v1/slots", json=body, headers={**self.headers, "Idempotency-Key": idempotency_key}
        )
        if answer.status == 409:
            raise SlotTaken(
                f"the CMO has no place left at {body.get('cmo')} for {body.get('therapy')} on {body.get('slotDate')}",
                "pick another date from GET /orders/{id}/slots",
            )
        if answer.status != 200:
            raise PartnerError(f"cmo: slot booking answered {answer.status}")
        return dict(answer.json())

    def release_slot(self, reservation_id: str, idempotency_key: str) -> dict[str, Any]:
        """Give a reserved place back; raises ReservationUnknown when the CMO has no such reservation."""
        answer = self.session.request(
            "POST",
            f"/api/v1/slots/{quote(reservation_id, safe='')}/release",
            headers={**self.headers, "Idempotency-Key": idempotency_key},
        )
        if answer.status == 404:
            raise ReservationUnknown(
                f"the CMO knows no reservation {reservation_id}", "ask the CMO's planners; nothing was changed"
            )
        if answer.status != 200:
            raise PartnerError(f"cmo: slot release answered {answer.status}")
        return dict(answer.json())

    def events_page(self, after: int, limit: int = 200) -> tuple[bytes, list[dict[str, Any]], int, str | None]:
        """Events after sequence `after`: raw bytes, events, the next cursor, and a problem if unusable."""
        answer = self.session.request(
            "GET", "/api/v1/events", params={"after": after, "limit": limit}, headers=self.headers
        )
        if answer.status != 200:
            raise PartnerError(f"cmo: event feed answered {answer.status}")
        try:
            body = answer.json()
            return answer.body, list(body["items"]), int(body["next"]), None
        except (PartnerError, KeyError, TypeError, ValueError) as exc:
            return answer.body, [], after, str(exc)

    def notify(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        answer = self.session.request(
            "POST", "/api/v1/notifications", json=body, headers={**self.headers, "Idempotency-Key": idempotency_key}
        )
        if answer.status != 200:
            raise PartnerError(f"cmo: notification answered {answer.status}")
        return dict(answer.json())
