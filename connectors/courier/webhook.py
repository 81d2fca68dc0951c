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
courier's resend of a held body is recognised as the payload just applied (applied once). Without
a new webhook (the courier's last scan of a shipment is followed by nothing), `apply_held` applies
them: the receiver's lifespan runs it every 30 s when served on its own (`drain`), and the
`cgthub_courier_held` DAG every 5 minutes whatever serves the webhook (Airflow's API server, which
mounts it through the plugin, does not run a mounted app's lifespan). Both go through the one
`_apply_held`, which claims each held row before applying it, so a payload is applied once however
many of them run.

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
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cgthub import archive, partner_sync, pipeline, release_guard, routing
from cgthub.store import session_scope
from cgthub.sync_state import SyncReport
from cgthub.tables import RawMessage
from connectors.courier.signature import HEADER, EmptySecret, verify

log = logging.getLogger(__name__)

SYSTEM, KIND = "courier", "tracking_event"
DRAIN_LIMIT = 500  # held payloads applied per accepted webhook (the rest with the next ones)
RETRY_AFTER_SECONDS = 60
DRAIN_EVERY = 30.0  # seconds between two looks for held payloads, when served on its own


def _apply_held(session: Session, limit: int = DRAIN_LIMIT) -> list[pipeline.IngestResult]:
    """Apply the courier payloads archived but not applied (`received`), oldest first, in the caller's
    transaction (rows claimed FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite has one writer)."""
    return pipeline.process_pending(
        session, SYSTEM, lambda item: routing.mapper(session, SYSTEM, item.kind), limit=limit
    )


def held(session: Session) -> int:
    """How many courier payloads are archived but not applied yet."""
    query = select(func.count()).select_from(RawMessage)
    return session.scalar(query.where(RawMessage.system == SYSTEM, RawMessage.status == "received")) or 0


def apply_held(database_url: str | None = None, *, limit: int = DRAIN_LIMIT) -> SyncReport:
    """Apply every held courier payload, `limit` a transaction, each under the release in force.

    What the receiver's own loop (`drain`) and the `cgthub_courier_held` DAG run. While payloads are
    held and the release is still not in force, raises `release_guard.ReleaseRefused` (a DAG run
    fails and says why; the webhook that held them raised a critical alert); nothing held is no error.
    """
    report = SyncReport(partner=SYSTEM, stream="held webhooks", via=["raw archive (courier webhook, held)"])
    while True:
        with session_scope(database_url) as session:
            try:
                report.release = release_guard.check_in_force(session)
            except release_guard.ReleaseRefused as refused:
                if held(session):
                    raise
                report.errors.append(f"nothing held; not applying: {refused.message}")
                return report
            results = _apply_held(session, limit)
            partner_sync.count(report, results)
        if len(results) < limit:
            return report


def drain(database_url: str | None = None, *, limit: int = DRAIN_LIMIT) -> int:
    """`apply_held` for the receiver's own loop: how many were applied; 0 (and nothing done) while the
    release is not in force."""
    try:
        return apply_held(database_url, limit=limit).payloads
    except release_guard.ReleaseRefused:
        return 0


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
    app's lifespan, held payloads are applied with the next accepted webhook and by the
    `cgthub_courier_held` DAG."""
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

    # No /docs or /redoc: they load Swagger from a CDN, and this app faces the courier, not people;
    # its machine-readable schema stays at /openapi.json.
    app = FastAPI(title="cgthub courier webhook receiver", lifespan=lifespan, docs_url=None, redoc_url=None)
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
