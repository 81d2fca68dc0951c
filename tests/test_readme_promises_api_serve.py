"""README, Order transparency API: "`cgthub api serve`: uvicorn on :8088 (clear of Airflow's 8080),
plus the webhook delivery loop; schema at /openapi.json". The command as written, no --port: it listens
on 8088 and answers there, and its delivery loop beats in the hub's database (what /health/ready
reads), on SQLite and PostgreSQL. The other API tests pass --port 0, so none held the default."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import func, select

from cgthub.heartbeat import Heartbeat
from cgthub.store import session_scope

DEFAULT_PORT = 8088


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener refuses it; TIME_WAIT does not
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serve_listens_on_8088_with_its_delivery_loop_and_the_schema(db_url):
    if not _port_free(DEFAULT_PORT):
        pytest.skip(f"something else holds {DEFAULT_PORT} on this machine")
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url}
    server = subprocess.Popen(
        [sys.executable, "-m", "cgthub.cli", "api", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        said = server.stderr.readline() if server.stderr else ""
        assert re.search(rf"http://127\.0\.0\.1:{DEFAULT_PORT}\b", said), said
        schema = httpx.get(f"http://127.0.0.1:{DEFAULT_PORT}/openapi.json", timeout=10)
        assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.")
        assert httpx.get(f"http://127.0.0.1:{DEFAULT_PORT}/orders", timeout=10).status_code == 401
        deadline, beats = time.monotonic() + 30, 0
        while not beats and time.monotonic() < deadline:
            with session_scope(db_url, readonly=True) as s:
                beats = s.scalar(select(func.count()).select_from(Heartbeat))
            time.sleep(0.2)
        assert beats, "the delivery loop never beat"
    finally:
        server.terminate()
        server.wait(30)
        if server.stderr:
            server.stderr.close()
