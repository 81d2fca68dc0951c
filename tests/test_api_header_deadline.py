"""A client that never finishes its request head (slowloris) is answered 408 and disconnected at the
deadline, over real sockets, while other clients are served: uvicorn alone kept such a connection,
and its file descriptor, for as long as the client kept dribbling (cgthub.api.http_protocol)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from cgthub.api import create_app
from cgthub.api.http_protocol import GuardedH11, GuardedHttpProtocol
from tests.test_api_access_log import _start_server
from tests.test_courier_booking import _free_port, _start_service, _wait_ready

DEADLINE = 1.0
PARSERS = {GuardedH11, GuardedHttpProtocol}  # h11, and httptools where installed (uvicorn's auto)


def _short(protocol: type) -> type:
    return type(f"Short{protocol.__name__}", (protocol,), {"head_timeout": DEADLINE})


@pytest.fixture(params=sorted(PARSERS, key=lambda p: p.__name__), ids=lambda p: p.__name__)
def port(request: pytest.FixtureRequest, db_url: str) -> Iterator[int]:
    """The hub's API under uvicorn with the deadline protocol (1 s) on a loopback port."""
    with serving(db_url, _short(request.param)) as server:
        yield server.servers[0].sockets[0].getsockname()[1]


@contextmanager
def serving(db_url: str, protocol: type) -> Iterator[uvicorn.Server]:
    """The hub's API under uvicorn with `protocol`, in a thread, on a loopback port."""
    app = create_app(db_url, audit_interval=0.05)
    try:
        with serving_app(app, protocol) as server:
            yield server
    finally:
        app.state.audit.close()


@contextmanager
def serving_app(app: Callable[..., Any], protocol: type) -> Iterator[uvicorn.Server]:
    """An ASGI app under uvicorn with `protocol`, in a thread, on a loopback port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", http=protocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def dribble(
    sock: socket.socket, data: bytes, every: float, stop_after: float, opened: float | None = None
) -> tuple[bytes, float]:
    """Send `data` a byte every `every` seconds until the server closes the connection or `stop_after`
    passes; return what the server sent and when, after the connection opened (or `opened`, the
    moment the server's deadline started: a loaded machine may run other threads in between), it closed."""
    opened = time.monotonic() if opened is None else opened
    received = b""
    sock.settimeout(every)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            block = sock.recv(65536)
        except TimeoutError:
            block = None
        except ConnectionResetError:
            break
        if block == b"":
            break
        received += block or b""
        assert time.monotonic() - opened < stop_after, "the connection was still open"
    return received, time.monotonic() - opened


def dribble_beside_honest(
    port: int,
    slow: socket.socket,
    data: bytes,
    ask: Callable[[httpx.Client], httpx.Response],
    opened: float | None = None,
) -> tuple[bytes, float, list[int]]:
    """`dribble` `data` on `slow` (a byte every 0.1 s) while an honest client asks five times, 0.1 s
    apart; return what `slow` received, when it was closed, and the honest client's statuses."""
    answers: list[int] = []

    def honest() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(5):
                answers.append(ask(client).status_code)
                time.sleep(0.1)

    beside = threading.Thread(target=honest)
    beside.start()
    try:
        received, closed_after = dribble(slow, data, every=0.1, stop_after=DEADLINE + 3, opened=opened)
    finally:
        beside.join()
        slow.close()
    return received, closed_after, answers


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    opened = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    while block := sock.recv(65536):
        received += block
    return received, time.monotonic() - opened


def test_a_client_dribbling_its_head_is_answered_408_and_closed_while_others_are_served(port):
    opened = time.monotonic()  # the head's deadline runs from the connection
    slow = socket.create_connection(("127.0.0.1", port))
    head = b"GET /health HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 400  # a byte every 0.1 s: 40 s in all
    received, closed_after, answers = dribble_beside_honest(
        port, slow, head, lambda client: client.get("/health"), opened=opened
    )
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request head not complete within 1 s" in received
    assert DEADLINE - 0.05 <= closed_after < DEADLINE + 3
    assert answers == [200] * 5


def test_a_client_that_sends_nothing_is_closed_at_the_deadline(port):
    with socket.create_connection(("127.0.0.1", port)) as silent:
        received, closed_after = read_until_closed(silent, timeout=DEADLINE + 5)
    assert received.startswith(b"HTTP/1.1 408 ") and DEADLINE - 0.05 <= closed_after < DEADLINE + 3


def test_a_kept_alive_connection_is_held_to_the_deadline_for_its_next_head_too(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        received, closed_after = dribble(sock, b"GET /health HTTP/1.1\r\nX: " + b"b" * 400, 0.1, DEADLINE + 3)
    assert received.startswith(b"HTTP/1.1 408 ") and closed_after < DEADLINE + 3


def test_a_head_sent_in_pieces_within_the_deadline_is_served(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for piece in (b"GET /hea", b"lth HTTP/1.1\r\nHo", b"st: hub\r\nConnection: close\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(DEADLINE / 6)
        received, _ = read_until_closed(sock, timeout=5)
    assert received.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in received


def held_by_api_serve(db_url: str, sent: bytes, beside: Callable[[str], httpx.Response]) -> tuple[bytes, float, int]:
    """Through `cgthub api serve`: send `sent` and no more on one connection, ask `beside` (given the
    base URL) meanwhile; return what the connection received, when it closed, and `beside`'s status."""
    server, port = _start_server(db_url)
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(sent)
            status = beside(f"http://127.0.0.1:{port}").status_code
            received, closed_after = read_until_closed(sock, timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=20)
    return received, closed_after, status


def held_by_the_courier_receiver(db_url: str, sent: bytes) -> tuple[bytes, float]:
    """Through the courier's webhook receiver: send `sent` and no more; return what came back and when
    the connection closed."""
    port = _free_port()
    service = _start_service(db_url, port)
    try:
        _wait_ready(service, port)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(sent)
            received, closed_after = read_until_closed(sock, timeout=10)
    finally:
        service.terminate()
        service.wait(timeout=20)
    return received, closed_after


def test_cgthub_api_serve_holds_clients_to_the_configured_deadline(db_url, monkeypatch):
    monkeypatch.setenv("CGTHUB_API_HEADER_TIMEOUT", "1.5")
    sent = b"GET /health HTTP/1.1\r\nHost: hub\r\n"  # and never the blank line
    received, closed_after, beside = held_by_api_serve(
        db_url, sent, lambda base: httpx.get(f"{base}/health", timeout=10)
    )
    assert received.startswith(b"HTTP/1.1 408 ") and b"within 1.5 s" in received
    assert closed_after < 5
    assert beside == 200


def test_the_courier_webhook_receiver_holds_clients_to_the_deadline_too(db_url, monkeypatch):
    """The courier's webhook receiver (python -m cgthub.services courier-webhook) faces the internet."""
    monkeypatch.setenv("CGTHUB_API_HEADER_TIMEOUT", "1")
    received, closed_after = held_by_the_courier_receiver(db_url, b"")
    assert received.startswith(b"HTTP/1.1 408 ") and closed_after < 4
