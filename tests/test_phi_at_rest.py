"""PHI at rest: no clear-text HL7 left by file ingest, a private database file, no self-made keys
outside development, no courier webhook that takes an empty secret. Driven through the commands a
deployment runs."""

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cgthub import ledger, store
from cgthub.tables import RawMessage
from connectors.courier import signature, webhook
from connectors.hospital import simulator
from tests.factories import enrolment

KEY_VARIABLES = ("CGTHUB_PSEUDONYM_KEY", "CGTHUB_ARCHIVE_KEY", "CGTHUB_LEDGER_KEY")


def _run(*args, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_ingest_leaves_a_receipt_and_no_clear_text_hl7(db_url, tmp_path):
    with store.session_scope(db_url) as s:
        ledger.append_many(s, [enrolment(n) for n in (1, 2)])
    drop = tmp_path / "drop"
    drop.mkdir()
    feed = simulator.write_batch_file(drop / "feed.hl7", list(simulator.feed(range(1, 3))), newline=b"\r\n")
    dropped = feed.read_bytes()
    assert b"PID|" in dropped and b"MRN00000001" in dropped
    result = _run("hl7", "ingest", str(feed), env={**os.environ, "CGTHUB_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert "6 messages: 6 accepted" in result.stdout
    assert not feed.exists()
    written = [p for p in drop.rglob("*") if p.is_file()]
    assert [p.relative_to(drop).as_posix() for p in written] == ["done/feed.hl7.receipt.json"]
    for path in written:
        content = path.read_bytes()
        assert b"MSH|" not in content and b"PID|" not in content and b"MRN0000000" not in content
        assert b"Patient" not in content and b"19700101" not in content
    receipt = json.loads(written[0].read_text())
    assert receipt["sha256"] == hashlib.sha256(dropped).hexdigest() and receipt["bytes"] == len(dropped)
    assert receipt["messages"] == 6 and receipt["acks"] == {"AA": 6}
    assert _mode(written[0]) == 0o600
    with store.session_scope(db_url, readonly=True) as s:  # what was deleted is in the archive
        assert s.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.system == "hl7")) == 6


def test_a_new_sqlite_database_and_its_wal_and_shm_are_private(tmp_path):
    """`cgthub db upgrade` makes the file 0600; SQLite's -wal and -shm beside it follow its mode."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    previous = os.umask(0o022)  # the usual umask: files come out world-readable unless made private
    try:
        done = _run("db", "upgrade", env=env)
        assert done.returncode == 0, done.stderr
        assert _mode(tmp_path / "hub.db") == 0o600
        with store.session_scope(url) as s:
            ledger.append_many(s, [enrolment(1)])
            wal, shm = tmp_path / "hub.db-wal", tmp_path / "hub.db-shm"
            assert wal.exists() and shm.exists()
            assert (_mode(wal), _mode(shm)) == (0o600, 0o600)
    finally:
        os.umask(previous)
        store.dispose_engines()


@pytest.fixture
def production(tmp_path):
    """A deployment's environment with no key given and a var dir of its own."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    env.update(
        CGTHUB_ENV="production",
        CGTHUB_VAR_DIR=str(tmp_path / "var"),
        CGTHUB_DATABASE_URL=f"sqlite:///{tmp_path / 'hub.db'}",
    )
    return env


@pytest.mark.parametrize(
    "argv",
    [["db", "upgrade"], ["hl7", "listen", "--port", "0", "--archive-only"], ["hl7", "ingest", "FILE"]],
    ids=["db-upgrade", "listen", "ingest"],
)
def test_outside_dev_missing_keys_stop_the_hub_at_startup(production, tmp_path, argv):
    drop = tmp_path / "feed.hl7"
    simulator.write_batch_file(drop, list(simulator.feed(range(1, 2))))
    argv = [str(drop) if a == "FILE" else a for a in argv]
    result = _run(*argv, env=production, timeout=60)  # the listener must not start: no timeout
    assert result.returncode == 1
    assert all(variable in result.stderr for variable in KEY_VARIABLES), result.stderr
    assert "Traceback" not in result.stderr
    var = tmp_path / "var"
    assert not var.exists() or not list(var.glob("*.key"))  # no key made behind the operator's back
    assert drop.exists()  # nothing read, nothing moved


def test_outside_dev_given_keys_are_used_and_no_key_file_is_made(production, tmp_path):
    keys = {v: base64.urlsafe_b64encode(bytes([n]) * 32).decode() for n, v in enumerate(KEY_VARIABLES, 1)}
    env = {**production, **keys}
    assert _run("db", "upgrade", env=env).returncode == 0
    drop = simulator.write_batch_file(tmp_path / "feed.hl7", list(simulator.feed(range(1, 2))))
    result = _run("hl7", "ingest", str(drop), env=env)
    assert "1 file," in result.stdout, result.stderr
    assert not list((tmp_path / "var").glob("*.key"))
    verified = _run("ledger", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_courier_webhook_refuses_an_empty_secret(db_url):
    for empty in ("", "   "):
        with pytest.raises(signature.EmptySecret):
            webhook.create_app(secret=empty, database_url=db_url)
    body = b'{"tracking_number": "1Z999", "status": "delivered"}'
    under_empty_key = "sha256=" + hmac.new(b"", body, hashlib.sha256).hexdigest()
    assert not signature.verify("", body, under_empty_key)  # anyone can compute this one
    with pytest.raises(signature.EmptySecret):
        signature.sign("", body)
    client = TestClient(webhook.create_app(secret="whsec-live", database_url=db_url))
    refused = client.post("/webhooks/courier", content=body, headers={signature.HEADER: under_empty_key})
    assert refused.status_code == 401
    with store.session_scope(db_url, readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(RawMessage)) == 0
