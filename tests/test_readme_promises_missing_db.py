"""README, Configuration: `CGTHUB_DATABASE_URL` "a missing one is named, not created, by every command
but `cgthub db upgrade`". Each command an operator or a container runs against the hub's database,
pointed at an SQLite file that does not exist: exit non-zero naming it and the fix, no file made
(a typo in the URL must not start an empty hub that ACKs into nowhere). test_cli checks `orders
list`; this runs a command that writes a file beside the database, one that maps, and the
long-running services (the others open the database through cgthub.store alike). SQLite only: a
PostgreSQL database is never created by a client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [
    ("cgthub.cli", "ledger", "checkpoint"),
    ("cgthub.cli", "sites", "replay"),
    ("cgthub.cli", "hl7", "listen", "--port", "0", "--archive-only"),
    ("cgthub.cli", "api", "serve", "--port", "0"),
    ("cgthub.services", "courier-webhook", "--port", "0"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[1:3]) + (" ..." if len(c) > 3 else "") for c in COMMANDS])
def test_a_missing_database_is_named_and_not_created(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "typo" / "hub.db"
    missing.parent.mkdir()
    env = {
        **os.environ,
        "CGTHUB_DATABASE_URL": f"sqlite:///{missing}",
        "CGTHUB_VAR_DIR": str(tmp_path / "var"),
        "CGTHUB_COURIER_WEBHOOK_SECRET": "a-secret",
    }
    run = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode != 0, run.stdout
    assert str(missing) in run.stderr and "does not exist" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert list(missing.parent.iterdir()) == []  # not created, nor its -wal or -shm
