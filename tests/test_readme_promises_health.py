"""README, Monitoring: "`/health/ready` on the API, the listener's metrics port and the services of
`python -m cgthub.services`: 503 while the hub's database does not answer". test_metrics holds the
API's; here the other three, each started as its container starts it (`cgthub hl7 listen
--metrics-port`, `python -m cgthub.services webhook-delivery` and `courier-webhook`), reach
PostgreSQL through a TCP relay on loopback that the test then cuts: each answers 200, then 503 naming
the database `unreachable`, and 200 again once the relay is back, without a restart. PostgreSQL only:
an SQLite file has no server to stop answering."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.test_metrics import ListenerProcess, _free_port

pytestmark = pytest.mark.slow


class Relay:
    """A TCP relay on loopback to PostgreSQL that can be cut (every connection closed, none accepted)
    and restored on the same port: a database host that stops answering and comes back."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = _free_port()
        self._open: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._open += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        assert self._server is not None
        self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(): close alone leaves it listening
        self._server.close()
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._open.clear()


@pytest.fixture
def relayed(db_url: str) -> Iterator[tuple[str, Relay]]:
    if not db_url.startswith("postgresql"):
        pytest.skip("an SQLite file has no server to stop answering")
    parts = urlsplit(db_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{relay.port}")
    yield urlunsplit(parts._replace(netloc=netloc)), relay
    relay.cut()


def _ready(url: str) -> tuple[int, dict]:
    answer = httpx.get(url, timeout=10)
    return answer.status_code, answer.json()


def _until(url: str, status: int) -> tuple[int, dict]:
    deadline, seen = time.monotonic() + 20, (0, {})
    while time.monotonic() < deadline:
        try:
            seen = _ready(url)
        except httpx.TransportError:
            seen = (0, {})
        if seen[0] == status:
            return seen
        time.sleep(0.2)
    return seen


def _service(url: str, *argv: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url, "CGTHUB_COURIER_WEBHOOK_SECRET": "whsec-test"}
    return subprocess.Popen(
        [sys.executable, "-m", "cgthub.services", *argv, str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _holds_503_while_the_database_is_away(ready_url: str, relay: Relay) -> None:
    status, state = _until(ready_url, 200)
    assert status == 200 and state["database"]["status"] == "ok", state
    relay.cut()
    status, state = _until(ready_url, 503)
    assert status == 503 and state["database"]["status"] == "unreachable", state
    assert str(relay.port) not in str(state)  # no connection string in the answer
    relay.restore()
    status, state = _until(ready_url, 200)
    assert status == 200 and state["database"]["status"] == "ok", state


@pytest.mark.parametrize(
    "service",
    [("webhook-delivery", "--health-host", "127.0.0.1", "--health-port"), ("courier-webhook", "--port")],
    ids=["webhook-delivery", "courier-webhook"],
)
def test_a_service_answers_503_while_the_database_does_not_answer(relayed, service):
    url, relay = relayed
    port = _free_port()
    process = _service(url, *service, port=port)
    try:
        _holds_503_while_the_database_is_away(f"http://127.0.0.1:{port}/health/ready", relay)
        assert process.poll() is None  # it stayed up, to serve again
    finally:
        process.terminate()
        process.wait(30)
        process.stderr.close()


def test_the_listeners_metrics_port_answers_503_while_the_database_does_not_answer(relayed):
    url, relay = relayed
    listener = ListenerProcess(url)
    try:
        _holds_503_while_the_database_is_away(listener.url("/health/ready"), relay)
        assert listener.process.poll() is None
    finally:
        listener.stop()
