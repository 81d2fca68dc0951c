"""The hub's endpoint for courier webhooks: verify the HMAC signature, then archive and map.

A missing or wrong signature is answered 401 and logged (with the sender's address, never the
body), and nothing is stored as an event. A signed but unusable body is archived and quarantined
by the pipeline like any bad payload, and answered 202 with the quarantine reason, so the
courier does not retry forever.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cgthub import pipeline, routing
from cgthub.store import session_scope
from connectors.courier.signature import HEADER, EmptySecret, verify

log = logging.getLogger(__name__)


def create_app(*, secret: str, database_url: str | None = None) -> FastAPI:
    """The receiver; refuses to be made with an empty secret (it would take anyone's signature)."""
    if not secret or not secret.strip():
        raise EmptySecret()
    app = FastAPI(title="cgthub courier webhook receiver")
    app.state.rejected = 0

    @app.post("/webhooks/courier")
    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        if not verify(secret, body, request.headers.get(HEADER)):
            app.state.rejected += 1
            client = request.client.host if request.client else "?"
            log.warning("courier webhook from %s refused: missing or invalid %s", client, HEADER)
            return JSONResponse({"error": f"missing or invalid {HEADER}"}, status_code=401)
        with session_scope(database_url) as session:
            mapper = routing.mapper(session, "courier", "tracking_event")
            result = pipeline.ingest(
                session,
                system="courier",
                kind="tracking_event",
                channel="webhook",
                payload=body,
                mapper=mapper,
                content_type="application/json",
            )
        answer: dict[str, Any] = {"raw_id": result.raw_id, "appended": result.appended}
        if result.duplicate_payload:
            answer["duplicate"] = True
        if result.reasons:
            answer["quarantined"] = result.reasons
        return JSONResponse(answer, status_code=202)

    return app
