"""README, "Trying it" and "What a sender is told", what compose and `make up` run:

- compose: "two workers", "a StatsD exporter, the MLLP listener (:2575, metrics :9100), the webhook
  delivery loop and the courier's webhook receiver (:8710)", `airflow-init` creating the first admin
  from AIRFLOW_ADMIN_USERNAME (default `admin`), read from docker-compose.yml (test_compose checks
  that the file refers to real things, not these figures);
- "Under `--archive-only` (what `make up` and compose run) a message that can be read and has a
  mapping is answered AA once archived": the listener both start (`python -m cgthub.services
  mllp-listener`, from compose's command and cgthub.up) run as a process on a free port, on SQLite
  and PostgreSQL, answers AA to a hospital order whose order is unknown (a listener that applies
  answers AE 204) and leaves it archived, not applied; a type no mapping handles is still AR.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import select

from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, RawMessage
from tests.test_hl7_listener import ORM, exchange

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_runs_two_workers_and_the_hubs_services_on_the_readme_ports() -> None:
    assert SERVICES["airflow-worker"]["command"] == ["airflow", "celery", "worker"]
    assert SERVICES["airflow-worker"]["deploy"]["replicas"] == 2
    assert "statsd-exporter" in SERVICES
    listener = SERVICES["mllp-listener"]
    assert listener["command"][:4] == ["python", "-m", "cgthub.services", "mllp-listener"]
    assert {"2575:2575", "9100:9100"} <= set(listener["ports"])
    assert listener["command"][listener["command"].index("--metrics-port") + 1] == "9100"
    assert SERVICES["webhook-delivery"]["command"][:4] == ["python", "-m", "cgthub.services", "webhook-delivery"]
    courier = SERVICES["courier-webhook"]
    assert (
        courier["command"][:4] == ["python", "-m", "cgthub.services", "courier-webhook"]
        and "8710:8710" in courier["ports"]
    )
    init = SERVICES["airflow-init"]
    assert "airflow users create --role Admin" in " ".join(init["command"])
    assert init["environment"]["AIRFLOW_ADMIN_USERNAME"] == "${AIRFLOW_ADMIN_USERNAME:-admin}"


def test_make_up_starts_the_same_listener_command() -> None:
    source = (PROJECT_ROOT / "cgthub" / "up.py").read_text()
    assert '[sys.executable, "-m", "cgthub.services", "mllp-listener", "--port", str(listener_port)]' in source


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_deployed_listener_archives_and_answers_aa_and_applies_nothing(db_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url}
    log = (tmp_path / "listener.log").open("wb")
    listener = subprocess.Popen(
        [sys.executable, "-m", "cgthub.services", "mllp-listener", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert listener.poll() is None, (tmp_path / "listener.log").read_text()
                assert time.monotonic() < deadline, "the listener did not start"
                time.sleep(0.2)
        (ack,) = exchange(port, frame(ORM), 1, timeout=30)
        unhandled = b"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303||MFN^M02|BOS9|P|2.5.1\rMFE|MAD|X\r"
        (refused,) = exchange(port, frame(unhandled), 1, timeout=30)
    finally:
        listener.terminate()
        listener.wait(30)
        log.close()
    assert ack_code(ack) == "AA", ack
    assert ack_code(refused) == "AR"
    with session_scope(db_url) as s:
        assert list(s.scalars(select(RawMessage.status).where(RawMessage.kind == "ORM^O01"))) == ["received"]
        assert s.scalar(select(LedgerEntry.id)) is None


def _settings_in_a_fresh_process(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")} | env
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cgthub.settings import get_settings as g; s = g(); print(s.var_dir); print(s.database_url)",
        ],
        env=clean,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split()


def test_the_hubs_data_is_var_by_default_and_var_demo_under_cgthub_var_dir() -> None:
    """ "The hub's own data is the default `var/` (`var/cgthub.db`)"; `make demo`'s "data stays in
    `var/demo/` ...; point any command at it with `CGTHUB_VAR_DIR`"."""
    assert _settings_in_a_fresh_process() == [
        str(PROJECT_ROOT / "var"),
        f"sqlite:///{PROJECT_ROOT / 'var' / 'cgthub.db'}",
    ]
    # README's commands run from the project's root: the relative folder is the root's var/demo
    assert _settings_in_a_fresh_process(CGTHUB_VAR_DIR="var/demo") == ["var/demo", "sqlite:///var/demo/cgthub.db"]
