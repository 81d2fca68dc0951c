"""A client that sends a request's head and then dribbles its body (slowloris on the body) is answered
408 and disconnected at the body's deadline, over real sockets, while other clients are served, and the
app's task waiting for the body ends: uvicorn alone kept such a connection, its descriptor and the task
for as long as the client kept dribbling (cgthub.api.http_protocol)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from cgthub.api.auth import create_key
from cgthub.api.http_protocol import GuardedH11, GuardedHttpProtocol
from cgthub.store import session_scope
from tests.test_api_header_deadline import (
    dribble,
    dribble_beside_honest,
    held_by_api_serve,
    held_by_the_courier_receiver,
    read_until_closed,
    serving,
    serving_app,
)

DEADLINE = 1.0
PARSERS: list[type] = sorted({GuardedH11, GuardedHttpProtocol}, key=lambda p: p.__name__)  # h11, httptools
# (httptools where installed: uvicorn's auto picks it, and so does GuardedHttpProtocol)
SCAN = b'{"order_id": "ORD-1", "step": "collection", "din": "=W0000 26 000001 00"}'


def _post_head(path: str, length: int | None, keep_alive: bool = True, token: str | None = None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    connection = "" if keep_alive else "Connection: close\r\n"
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n{framing}\r\n{connection}"
        f"{authorization}\r\n"
    ).encode()


def _scanner(db_url: str) -> str:
    """A key that may POST /verify: a caller without one is answered 401 before its body is read
    (tests/test_api_guard_key_before_body.py), so only a keyed caller is left waiting on a body."""
    with session_scope(db_url) as session:
        return create_key(session, name="scanner", scopes=["scan:write"], all_data=True)[1]


@pytest.fixture(params=PARSERS, ids=[parser.__name__ for parser in PARSERS])
def served(request: pytest.FixtureRequest, db_url: str) -> Iterator[tuple[uvicorn.Server, int]]:
    """The hub's API under uvicorn with the deadline protocol (body 1 s, head 10 s) on a loopback port."""
    protocol = type(f"Short{request.param.__name__}", (request.param,), {"body_timeout": DEADLINE})
    with serving(db_url, protocol) as server:
        yield server, server.servers[0].sockets[0].getsockname()[1]


def _tasks_end(server: uvicorn.Server, within: float) -> bool:
    """True once no app task is left running (uvicorn's protocols discard a task when it is done)."""
    deadline = time.monotonic() + within
    while server.server_state.tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    return not server.server_state.tasks


@pytest.mark.parametrize("length", [100_000, None], ids=["content-length", "chunked"])
def test_a_client_dribbling_its_body_is_answered_408_and_closed_while_others_are_served(
    served: tuple[uvicorn.Server, int], length: int | None, db_url: str
) -> None:
    server, port = served
    slow = socket.create_connection(("127.0.0.1", port))
    head = _post_head("/verify", length, token=_scanner(db_url))
    opened = time.monotonic()  # the body's deadline runs from its head
    slow.sendall(head)
    body = b"{" + b" " * 400 if length is not None else b"5\r\n{    \r\n" + b"1\r\n \r\n" * 200
    received, closed_after, answers = dribble_beside_honest(
        port, slow, body, lambda client: client.post("/verify", content=SCAN), opened=opened
    )
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request body not complete within 1 s" in received
    assert DEADLINE - 0.05 <= closed_after < DEADLINE + 3
    assert answers == [401] * 5  # no API key: answered at once
    assert _tasks_end(server, within=3), "the app's task still waits for the body"


def test_a_large_body_sent_promptly_is_served(served: tuple[uvicorn.Server, int]) -> None:
    _, port = served
    large = SCAN[:-1] + b', "site": "' + b"x" * 2_000_000 + b'"}'  # 2 MB: uvicorn pauses reading past 64 KiB
    answer = httpx.post(f"http://127.0.0.1:{port}/verify", content=large, timeout=10)
    assert answer.status_code == 401


def test_a_body_sent_in_pieces_within_the_deadline_is_served(served: tuple[uvicorn.Server, int], db_url: str) -> None:
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head("/verify", len(SCAN), keep_alive=False, token=_scanner(db_url)))
        for start in range(0, len(SCAN), len(SCAN) // 4 + 1):
            time.sleep(DEADLINE / 6)
            sock.sendall(SCAN[start : start + len(SCAN) // 4 + 1])
        received, _ = read_until_closed(sock, timeout=5)
    assert received.startswith(b"HTTP/1.1 422 ")  # the body was read whole: SCAN's DIN is not one


def test_a_kept_alive_connections_second_body_is_timed_too(served: tuple[uvicorn.Server, int], db_url: str) -> None:
    server, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head("/verify", len(SCAN)) + SCAN)
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")
        time.sleep(DEADLINE * 1.5)  # idle between requests: neither deadline runs (uvicorn's keep-alive is 5 s)
        sock.sendall(_post_head("/verify", 100_000, token=_scanner(db_url)))
        received, closed_after = dribble(sock, b" " * 400, every=0.1, stop_after=DEADLINE + 3)
    assert received.startswith(b"HTTP/1.1 408 ") and b"request body" in received
    assert DEADLINE - 0.05 <= closed_after < DEADLINE + 3
    assert _tasks_end(server, within=3)


def test_an_answer_begun_before_the_body_ends_is_closed_without_a_408(served: tuple[uvicorn.Server, int]) -> None:
    """The app answered without reading the body (a route that takes none): the dribbling client's
    connection is still closed at the deadline, and no 408 is written after the answer."""
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: hub\r\nContent-Length: 100000\r\n\r\n")
        received, closed_after = dribble(sock, b" " * 400, every=0.1, stop_after=DEADLINE + 3)
    assert received.startswith(b"HTTP/1.1 405 ") and b"408" not in received
    assert closed_after < DEADLINE + 3


def test_cgthub_api_serve_holds_bodies_to_the_configured_deadline(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGTHUB_API_BODY_TIMEOUT", "1.5")
    sent = _post_head("/verify", 100_000, token=_scanner(db_url)) + b"{"  # and never the rest
    received, closed_after, beside = held_by_api_serve(
        db_url, sent, lambda base: httpx.post(f"{base}/verify", content=SCAN, timeout=10)
    )
    assert received.startswith(b"HTTP/1.1 408 ") and b"request body not complete within 1.5 s" in received
    assert closed_after < 5
    assert beside == 401


def test_the_courier_webhook_receiver_holds_bodies_to_the_deadline_too(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The courier's webhook receiver (python -m cgthub.services courier-webhook) faces the internet."""
    monkeypatch.setenv("CGTHUB_API_BODY_TIMEOUT", "1")
    received, closed_after = held_by_the_courier_receiver(db_url, _post_head("/webhooks/courier", 100_000) + b"{")
    assert received.startswith(b"HTTP/1.1 408 ") and b"request body" in received and closed_after < 4


async def _slow_then_echo(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """A bare ASGI app: GET /slow answers after 1.8 s; a POST answers with the length of its body."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.8 * DEADLINE)
        body = b"slow"
    else:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        body = str(len(body)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("parser", PARSERS, ids=[parser.__name__ for parser in PARSERS])
def test_a_pipelined_body_waiting_behind_a_slow_answer_is_timed_from_that_answer(parser: type) -> None:
    """The body of a request pipelined behind one answered after 1.8 s is not read meanwhile (uvicorn
    pauses): it is completed 0.5 s after that answer, past 2 deadlines from its head, and is served."""
    protocol = type(f"Short{parser.__name__}", (parser,), {"body_timeout": DEADLINE})
    with serving_app(_slow_then_echo, protocol) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"GET /slow HTTP/1.1\r\nHost: hub\r\n\r\n" + _post_head("/echo", 10, keep_alive=False) + b"01234"
            )
            sock.settimeout(5)
            received = sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"slow")
            time.sleep(0.5 * DEADLINE)
            sock.sendall(b"56789")
            rest, _ = read_until_closed(sock, timeout=5)
    assert (received + rest).count(b"HTTP/1.1 200 ") == 2 and rest.endswith(b"10")
