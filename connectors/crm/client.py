"""CRM REST client: OAuth2 client credentials, modified-since pages, status PATCH with idempotency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors.common.connection import PartnerConnection
from connectors.common.http import Answer, PartnerError, PartnerSession

MAX_PAGES = 500  # pages in one walk (100,000 records at 200 a page); the next run goes on from there


@dataclass
class Page:
    """One page as received (archived as is) and, when it parsed, its records and next cursor."""

    raw: bytes
    records: list[dict[str, Any]]
    next_cursor: int | None
    problem: str | None = None


class CrmClient:
    partner = "crm"

    def __init__(self, conn: PartnerConnection, *, attempts: int = 6) -> None:
        if not conn.login or not conn.password:
            raise PartnerError(f"connection {conn.conn_id!r} needs the OAuth2 client id and secret as login/password")
        self.conn = conn
        self.session = PartnerSession(self.partner, conn.base_url, attempts=attempts)
        self.token_path = str(conn.extra.get("token_path", "/oauth/token"))
        self._token: str | None = None
        self._expires_at = 0.0

    # OAuth2 ------------------------------------------------------------------------------------
    def _fetch_token(self) -> None:
        answer = self.session.request(
            "POST",
            self.token_path,
            data={
                "grant_type": "client_credentials",
                "client_id": self.conn.login,
                "client_secret": self.conn.password,
            },
        )
        if answer.status != 200:
            raise PartnerError(f"crm: token request refused ({answer.status}); check the connection's client id/secret")
        body = answer.json()
        self._token = body["access_token"]
        self._expires_at = time.monotonic() + float(body.get("expires_in", 300))

    def _authorized(self, method: str, path: str, **kwargs: Any) -> Answer:
        if self._token is None or time.monotonic() > self._expires_at - 30:
            self._fetch_token()
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {self._token}"}
        answer = self.session.request(method, path, headers=headers, **kwargs)
        if answer.status == 401:  # revoked or expired early: one fresh token, one more try
            self._fetch_token()
            headers["Authorization"] = f"Bearer {self._token}"
            answer = self.session.request(method, path, headers=headers, **kwargs)
        return answer

    # reads -------------------------------------------------------------------------------------
    def pages(self, since: datetime | None, *, limit: int = 200, max_pages: int | None = None) -> Iterator[Page]:
        """Records modified at or after `since`, page by page. A page that does not parse is
        yielded with its problem (to be archived and quarantined) and ends the walk.

        The CRM's cursor is not trusted to end: a next cursor already read in this walk (paging that
        loops back) ends it with a PartnerError, and a walk stops after `max_pages` pages (the next
        run goes on from the newest record's modification time, as after any interrupted walk)."""
        cursor: Any = 0
        read: set[str] = set()
        while cursor is not None and len(read) < (max_pages or MAX_PAGES):
            if repr(cursor) in read:
                raise PartnerError(
                    f"crm: listing orders loops: page {len(read) + 1}'s cursor was already read in this walk; "
                    "stopped (the pages before it are kept)"
                )
            read.add(repr(cursor))
            params: dict[str, Any] = {"cursor": cursor, "limit": limit}
            if since is not None:
                params["modifiedSince"] = since.isoformat()
            answer = self._authorized("GET", "/api/orders", params=params)
            if answer.status != 200:
                raise PartnerError(f"crm: listing orders answered {answer.status}")
            try:
                body = answer.json()
                records, cursor = list(body["items"]), body.get("nextCursor")
            except (PartnerError, KeyError, TypeError) as exc:
                yield Page(answer.body, [], None, problem=str(exc))
                return
            yield Page(answer.body, records, cursor)

    # writes ------------------------------------------------------------------------------------
    def patch_status(self, crm_order_id: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        answer = self._authorized(
            "PATCH", f"/api/orders/{crm_order_id}/status", json=body, headers={"Idempotency-Key": idempotency_key}
        )
        if answer.status != 200:
            raise PartnerError(f"crm: status update for {crm_order_id} answered {answer.status}")
        return dict(answer.json())
