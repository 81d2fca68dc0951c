"""CMO REST client: slot booking, the sequenced event feed, status notifications."""

from __future__ import annotations

from typing import Any

from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError, PartnerSession


class CmoClient:
    partner = "cmo"

    def __init__(self, conn: PartnerConnection, *, attempts: int = 6) -> None:
        if not conn.password:
            raise PartnerError(f"connection {conn.conn_id!r} needs the CMO API key as its password")
        self.session = PartnerSession(self.partner, conn.base_url, attempts=attempts)
        self.headers = {"Authorization": f"ApiKey {conn.password}"}

    def book_slot(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        answer = self.session.request(
            "POST", "/api/v1/slots", json=body, headers={**self.headers, "Idempotency-Key": idempotency_key}
        )
        if answer.status != 200:
            raise PartnerError(f"cmo: slot booking answered {answer.status}")
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
