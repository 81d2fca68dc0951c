"""The access log keeps every answered request: its row is journaled before the answer, so a server
killed right after answering loses none (the next start writes them); a database that refuses rows
delays them, and a journal that cannot be written turns the answer into a 503."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import select

from cgthub.api.auth import create_key
from cgthub.api.tables import ApiAccess
from cgthub.store import session_scope
from tests import api_server
from tests.factories import happy_path

api = api_server.api


def _start_server(db_url: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url}
    server = subprocess.Popen(
        [sys.executable, "-m", "cgthub.cli", "api", "serve", "--port", "0", "--no-webhooks"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", server.stderr.readline())
        if found:
            return server, int(found[1])
        if server.poll() is not None:
            break
    server.kill()
    raise AssertionError("the API server did not say where it listens")


def _logged(db_url: str) -> list[tuple[str | None, str, int]]:
    with session_scope(db_url) as session:
        return [(r.key_id, r.path, r.status_code) for r in session.scalars(select(ApiAccess).order_by(ApiAccess.id))]


def test_a_server_killed_right_after_answering_has_logged_every_answer(db_url):
    (order_id,) = api_server.build_orders(db_url, [happy_path(1)[:3]])
    with session_scope(db_url) as session:
        key, token = create_key(session, name="crash", scopes=("status:read",), all_data=True)
    server, port = _start_server(db_url)
    answered: list[tuple[str | None, str, int]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}

        def one(path: str, authenticated: bool = True) -> tuple[str | None, str, int]:
            with httpx.Client(base_url=base, headers=headers if authenticated else {}, timeout=30) as client:
                return (key.id if authenticated else None, path, client.get(path).status_code)

        # Concurrent callers share group commits; then a last burst, and the kill right after it.
        with ThreadPoolExecutor(max_workers=6) as pool:
            answered += pool.map(one, [f"/orders/ORD-MISSING-{n:03d}" for n in range(36)])
            answered.append(one(f"/orders/{order_id}"))
            answered.append(one("/orders", authenticated=False))
            answered += pool.map(one, [f"/orders/ORD-LAST-{n:03d}" for n in range(6)])
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=20)
        server.stderr.close()
    assert server.returncode == -signal.SIGKILL
    assert (key.id, f"/orders/{order_id}", 200) in answered and (None, "/orders", 401) in answered

    at_kill = len(_logged(db_url))
    restarted, _ = _start_server(db_url)  # replays the journal the killed process left
    try:
        deadline = time.monotonic() + 30
        while len(_logged(db_url)) < len(answered) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        restarted.terminate()
        restarted.wait(timeout=20)
        restarted.stderr.close()
    print(f"answered {len(answered)}, in the table at the kill {at_kill}, after the restart {len(_logged(db_url))}")
    assert sorted(_logged(db_url), key=str) == sorted(answered, key=str)  # each answer once, none missing


def test_rows_the_database_refuses_wait_in_the_journal(api, monkeypatch):
    (order_id,) = api_server.build_orders(api.database_url, [happy_path(1)[:3]])
    client = api.client(api.key("status:read"))
    writer = api.app.state.audit
    insert = writer._insert

    def refused(rows):
        raise OSError("database unreachable")

    monkeypatch.setattr(writer, "_insert", refused)
    assert client.get(f"/orders/{order_id}").status_code == 200
    time.sleep(0.2)  # a few drain rounds fail
    assert writer.pending() > 0 and _logged(api.database_url) == []
    monkeypatch.setattr(writer, "_insert", insert)
    deadline = time.monotonic() + 10
    while writer.pending() and time.monotonic() < deadline:
        time.sleep(0.05)  # the writer drains by itself
    assert [(path, status) for _, path, status in _logged(api.database_url)] == [(f"/orders/{order_id}", 200)]


def test_a_request_whose_row_cannot_be_journaled_is_answered_503(api, monkeypatch):
    (order_id,) = api_server.build_orders(api.database_url, [happy_path(1)[:3]])
    client = api.client(api.key("status:read"))
    writer = api.app.state.audit

    def disk_full(access):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "record", disk_full)
    answer = client.get(f"/orders/{order_id}")
    assert answer.status_code == 503
    assert answer.json() == {
        "error": {
            "code": "audit_unavailable",
            "message": "the access log cannot be written just now, so nothing is answered; retry shortly",
            "details": [],
        }
    }
