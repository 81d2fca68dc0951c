"""README, "Logging in under `make up`", as `make up` runs it (`python -m cgthub.up --no-feed`, on its
own Airflow home, hub data and free ports, stopped with SIGTERM once Airflow's API server answers):

- one user, `admin`: "Its password is generated on the first start, printed in the standalone output
  and kept in `var/airflow/simple_auth_manager_passwords.json.generated` (`$AIRFLOW_HOME/…` if you
  set `AIRFLOW_HOME`)";
- "More users: set `AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin,olga:op` before `make up`;
  each gets a generated password in the same file, printed like admin's on the start that makes
  it". README said "(not printed)" until 6 December: the API server's auth manager prints each
  password it generates, and `make up` relays standalone's output, which holds it.

The password is looked for in the output `make up` prints (standalone's, relayed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cgthub.settings import PROJECT_ROOT
from tests.test_up_quiet_start import START_TIMEOUT, _free_port, _healthy, _marked, _read, up_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes in /proc (Linux)"),
]


def _up_until_healthy(tmp_path: Path, **extra_env: str) -> tuple[str, Path]:
    """Run `make up`'s command until the API server answers, stop it, return its output and home."""
    run = uuid.uuid4().hex
    api_port = _free_port()
    command, env, _sandbox_ports = up_command(tmp_path, run, api_port)
    env |= extra_env
    home = Path(env["AIRFLOW_HOME"])
    output = tmp_path / "up.log"
    started = time.monotonic()
    with output.open("wb") as sink:
        up = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        while not (_healthy(f"http://127.0.0.1:{api_port}/api/v2/monitor/health") and "Airflow UI:" in _read(output)):
            assert up.poll() is None, _read(output)[-5000:]
            assert time.monotonic() - started < START_TIMEOUT, _read(output)[-5000:]
            time.sleep(0.5)
        time.sleep(2)  # the API server's own start has written what it writes
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in _marked(run):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return _read(output), home


def _passwords(home: Path) -> dict[str, str]:
    return json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())


def test_admin_and_more_users_each_get_a_password_in_the_same_file_printed_and_kept(tmp_path: Path) -> None:
    """One start of `make up` (about a minute) for both README sentences: admin's password is
    generated, printed and kept in AIRFLOW_HOME; each user more gets one in the same file, printed alike."""
    said, home = _up_until_healthy(tmp_path, AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,olga:op")
    passwords = _passwords(home)
    assert sorted(passwords) == ["admin", "olga"]
    assert "simple_auth_manager_passwords.json.generated" in said
    for user, password in passwords.items():
        assert f"Password for user '{user}': {password}" in said, user
