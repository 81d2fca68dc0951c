"""A CRM that behaves like the real one, on loopback: OAuth2 client credentials with expiring
tokens, therapy-order records listed by modified-since with cursor pages, status PATCHes with
idempotency keys. Records have the shape of mappings/crm/enrollment fixtures.
"""

from __future__ import annotations

import random
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from connectors.common.sandbox import FaultConfig, FaultInjector


class CrmState:
    def __init__(self, *, client_id: str, client_secret: str, token_ttl: float, faults: FaultConfig) -> None:
        self.client_id, self.client_secret, self.token_ttl = client_id, client_secret, token_ttl
        self.faults = faults
        self.random = random.Random(faults.seed + 1)
        self.records: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, datetime] = {}
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.idempotency: dict[str, dict[str, Any]] = {}
        self.tokens_issued = 0
        self.lock = threading.Lock()
        self._clock = 0

    def upsert(self, record: dict[str, Any], modified_at: datetime | None = None) -> dict[str, Any]:
        with self.lock:
            self._clock += 1
            # Distinct, increasing modification times even within one millisecond.
            stamp = (modified_at or datetime.now(UTC)) + timedelta(microseconds=self._clock)
            stored = {**self.records.get(record["id"], {}), **record, "modifiedAt": stamp.isoformat()}
            self.records[record["id"]] = stored
            return stored


def create_app(
    *,
    client_id: str = "cgthub",
    client_secret: str = "sandbox-secret",  # noqa: S107 - a sandbox's own test credential
    token_ttl: float = 300.0,
    faults: FaultConfig | None = None,
) -> Any:
    faults = faults or FaultConfig.from_env()
    state = CrmState(client_id=client_id, client_secret=client_secret, token_ttl=token_ttl, faults=faults)
    app = FastAPI(title="CRM sandbox")
    app.state.crm = state

    def authorize(authorization: str | None) -> None:
        token = (authorization or "").removeprefix("Bearer ").strip()
        expires = state.tokens.get(token)
        if expires is None or expires < datetime.now(UTC):
            raise HTTPException(401, "invalid or expired token")

    @app.post("/oauth/token")
    def token(
        grant_type: str = Form(...), client_id: str = Form(...), client_secret: str = Form(...)
    ) -> dict[str, Any]:
        if grant_type != "client_credentials":
            raise HTTPException(400, "unsupported_grant_type")
        if (client_id, client_secret) != (state.client_id, state.client_secret):
            raise HTTPException(401, "invalid_client")
        value = secrets.token_urlsafe(24)
        state.tokens[value] = datetime.now(UTC) + timedelta(seconds=state.token_ttl)
        state.tokens_issued += 1
        return {"access_token": value, "token_type": "Bearer", "expires_in": state.token_ttl}

    @app.get("/api/orders")
    def orders(
        modifiedSince: str | None = None,
        cursor: int = 0,
        limit: int = 100,
        authorization: str | None = Header(None),
    ) -> dict[str, Any]:
        authorize(authorization)
        since = datetime.fromisoformat(modifiedSince) if modifiedSince else None
        with state.lock:
            items = sorted(state.records.values(), key=lambda r: (r["modifiedAt"], r["id"]))
        if since is not None:
            items = [r for r in items if datetime.fromisoformat(r["modifiedAt"]) >= since]
        page = items[cursor : cursor + limit]
        next_cursor = cursor + limit if cursor + limit < len(items) else None
        if faults.duplicate_rate and page and state.random.random() < faults.duplicate_rate:
            page = [*page, page[0]]
        if faults.reorder:
            page = state.random.sample(page, len(page))
        return {"items": page, "nextCursor": next_cursor}

    @app.patch("/api/orders/{order_id}/status")
    async def patch_status(
        order_id: str, request: Request, authorization: str | None = Header(None), idempotency_key: str = Header(...)
    ) -> JSONResponse:
        authorize(authorization)
        if idempotency_key in state.idempotency:
            return JSONResponse(state.idempotency[idempotency_key], headers={"idempotent-replay": "true"})
        if order_id not in state.records:
            raise HTTPException(404, f"no order {order_id}")
        body = await request.json()
        state.statuses.setdefault(order_id, []).append(body)
        answer = {"id": order_id, "hubStatus": body.get("status"), "accepted": True}
        state.idempotency[idempotency_key] = answer
        return JSONResponse(answer)

    @app.post("/sandbox/orders")
    async def sandbox_upsert(request: Request) -> dict[str, Any]:
        return state.upsert(await request.json())

    @app.get("/sandbox/statuses")
    def sandbox_statuses() -> dict[str, list[dict[str, Any]]]:
        return state.statuses

    served = FaultInjector(app, faults)
    served.sandbox_state = state
    return served
