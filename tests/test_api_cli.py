"""`cgthub api keys create|list|revoke` and `cgthub api serve`, as an operator runs them."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time

import httpx

from cgthub.api.tables import ApiKey
from cgthub.store import session_scope
from tests import api_server
from tests.factories import happy_path


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", "api", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_keys_are_shown_once_stored_hashed_listed_and_revoked(db_url):
    created = _cli(
        "keys", "create", "--name", "US site 1 dashboard", "--scope", "status:read", "--site", "US-SITE-1", url=db_url
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"cgt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token)
    key_id, secret = token.split("_", 2)[1:]
    with session_scope(db_url) as session:
        row = session.get(ApiKey, key_id)
        assert row.sites == ["US-SITE-1"] and row.scopes == ["status:read"]
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()  # README: SHA-256 of the secret

    listed = _cli("keys", "list", url=db_url)
    assert key_id in listed.stdout and "US site 1 dashboard" in listed.stdout and "US-SITE-1" in listed.stdout
    assert secret not in listed.stdout

    assert _cli("keys", "revoke", key_id, url=db_url).returncode == 0
    with session_scope(db_url) as session:
        assert session.get(ApiKey, key_id).revoked_at is not None
    missing = _cli("keys", "revoke", "nope", url=db_url)
    assert missing.returncode == 1 and "no API key nope" in missing.stderr


def test_key_requests_that_make_no_sense_are_refused(db_url):
    no_data_scope = _cli("keys", "create", "--name", "x", "--scope", "status:read", url=db_url)
    assert no_data_scope.returncode == 1 and "data scope" in no_data_scope.stderr
    bad_scope = _cli("keys", "create", "--name", "x", "--scope", "phi:everything", "--all-data", url=db_url)
    assert bad_scope.returncode == 1 and "unknown scope" in bad_scope.stderr


def test_serve_answers_over_http(db_url):
    api_server.build_orders(db_url, [happy_path(1)])
    token = _cli("keys", "create", "--name", "ops", "--scope", "admin", "--all-data", url=db_url).stdout.split()[-1]
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url}
    server = subprocess.Popen(
        [sys.executable, "-m", "cgthub.cli", "api", "serve", "--port", "0", "--no-webhooks"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            port = int(found[1]) if found else None
        assert port, "the server did not say where it listens"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as client:
            orders = client.get("/orders").json()["orders"]
            assert [o["status"] for o in orders] == ["infused"]
            assert client.get(f"/orders/{orders[0]['id']}/custody").status_code == 200
            assert client.get("/orders/ORD-NOT-THERE").status_code == 404
    finally:
        server.terminate()
        server.wait(timeout=20)
    key_id = token.split("_")[1]
    deadline = time.monotonic() + 10
    while "ORD-NOT-THERE" not in (log := _cli("access-log", "--key", key_id, url=db_url).stdout):
        assert time.monotonic() < deadline, log  # written by the server's audit thread, or at its shutdown
        time.sleep(0.2)
    assert "GET /orders/ORD-NOT-THERE" in log and "404" in log and "127.0.0.1" in log
