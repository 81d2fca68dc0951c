"""`make up`'s start and stop, as `make up` runs them: `python -m cgthub.up` (here `--no-feed`).

On its own Airflow home, hub data and free ports, the command must: keep the hub's DAGs paused while
Airflow runs and its API server does not yet answer healthy (a task started then finds no Execution
API and fails with a traceback), unpause them once it does, print no traceback on the way, and on
SIGTERM (what `kill` and compose send) stop every process it started, Airflow standalone's
components included.

Airflow's metadata (SQLite, WAL) is read read-only while it starts; the API server's health is asked
over HTTP. Every process the command starts inherits a marker in its environment, so the test finds
them all in /proc, whatever session or parent they end up with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cgthub import partners
from cgthub.settings import PROJECT_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes in /proc (Linux)"),
]

MARKER = "CGTHUB_UP_TEST_RUN"
START_TIMEOUT = 600  # a heavily loaded machine; about a minute on a quiet one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _marked(run: str) -> list[int]:
    """The processes whose environment carries this run's marker."""
    needle = f"{MARKER}={run}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


def _process_states(pids: list[int]) -> dict[int, str]:
    """pid -> state letter, for those still in the process table (a zombie is `Z`)."""
    states = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        states[pid] = stat.rsplit(")", 1)[1].split()[0]
    return states


def _hub_dags_unpaused(metadata: Path) -> int | None:
    """How many hub DAGs Airflow's metadata has unpaused (None: no DAG table yet)."""
    if not metadata.exists():
        return None
    db = sqlite3.connect(f"file:{metadata}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(r"select is_paused from dag where dag_id like 'cgthub\_%' escape '\'").fetchall()
    except sqlite3.Error:  # not migrated yet, or a write in progress
        return None
    finally:
        db.close()
    return sum(1 for (paused,) in rows if not paused) if rows else None


def _airflow_environ(pid: int) -> dict[str, str] | None:
    """The environment an Airflow process (its command line names airflow) was started with."""
    try:
        if b"airflow" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile
        return None
    return dict(pair.decode(errors="replace").partition("=")[::2] for pair in pairs if pair)


def _read(output: Path) -> str:
    return output.read_text(errors="replace")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def up_command(tmp_path: Path, run: str, api_port: int) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """`python -m cgthub.up --no-feed` on free ports (API server, listener, sandboxes, log servers), its
    own Airflow home and hub data under `tmp_path`, every process it starts marked with `run`:
    the command, its environment and the sandboxes' ports."""
    listener_port = _free_port()
    sandbox_ports = {name: _free_port() for name in partners.sandboxes()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CGTHUB_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__API__PORT": str(api_port),
            # The scheduler's and triggerer's log servers: off 8793/8794, which another Airflow may hold.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "CGTHUB_VAR_DIR": str(tmp_path / "var"),
            MARKER: run,
        }
    )
    command = [sys.executable, "-m", "cgthub.up", "--no-feed", "--listener-port", str(listener_port)]
    for name, port in sandbox_ports.items():
        command += ["--sandbox-port", f"{name}={port}"]
    return command, env, sandbox_ports


def test_make_up_unpauses_only_a_healthy_airflow_starts_quietly_and_stops_everything_on_sigterm(tmp_path):
    run = uuid.uuid4().hex
    api_port = _free_port()
    command, env, sandbox_ports = up_command(tmp_path, run, api_port)
    # README, "Logging in under `make up`": admin's password is generated on the first start, printed in
    # the standalone output (which `make up` relays) and kept in $AIRFLOW_HOME's generated file; more
    # users named in AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS each get one in the same file, printed
    # alike. Held on this start of `make up` (a start of its own took a worker about a minute).
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "admin:admin,olga:op"
    output = tmp_path / "up.log"
    metadata = tmp_path / "airflow" / "airflow.db"
    health = f"http://127.0.0.1:{api_port}/api/v2/monitor/health"

    started = time.monotonic()
    with output.open("wb") as sink:
        up = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    seen: set[int] = set()
    try:
        last_unhealthy = 0.0  # when a health poll last began that the API server did not answer 200
        first_unpaused = first_healthy = None
        while first_unpaused is None or first_healthy is None or "DAGs are unpaused" not in _read(output):
            assert up.poll() is None, _read(output)[-5000:]
            assert time.monotonic() - started < START_TIMEOUT, _read(output)[-5000:]
            seen.update(_marked(run))
            if first_unpaused is None and _hub_dags_unpaused(metadata):
                first_unpaused = time.monotonic()
            if first_healthy is None:
                asked = time.monotonic()
                if _healthy(health):
                    first_healthy = asked
                else:
                    last_unhealthy = asked
            time.sleep(0.2)
        came_up = time.monotonic() - started
        # No hub DAG was unpaused before a health poll the API server did not answer healthy.
        assert last_unhealthy < first_unpaused, (last_unhealthy - started, first_unpaused - started)
        all_unpaused = _hub_dags_unpaused(metadata)
        assert all_unpaused is not None and all_unpaused >= 5  # the ingest, HL7, outbound, monitoring DAGs
        seen.update(_marked(run))
        # README's make up: Airflow runs with the LocalExecutor, a small pool, its metadata in AIRFLOW_HOME.
        airflow_envs = [found for pid in sorted(seen) if (found := _airflow_environ(pid))]
        assert airflow_envs, "no Airflow process found"
        for airflow_env in airflow_envs:
            assert airflow_env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
            assert airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{metadata}"
            assert int(airflow_env["AIRFLOW__CORE__PARALLELISM"]) <= 8
        text = _read(output)
        assert "Traceback" not in text, text[-5000:]
        airflow_logs = [p for p in (tmp_path / "airflow" / "logs").rglob("*.log") if "Traceback" in p.read_text()]
        assert not airflow_logs, {str(p): p.read_text()[-3000:] for p in airflow_logs}

        stopping = time.monotonic()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        stopped = time.monotonic() - stopping
        deadline = time.monotonic() + 10
        while (left := {p: s for p, s in _process_states(sorted(seen)).items() if s != "Z"}) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert not left, (left, _read(output)[-3000:])
        assert not _marked(run)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in _marked(run):  # a failed run leaves nothing behind either
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = _read(output)
    assert "stopping" in text
    generated = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    passwords = json.loads(generated.read_text())
    assert sorted(passwords) == ["admin", "olga"]
    assert f"(login: {generated})" in text  # the file it wrote, under this run's AIRFLOW_HOME
    for user, password in passwords.items():
        assert f"Password for user '{user}': {password}" in text, user
    # What `make up` started: Airflow standalone with its four components, the listener, five sandboxes.
    assert len(seen) >= 1 + 1 + 4 + 1 + len(sandbox_ports), len(seen)
    print(f"up and unpaused in {came_up:.0f} s, stopped in {stopped:.1f} s, {len(seen)} processes")
