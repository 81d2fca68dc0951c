"""The order transparency API as a FastAPI app: `create_app()` for `cgthub api serve` or mounting.

The app enforces its own auth on every route except the health check and the OpenAPI schema/docs
(a host such as Airflow's API server does not protect plugin apps), and records every request in
the access log, whatever its outcome.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cgthub import custody_signing, metrics
from cgthub import health as hub_health
from cgthub.api import custody_keys, decisions, errors, feed, orders, scheduling, subscriptions
from cgthub.api import verify as verify_api
from cgthub.api.audit import Access, AuditWriter
from cgthub.api.auth import PrincipalCache
from cgthub.api.deps import check_keys_before_bodies, reject_unknown_parameters
from cgthub.api.docs import serve_docs_offline
from cgthub.api.schemas import Health
from cgthub.store import database_url as configured_url

log = logging.getLogger(__name__)

DESCRIPTION = """\
Normalized CGT order status, PHI-free timelines, chain of custody (GS1 EPCIS 2.0), FHIR R4 bundles,
an ordered change feed and signed webhooks.

**Auth**: `Authorization: Bearer <API key>`. Scopes: `status:read`, `timeline:read`, `custody:read`,
`admin`. Each key also has a data scope (treatment sites, CMOs, markets): orders outside it answer
404, exactly like orders that do not exist.

**Errors** always look like `{"error": {"code": "...", "message": "...", "details": [...]}}`.
"""


_AUDIT_UNAVAILABLE = json.dumps(
    {
        "error": {
            "code": "audit_unavailable",
            "message": "the access log cannot be written just now, so nothing is answered; retry shortly",
            "details": [],
        }
    }
).encode()


# What a path parameter may look like to be kept in the access log as sent: the hub's own ids and
# partner names. Anything else (an MRN or a name a client put where an order id goes) is logged as
# its placeholder, `/orders/{order_id}`, so the log keeps no patient identifier a caller typed.
_LOGGABLE = {
    "order_id": re.compile(r"ORD-[A-Z0-9-]{1,36}"),
    "subscription_id": re.compile(r"sub_[0-9a-f]{1,32}"),
    "alert_id": re.compile(r"[0-9]{1,18}"),
    "entry_id": re.compile(r"[0-9]{1,18}"),
    "partner": re.compile(r"[a-z][a-z0-9_-]{0,31}"),
}


def loggable(scope: Scope) -> tuple[str, str | None]:
    """The request's path and order id as the access log keeps them: a path no route matched is
    logged as `(no route)`, and a path parameter not shaped like the hub's ids as its placeholder."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template is None:
        return "(no route)", None
    params = scope.get("path_params") or {}
    kept = {name: str(value) for name, value in params.items() if _shaped(name, value)}
    path = re.sub(r"{(\w+)(?::\w+)?}", lambda m: kept.get(m.group(1), m.group(0)), template)
    mount = str(scope.get("root_path", ""))  # under Airflow: /cgthub/api, kept as before
    if mount and str(scope.get("path", "")).startswith(mount):
        path = mount + path
    return path[:300], kept.get("order_id")


def _shaped(name: str, value: Any) -> bool:
    pattern = _LOGGABLE.get(name)
    return pattern is not None and isinstance(value, str | int) and pattern.fullmatch(str(value)) is not None


class AuditMiddleware:
    """Pure ASGI (no body buffering): journals one access-log row per request before the answer starts.

    The row is written when the response's status line is known (`http.response.start`) and the
    status line is sent only after it; a request whose row cannot be written is answered 503
    `audit_unavailable` instead, so no answer goes out unlogged."""

    def __init__(self, app: ASGIApp, writer: AuditWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        refused = False

        async def logged_first(message: Message) -> None:
            nonlocal started, refused
            if refused:
                return  # the app's own answer was replaced by the 503
            if message["type"] == "http.response.start" and not started:
                started = True
                if not self._record(scope, int(message["status"])):
                    refused = True
                    await self._refuse(send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, logged_first)
        finally:
            if not started:  # no answer from the app (it raised, and the server answers 500 next)
                self._record(scope, 500)

    def _record(self, scope: Scope, status: int) -> bool:
        state = scope.get("state") or {}
        route = scope.get("route")
        client = scope.get("client")
        path, order_id = loggable(scope)
        access = Access(
            method=str(scope.get("method", "?"))[:8],
            path=path,
            status_code=status,
            key_id=state.get("key_id"),
            route=getattr(route, "path", None),
            order_id=order_id,
            client=client[0] if client else None,
        )
        try:
            self.writer.record(access)
        except OSError:
            log.exception("could not journal an API access; the request is answered 503")
            return False
        return True

    @staticmethod
    async def _refuse(send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_AUDIT_UNAVAILABLE)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _AUDIT_UNAVAILABLE})


def create_app(
    database_url: str | None = None, *, audit_interval: float = 0.2, key_cache_seconds: float = 2.0
) -> FastAPI:
    """The API on `database_url` (default: CGTHUB_DATABASE_URL). A revoked key stops working within
    `key_cache_seconds`; each request's access-log row is journaled before its answer is sent and
    drained into the table by rounds `audit_interval` seconds apart (see `cgthub.api.audit`)."""
    url = configured_url(database_url)
    # A malformed CGTHUB_CUSTODY_SIGNING_KEY stops the start here (InvalidSetting names the variable,
    # not its value), not at the first custody export; a missing one is reported by /health/ready.
    custody_signing.signing_key_state()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.audit.start()  # replays the journals of processes that died
        yield
        # uvicorn re-raises SIGTERM after a graceful shutdown, so atexit never runs: drain here.
        app.state.audit.close()

    app = FastAPI(
        lifespan=lifespan,
        title="cgthub order transparency API",
        version="1.0.0",
        description=DESCRIPTION,
        dependencies=[Depends(reject_unknown_parameters)],
        openapi_url="/openapi.json",
        docs_url=None,  # served offline below
        redoc_url=None,
    )
    app.state.database_url = url
    app.state.audit = AuditWriter(url, interval=audit_interval)
    app.state.keys = PrincipalCache(key_cache_seconds)
    errors.install(app)
    serve_docs_offline(app)

    @app.get("/health", response_model=Health, tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness: no auth, no data."""
        return {"status": "ok"}

    hub_metrics = metrics.hub_registry(url)

    @app.get("/health/ready", include_in_schema=False)
    def ready() -> JSONResponse:
        """Readiness: 503 while the database does not answer; reports the listener, the delivery loop and
        the custody signing key too."""
        is_ready, state = hub_health.report(url, signs_custody=True)
        return JSONResponse(state, status_code=200 if is_ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus scrape: gauges read from the database now (no auth: counts only, no order data)."""
        return Response(metrics.exposition(hub_metrics), media_type=metrics.CONTENT_TYPE)

    app.include_router(orders.router)
    app.include_router(feed.router)
    app.include_router(subscriptions.router)
    app.include_router(decisions.router)
    app.include_router(verify_api.router)
    app.include_router(scheduling.router)
    app.include_router(custody_keys.router)
    check_keys_before_bodies(app)  # a caller without a valid key gets its 401/403 before its body is read
    app.add_middleware(AuditMiddleware, writer=app.state.audit)
    return app
