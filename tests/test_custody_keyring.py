"""The custody signing keyring lives in the hub's database, and the signing key is checked at start.

Replicas are real `cgthub api serve` processes over one database, each with its own var/ directory
and its own CGTHUB_CUSTODY_SIGNING_KEY (a rolling rotation): what one signed with, the others
publish, and a replica restarted with var/ wiped still lists the key it retired.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from typer.testing import CliRunner

from cgthub import cli, custody_signing, settings
from cgthub.api import create_app
from cgthub.settings import InvalidSetting
from cgthub.store import insert_ignoring_conflicts, session_scope
from cgthub.tables import CustodySigningKey
from tests import api_server
from tests.test_api_custody import _order_with_cold_chain

api = api_server.api
ROOT = Path(__file__).resolve().parent.parent
VARIABLE = "CGTHUB_CUSTODY_SIGNING_KEY"


def _seed() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _kid(seed: str) -> str:
    private = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(seed))
    return custody_signing.key_id(private.public_key())


@contextmanager
def _replica(database_url: str, var: Path, seed: str) -> Iterator[str]:
    """`cgthub api serve` on its own var/ and key, over the shared database; yields its base URL."""
    env = os.environ | {"CGTHUB_DATABASE_URL": database_url, "CGTHUB_VAR_DIR": str(var), VARIABLE: seed}
    server = subprocess.Popen(
        [sys.executable, "-m", "cgthub.cli", "api", "serve", "--port", "0", "--no-webhooks"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stderr is not None
        found = None
        deadline = time.monotonic() + 60
        while found is None and time.monotonic() < deadline and server.poll() is None:
            found = re.search(r"http://127\.0\.0\.1:(\d+)", server.stderr.readline())
        assert found, "the replica did not say where it listens"
        base_url = f"http://127.0.0.1:{found[1]}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _listed(base_url: str, token: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{base_url}/custody/keys", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {k["key_id"]: k for k in answer.json()["keys"]}


def _export(base_url: str, token: str, order_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{base_url}/orders/{order_id}/custody", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _token(database_url: str) -> str:
    from cgthub.api.auth import create_key

    with session_scope(database_url) as session:
        _, token = create_key(session, name="test", scopes=("custody:read",), all_data=True)
    return token


def _verifies(document: dict[str, Any], pem: str, folder: Path) -> Any:
    (folder / "custody.json").write_text(json.dumps(document))
    (folder / "pinned.pem").write_text(pem)
    return CliRunner().invoke(
        cli.app, ["api", "verify-custody", str(folder / "custody.json"), "--public-key", str(folder / "pinned.pem")]
    )


def test_a_key_one_replica_signed_with_is_published_by_another_and_survives_a_wiped_var(db_url, tmp_path):
    """Replica A signs an export with the old key; replica B, already on the new key and with a var/
    of its own, lists the old key as retired (before: B's file keyring had only its own). Then A
    restarts on the new key with its var/ wiped: the old key is still listed, retired, with the
    moment it first signed, and the document it signed verifies under it."""
    (order_id,) = api_server.build_orders(db_url, [_order_with_cold_chain(31)])
    token = _token(db_url)
    old, new = _seed(), _seed()
    var_a, var_b = tmp_path / "var-a", tmp_path / "var-b"
    with _replica(db_url, var_a, old) as replica_a:
        document = _export(replica_a, token, order_id)
        first_seen = _listed(replica_a, token)[_kid(old)]
    assert document["cgthub:signature"]["keyId"] == _kid(old) == first_seen["key_id"]
    assert first_seen["status"] == "current"
    with _replica(db_url, var_b, new) as replica_b:
        from_b = _listed(replica_b, token)
        assert from_b[_kid(old)]["status"] == "retired" and from_b[_kid(new)]["status"] == "current"
        assert next(iter(from_b)) == _kid(new)  # the current key first
    shutil.rmtree(var_a)  # a container whose var/ is not a volume, restarted
    with _replica(db_url, var_a, new) as restarted:
        after = _listed(restarted, token)
    assert after[_kid(old)] == first_seen | {"status": "retired"}
    assert not list(var_a.glob("custody-keys*"))  # nothing kept on the host
    checked = _verifies(document, after[_kid(old)]["public_key_pem"], tmp_path)
    assert checked.exit_code == 0, checked.output
    with session_scope(db_url, readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(CustodySigningKey)) == 2


def test_replicas_recording_one_key_at_once_do_not_fail_each_other(db_url):
    """INSERT ... ON CONFLICT DO NOTHING: eight writers, each with its own session, one row."""
    private = Ed25519PrivateKey.generate()
    kid, pem = custody_signing.key_id(private.public_key()), custody_signing.public_pem(private.public_key())
    start, failures = threading.Barrier(8), []

    def record() -> None:
        start.wait()
        try:
            with session_scope(db_url) as session:
                session.execute(
                    insert_ignoring_conflicts(session, CustodySigningKey),
                    [{"key_id": kid, "public_key_pem": pem, "first_used": datetime.now(UTC)}],
                )
        except Exception as exc:  # any failure is the finding
            failures.append(exc)

    threads = [threading.Thread(target=record) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with session_scope(db_url, readonly=True) as session:
        assert session.scalars(select(CustodySigningKey.key_id)).all() == [kid]


def test_the_keyring_file_of_an_earlier_version_is_imported_once(db_url, tmp_path, monkeypatch):
    """An upgraded host's var/custody-keys.jsonl: its keys are published with their first use, the
    file is renamed custody-keys.jsonl.imported; a line whose PEM is not the key its id names, or cut
    short, is left out."""
    var = tmp_path / "var"
    var.mkdir()
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(var))
    monkeypatch.setenv(VARIABLE, _seed())
    settings.get_settings.cache_clear()
    retired, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    retired_id = custody_signing.key_id(retired.public_key())
    last_month = (datetime.now(UTC) - timedelta(days=30)).replace(microsecond=0)
    lines = [
        {"keyId": retired_id, "publicKeyPem": custody_signing.public_pem(retired.public_key())},
        {"keyId": "ed25519:0000000000000000", "publicKeyPem": custody_signing.public_pem(stranger.public_key())},
    ]
    good, wrong_id = (json.dumps(line | {"firstUsed": last_month.isoformat()}) + "\n" for line in lines)
    legacy = var / "custody-keys.jsonl"
    content = good + wrong_id + good[:40] + "\n" + good  # cut short by a crash; repeated by racing writers
    legacy.write_text(content)

    listed = {k.key_id: k for k in custody_signing.published_keys(db_url)}

    assert set(listed) == {retired_id, _kid(os.environ[VARIABLE])}
    assert listed[retired_id].status == "retired"
    assert datetime.fromisoformat(listed[retired_id].first_used) == last_month
    assert not legacy.exists() and (var / "custody-keys.jsonl.imported").read_text() == content
    monkeypatch.setattr(custody_signing, "_imported", set())  # another process: nothing left to import
    assert custody_signing.import_legacy_keyring(db_url) == 0


def test_a_malformed_signing_key_stops_the_api_at_start_naming_the_variable(db_url, monkeypatch, tmp_path):
    value = "not-a-key-" + "s3cr3t" * 4
    monkeypatch.setenv(VARIABLE, value)
    settings.get_settings.cache_clear()
    with pytest.raises(InvalidSetting) as refused:
        create_app(db_url)
    assert f"{VARIABLE} is not valid" in str(refused.value) and value not in str(refused.value)
    for workers in ("1", "2"):
        started = subprocess.run(
            [sys.executable, "-m", "cgthub.cli", "api", "serve", "--port", "0", "--workers", workers],
            env=os.environ | {"CGTHUB_DATABASE_URL": db_url, "CGTHUB_VAR_DIR": str(tmp_path)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 1, started.stderr
        said = " ".join(started.stderr.split())
        assert f"{VARIABLE} is not valid: must be 32 bytes" in said
        assert value not in started.stderr + started.stdout and "serving the API" not in said


def test_health_ready_shows_the_signing_key_id_and_a_missing_key_outside_dev(api, monkeypatch):
    seed = _seed()
    monkeypatch.setenv(VARIABLE, seed)
    settings.get_settings.cache_clear()
    ready = httpx.get(f"{api.base_url}/health/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["custody_signing"] == {"status": "ok", "key_id": _kid(seed)}
    assert seed not in ready.text and "PRIVATE" not in ready.text
    keys = {v: _seed() for v in ("CGTHUB_PSEUDONYM_KEY", "CGTHUB_ARCHIVE_KEY", "CGTHUB_LEDGER_KEY")}
    for variable, value in keys.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("CGTHUB_ENV", "production")
    monkeypatch.delenv(VARIABLE)
    settings.get_settings.cache_clear()
    create_app(api.database_url)  # a missing key does not stop the start: exports wait for it
    missing = httpx.get(f"{api.base_url}/health/ready", timeout=30)
    assert missing.status_code == 200  # still ready: orders are served without signing
    state = missing.json()
    assert state["custody_signing"]["status"] == "missing" and VARIABLE in state["custody_signing"]["problem"]
    assert state["status"] == "degraded"
