"""The sandbox world: the hospital's receiver as a service, and the feeder finding every sandbox
through the same Airflow connections the connectors read."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from cgthub.hl7 import outbound
from cgthub.settings import PROJECT_ROOT
from connectors.sandboxes import CONNECTIONS, FIXED_PORTS, SandboxPartners, connection_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_hospital_sandbox_service_acks_status_messages_and_stops_on_sigterm():
    port = _free_port()
    argv = [sys.executable, "-m", "cgthub.services", "sandbox", "hospital", "--port", str(port)]
    service = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        assert f"mllp://127.0.0.1:{port}" in service.stdout.readline()
        payload = {"order_id": "ORD-1", "status": "released", "refs": {}, "idempotency_key": "hl7:ORD-1:7"}
        sent = outbound.push(payload, address=f"mllp://127.0.0.1:{port}")
        assert sent["status"] == "released" and sent["control_id"].startswith("CGT")
    finally:
        service.terminate()
        started = time.monotonic()
        assert service.wait(timeout=10) == 0 and time.monotonic() - started < 10


def test_the_feeder_finds_the_sandboxes_through_the_connectors_connections(monkeypatch):
    ports = {partner: port + 1000 for partner, port in FIXED_PORTS.items()}
    for name, uri in connection_env(ports, host="sandbox.test").items():
        monkeypatch.setenv(name, uri)
    monkeypatch.setenv("CGTHUB_MLLP_LISTENER", "listener.test:2575")
    world = SandboxPartners.from_connections()
    assert world.urls == {
        "crm": "http://sandbox.test:9701",
        "erp": "http://sandbox.test:9702",  # the root, where /sandbox/... lives, not the SOAP path
        "courier": "http://sandbox.test:9703",
        "cmo": "http://sandbox.test:9704",
        "hospital": "mllp://sandbox.test:9705",
    }
    assert world.listener == ("listener.test", 2575)
    assert set(connection_env(ports)) == {f"AIRFLOW_CONN_{conn.upper()}" for conn, _ in CONNECTIONS.values()}
