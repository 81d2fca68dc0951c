"""A real uvicorn server on a loopback port picked by the OS, serving the API on the test database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from cgthub import ledger
from cgthub.api import create_app
from cgthub.api.auth import create_key
from cgthub.store import session_scope


@dataclass
class ApiServer:
    base_url: str
    database_url: str
    app: Any
    clients: list[httpx.Client] = field(default_factory=list)

    def key(self, *scopes: str, **data_scope: Any) -> str:
        """A fresh API key; data_scope: sites=[...], cmos=[...], markets=[...] or all_data=True."""
        if not any(data_scope.values()):
            data_scope = {"all_data": True}
        with session_scope(self.database_url) as session:
            _, token = create_key(session, name="test", scopes=scopes or ("admin",), **data_scope)
        return token

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def flush_audit(self) -> None:
        self.app.state.audit.flush()


def build_orders(database_url: str, events_by_order: list[list[Any]]) -> list[str]:
    """Append each order's events through the ledger; returns the order ids in the same order, once
    the change feed serves what they changed."""
    ids = []
    with session_scope(database_url) as session:
        for events in events_by_order:
            results = [ledger.append(session, e) for e in events]
            ids.append(next(r.order_id for r in results if r.order_id))
    feed_settled(database_url)
    return ids


def feed_settled(database_url: str, timeout: float = 30.0) -> None:
    """Until PostgreSQL's horizon (cgthub.changes: the oldest transaction still running in the hub's
    database) has passed every change row written so far, as a consumer that polls finds it at last.
    Transactions in other databases of the server no longer hold it, but every test worker's schema
    is in the one database `test` (conftest.pg_schema_url), so another worker's transaction still
    holds it back a while. SQLite serves every committed row at once."""
    from sqlalchemy import func, select

    from cgthub.changes import OrderChange, _pg_horizon

    deadline = time.monotonic() + timeout
    with session_scope(database_url, readonly=True) as session:
        if session.get_bind().dialect.name != "postgresql":
            return
        newest = session.scalar(select(func.max(OrderChange.tx)))
    while newest is not None and time.monotonic() < deadline:
        with session_scope(database_url, readonly=True) as session:
            if _pg_horizon(session) > newest:
                return
        time.sleep(0.1)


@pytest.fixture
def api(db_url: str) -> Iterator[ApiServer]:
    app = create_app(db_url, audit_interval=0.05, key_cache_seconds=0.3)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = ApiServer(base_url=f"http://127.0.0.1:{port}", database_url=db_url, app=app)
    try:
        yield running
    finally:
        for client in running.clients:
            client.close()
        server.should_exit = True
        thread.join(timeout=10)
        app.state.audit.close()
