"""`cgthub hl7 listen` runs its event loop on uvloop unless CGTHUB_LISTENER_EVENT_LOOP=asyncio, and
says which loop it runs on: in its start-up line and in /health (the loop's own class, not the
setting). Driven as deployed: the CLI in a process of its own, a message sent over MLLP and
acknowledged AA on each loop, SIGTERM finishing it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cgthub import store
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from tests.test_hl7_listener import ORM, exchange

LOOPS = {None: "uvloop", "uvloop": "uvloop", "asyncio": "asyncio"}  # the setting, the loop that runs


def _environment(db_url: str, loop: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "CGTHUB_LISTENER_EVENT_LOOP"}
    env["CGTHUB_DATABASE_URL"] = db_url
    if loop is not None:
        env["CGTHUB_LISTENER_EVENT_LOOP"] = loop
    return env


@pytest.mark.parametrize("setting", list(LOOPS), ids=lambda setting: f"setting-{setting or 'unset'}")
def test_the_listener_says_which_event_loop_it_runs_on(setting: str | None, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"  # the loop is the listener's, whatever the store
    store.upgrade(db_url)
    command = [
        *(sys.executable, "-m", "cgthub.cli", "hl7", "listen"),
        *("--port", "0", "--archive-only", "--metrics-port", "0"),
    ]
    listening = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(db_url, setting)
    )
    try:
        assert listening.stdout is not None
        started = listening.stdout.readline()
        found = re.search(r"listening for MLLP on [\d.]+:(\d+) \(archive only\), event loop (\w+)", started)
        assert found is not None, started
        metrics = re.search(r"http://[\d.]+:(\d+)/metrics", listening.stdout.readline())
        assert metrics is not None
        health = httpx.get(f"http://127.0.0.1:{metrics.group(1)}/health", timeout=10).json()
        (ack,) = exchange(int(found.group(1)), frame(ORM), 1)  # the loop serves the hospital
        listening.send_signal(signal.SIGTERM)
        _out, err = listening.communicate(timeout=60)
    finally:
        if listening.poll() is None:
            listening.kill()
    assert found.group(2) == LOOPS[setting] and health["event_loop"] == LOOPS[setting]
    assert ack_code(ack) == "AA" and listening.returncode == 0, err


def test_an_unknown_event_loop_is_refused_by_name_before_listening(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    command = [sys.executable, "-m", "cgthub.cli", "hl7", "listen", "--port", "0", "--archive-only"]
    done = subprocess.run(command, env=_environment(db_url, "tokio"), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "listening for MLLP" not in done.stdout
    assert "CGTHUB_LISTENER_EVENT_LOOP is not valid" in done.stdout + done.stderr, done.stdout + done.stderr
