"""The courier's webhook receiver (python -m cgthub.services courier-webhook) faces the internet and
shares the API's guarded protocol: a client that asks and never reads its answers is cut off once
their unsent bytes have not shrunk for CGTHUB_API_WRITE_TIMEOUT, as README's Configuration table says."""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from tests.test_courier_booking import _free_port, _start_service, _wait_ready

SMALL_BUFFER = 16 * 1024
ASKED = 20_000  # schema requests (658 bytes each) pipelined: megabytes of answers, far past the socket buffers


def _pipelined_and_unread(port: int, pause: float) -> int:
    """Ask for the receiver's schema `ASKED` times on one connection, read nothing for `pause`
    seconds, then read what comes: the number of answers that arrived."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.connect(("127.0.0.1", port))
    received = b""
    with sock:
        sock.settimeout(pause)
        with contextlib.suppress(TimeoutError):  # the receiver stops reading once its answers back up
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: hub\r\n\r\n" * ASKED)
        time.sleep(pause)
        sock.settimeout(3)
        try:
            while block := sock.recv(1 << 20):
                received += block
        except (ConnectionResetError, TimeoutError):
            pass
    return received.count(b"HTTP/1.1 200 ")


def test_the_courier_webhook_receiver_cuts_off_a_client_that_never_reads(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CGTHUB_API_WRITE_TIMEOUT", "1")
    port = _free_port()
    service = _start_service(db_url, port)
    try:
        _wait_ready(service, port)
        answers = _pipelined_and_unread(port, pause=4)  # the deadline, and time to spare on a loaded machine
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
