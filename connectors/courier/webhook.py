"""The hub's endpoint for courier webhooks: verify the HMAC signature, then archive and map.

A missing or wrong signature is answered 401 and logged (with the sender's address, never the
body), and nothing is stored as an event. A signed but unusable body is archived and quarantined
by the pipeline like any bad payload, and answered 202 with the quarantine reason, so the
courier does not retry forever.

On a hub whose live mapping and configuration files are not the release bundle promoted to its
`CGTHUB_RELEASE_ENV` (`cgthub.release_guard`), a signed body is archived first (status `received`:
nothing is lost) and answered 503 with Retry-After and the reason (environment, bundle, first file
that differs; no payload content), and a critical alert says the release is not in force. It is
applied once the release is back: every webhook accepted under the bundle in force first applies
the courier payloads left `received`, oldest first, so tracking events keep their order and the
courier's resend of a held body is recognised as the payload just applied (applied once); `drain`
does the same without a new webhook (the receiver runs it every 30 s when served on its own).

Why `received` and 503 rather than quarantine and 202: nothing is wrong with the payload, the hub
is, and the condition clears itself when the files are put back. A quarantine entry would need a
signed retry per payload for a state nobody needs to judge payload by payload; a 503 keeps the
courier's own retry as the signal to deliver again, as any receiver that is temporarily unable to
process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from cgthub import archive, pipeline, release_guard, routing
from cgthub.store import session_scope
from connectors.courier.signature import HEADER, EmptySecret, verify

log = logging.getLogger(__name__)

SYSTEM, KIND = "courier", "tracking_event"
DRAIN_LIMIT = 500  # held payloads applied per accepted webhook (the rest with the next ones)
RETRY_AFTER_SECONDS = 60
DRAIN_EVERY = 30.0  # seconds between two looks for held payloads, when served on its own


def _apply_held(session: Session, limit: int = DRAIN_LIMIT) -> int:
    """Apply the courier payloads archived but not applied (`received`), oldest first; how many."""
    results = pipeline.process_pending(
        session, SYSTEM, lambda item: routing.mapper(session, SYSTEM, item.kind), limit=limit
    )
    return len(results)


def drain(database_url: str | None = None, *, limit: int = DRAIN_LIMIT) -> int:
    """Apply held courier payloads if the release is in force now; 0 (and nothing done) if it is not."""
    with session_scope(database_url) as session:
        try:
            release_guard.check_in_force(session)
        except release_guard.ReleaseRefused:
            return 0
        return _apply_held(session, limit)


async def _drain_forever(database_url: str | None, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            applied = await asyncio.to_thread(drain, database_url)
        except Exception:  # a database outage: logged, tried again next round
            log.exception("applying held courier payloads failed")
            continue
        if applied:
            log.info("applied %d held courier payload(s): the release is in force again", applied)


def create_app(*, secret: str, database_url: str | None = None, drain_every: float | None = DRAIN_EVERY) -> FastAPI:
    """The receiver; refuses to be made with an empty secret (it would take anyone's signature).

    Served on its own (the `courier-webhook` service), it also applies held payloads every
    `drain_every` seconds; mounted in another app (Airflow's), whose server does not start a mounted
    app's lifespan, held payloads are applied with the next accepted webhook."""
    if not secret or not secret.strip():
        raise EmptySecret()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_drain_forever(database_url, drain_every)) if drain_every else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="cgthub courier webhook receiver", lifespan=lifespan)
    app.state.rejected = 0
    app.state.held = 0  # archived but not applied: the release was not in force

    @app.post("/webhooks/courier")
    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        if not verify(secret, body, request.headers.get(HEADER)):
            app.state.rejected += 1
            client = request.client.host if request.client else "?"
            log.warning("courier webhook from %s refused: missing or invalid %s", client, HEADER)
            return JSONResponse({"error": f"missing or invalid {HEADER}"}, status_code=401)
        refused: release_guard.ReleaseRefused | None = None
        with session_scope(database_url) as session:
            try:
                release_guard.check_in_force(session)
            except release_guard.ReleaseRefused as exc:
                refused = exc
                saved = archive.store(
                    session, system=SYSTEM, kind=KIND, channel="webhook", payload=body, content_type="application/json"
                )
                release_guard.alert_not_in_force(session, exc, where="the courier webhook")
            else:
                _apply_held(session)
                mapper = routing.mapper(session, SYSTEM, KIND)
                result = pipeline.ingest(
                    session,
                    system=SYSTEM,
                    kind=KIND,
                    channel="webhook",
                    payload=body,
                    mapper=mapper,
                    content_type="application/json",
                )
        if refused is not None:
            app.state.held += 1
            log.warning("courier webhook archived as raw #%d, not applied: %s", saved.raw_id, refused.message)
            return JSONResponse(
                {
                    "error": f"archived, not applied: {refused.message}",
                    "environment": refused.environment,
                    "bundle": refused.bundle,
                    "raw_id": saved.raw_id,
                    "archived": True,
                },
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        answer: dict[str, Any] = {"raw_id": result.raw_id, "appended": result.appended}
        if result.duplicate_payload:
            answer["duplicate"] = True
        if result.reasons:
            answer["quarantined"] = result.reasons
        return JSONResponse(answer, status_code=202)

    return app
