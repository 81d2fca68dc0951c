"""A client that asks and never reads its answer is cut off once the answer's unsent bytes have not
shrunk for CGTHUB_API_WRITE_TIMEOUT, over real sockets, both parsers; a slow client that keeps reading
gets its whole answer. uvicorn alone kept such a connection, the app's task waiting to write and the
buffered answer for as long as the client liked (cgthub.api.http_protocol)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from cgthub.api.http_protocol import GuardedH11, GuardedHttpProtocol, _RequestGuard
from tests.hub_log import hub_log
from tests.test_api_access_log import _start_server
from tests.test_api_body_deadline import _tasks_end
from tests.test_api_header_deadline import serving_app

DEADLINE = 1.0
PARSERS: list[type] = sorted({GuardedH11, GuardedHttpProtocol}, key=lambda p: p.__name__)
ANSWER = 1024 * 1024  # bytes: far past what the small socket buffers below hold
SMALL_BUFFER = 16 * 1024


def _timed(parser: type) -> type:
    """The protocol with a 1 s write deadline and a small kernel send buffer, so that an answer of 1 MiB
    waits in the process (the kernel would otherwise take up to 4 MB of it on loopback)."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        parser.connection_made(self, transport)
        self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)

    return type(f"Timed{parser.__name__}", (parser,), {"write_timeout": DEADLINE, "connection_made": connection_made})


async def _big_answer(scope: Scope, receive: Receive, send: Send) -> None:
    """GET /whole answers 1 MiB in one piece, GET /pieces in 64 KiB pieces (a streamed export)."""
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"%d" % ANSWER)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["path"] == "/whole":
        await send({"type": "http.response.body", "body": b"x" * ANSWER})
        return
    piece = 64 * 1024
    for sent in range(0, ANSWER, piece):
        await send({"type": "http.response.body", "body": b"x" * piece, "more_body": sent + piece < ANSWER})


@pytest.fixture(params=PARSERS, ids=[parser.__name__ for parser in PARSERS])
def server(request: pytest.FixtureRequest) -> Iterator[uvicorn.Server]:
    with serving_app(_big_answer, _timed(request.param)) as served:
        yield served


def _asking(server: uvicorn.Server, path: str) -> socket.socket:
    port = server.servers[0].sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # before connecting: the window
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: hub\r\n\r\n".encode())
    return sock


def _open_connections(server: uvicorn.Server) -> int:
    return len(server.server_state.connections)


@pytest.mark.parametrize("path", ["/whole", "/pieces"])
def test_a_client_that_never_reads_its_answer_is_cut_off_at_the_deadline(server: uvicorn.Server, path: str) -> None:
    _RequestGuard._warn_write._next_at.clear()  # warned at most once a minute per address: an earlier test's
    with hub_log("cgthub.api") as lines, _asking(server, path) as sock:
        asked = time.monotonic()
        while not _open_connections(server) and time.monotonic() - asked < 2:  # accepted
            time.sleep(0.01)
        while _open_connections(server) and time.monotonic() - asked < DEADLINE + 5:
            time.sleep(0.05)
        closed_after = time.monotonic() - asked
        assert _open_connections(server) == 0, "the connection was still open"
        assert _tasks_end(server, within=2), "the app's task still waits to write"
        received = b""
        sock.settimeout(2)
        try:  # what the kernel had taken before the cut comes, then the end (or nothing more)
            while block := sock.recv(65536):
                received += block
        except (ConnectionResetError, TimeoutError):
            pass
    assert DEADLINE - 0.05 <= closed_after < DEADLINE + 3
    assert len(received) < ANSWER  # the rest was dropped, not sent
    warnings = [r.getMessage() for r in lines.records if "an answer not read" in r.getMessage()]
    assert warnings == [
        "closed API connections from 127.0.0.1: an answer not read for 1 s"
        " (1 time(s) since the last such warning for this address)"
    ]


@pytest.mark.parametrize("path", ["/whole", "/pieces"])
def test_a_slow_client_that_keeps_reading_gets_its_whole_answer(server: uvicorn.Server, path: str) -> None:
    """32 KiB every 0.1 s: the 1 MiB answer takes about 3 s, three deadlines."""
    with _asking(server, path) as sock:
        sock.settimeout(5)
        received = b""
        started = time.monotonic()
        while not received.endswith(b"x" * 1024) or len(received.split(b"\r\n\r\n", 1)[1]) < ANSWER:
            block = sock.recv(32 * 1024)
            assert block, "the server closed the connection"
            received += block
            time.sleep(0.1)
        took = time.monotonic() - started
        open_after = _open_connections(server)  # asked while the client still holds its end
    assert received.startswith(b"HTTP/1.1 200 ") and len(received.split(b"\r\n\r\n", 1)[1]) == ANSWER
    assert took > 2 * DEADLINE
    assert open_after == 1  # kept alive for its next request


def test_cgthub_api_serve_cuts_off_a_client_that_never_reads_at_the_configured_deadline(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 requests for the OpenAPI schema (75 KB each, 11 MB in all) pipelined in one packet and not one
    byte read: the server would hold the answers it cannot send for as long as the client liked."""
    monkeypatch.setenv("CGTHUB_API_WRITE_TIMEOUT", "1")
    server, port = _start_server(db_url)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.connect(("127.0.0.1", port))
        with sock:
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: hub\r\n\r\n" * 150)
            time.sleep(4)  # the deadline, and time to spare on a loaded machine
            received = b""
            sock.settimeout(3)
            try:
                while block := sock.recv(1 << 20):
                    received += block
            except (ConnectionResetError, TimeoutError):
                pass
    finally:
        server.terminate()
        server.wait(timeout=20)
    answers = received.count(b"HTTP/1.1 200 ")
    assert 0 < answers < 100, answers  # what the kernel had taken before the cut, not the rest


def test_the_default_write_deadline_is_30_seconds() -> None:
    from cgthub.settings import Settings

    assert Settings.model_fields["api_write_timeout"].default == 30.0  # README: CGTHUB_API_WRITE_TIMEOUT `30`
