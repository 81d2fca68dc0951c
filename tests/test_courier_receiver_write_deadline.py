"""The courier's webhook receiver (python -m cgthub.services courier-webhook) faces the internet and
shares the API's guarded protocol: a client that asks and never reads its answers is cut off once
their unsent bytes have not shrunk for CGTHUB_API_WRITE_TIMEOUT, as README's Configuration table says."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.test_courier_booking import _free_port, _start_service, _wait_ready

SMALL_BUFFER = 16 * 1024
ASKED = 20_000  # schema requests (658-byte answers): megabytes, far past what the socket buffers hold


def _cpu_ticks(pid: int) -> int:
    """The process's user and system time so far, in clock ticks (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _until_idle(pid: int, *, quiet: float = 2.0, at_most: float = 60.0) -> None:
    """Wait until the process has spent no CPU for `quiet` seconds: a receiver whose unread answers
    have filled the socket buffers stops working (however slowly a loaded machine let it get there)."""
    give_up = time.monotonic() + at_most
    ticks, since = _cpu_ticks(pid), time.monotonic()
    while time.monotonic() < give_up:
        time.sleep(0.25)
        now = _cpu_ticks(pid)
        if now != ticks:
            ticks, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("the receiver never went idle")


def _pipelined_and_unread(port: int, pid: int) -> int:
    """Pipeline `ASKED` schema requests on one connection, read nothing until the receiver has been idle
    past the deadline, then read what comes: the number of answers that arrived."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.connect(("127.0.0.1", port))
    received = b""
    with sock:
        sock.settimeout(5)
        with contextlib.suppress(TimeoutError, ConnectionResetError, BrokenPipeError):
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: hub\r\n\r\n" * ASKED)
        _until_idle(pid)  # its answers backed up, and (deadline 1 s) it has had time to cut the connection
        sock.settimeout(3)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while block := sock.recv(1 << 20):
                received += block
    return received.count(b"HTTP/1.1 200 ")


def test_the_courier_webhook_receiver_cuts_off_a_client_that_never_reads(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGTHUB_API_WRITE_TIMEOUT", "1")
    port = _free_port()
    service = _start_service(db_url, port)
    try:
        _wait_ready(service, port)
        answers = _pipelined_and_unread(port, service.pid)
    finally:
        service.terminate()
        service.wait(timeout=20)
    assert 0 < answers < ASKED, answers  # what the kernel had taken before the cut, not the rest


def test_the_courier_webhook_receiver_answers_health_and_its_schema_but_no_docs_page(db_url: str) -> None:
    """Its /health/ready route once made the schema answer 500 with a traceback (an unresolvable return
    annotation), and /health, which its docstring promised, was 404; /docs would load Swagger from a
    CDN on a host that faces a courier, not people."""
    port = _free_port()
    service = _start_service(db_url, port)
    try:
        _wait_ready(service, port)
        base = f"http://127.0.0.1:{port}"
        alive = httpx.get(f"{base}/health", timeout=5)
        schema = httpx.get(f"{base}/openapi.json", timeout=5)
        docs = httpx.get(f"{base}/docs", timeout=5)
    finally:
        service.terminate()
        service.wait(timeout=20)
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    assert schema.status_code == 200
    assert {"/webhooks/courier", "/health", "/health/ready"} <= set(schema.json()["paths"])
    assert docs.status_code == 404
