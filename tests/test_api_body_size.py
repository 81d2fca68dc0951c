"""A request body past CGTHUB_API_MAX_BODY_BYTES is refused by the protocol before the app sees it,
over real sockets, both parsers: a Content-Length past the cap is answered 413 at the head's end (the
client sends only the head), a chunked body growing past it is answered 413 and closed, a body at the cap
is served, and others are served meanwhile; uvicorn and Starlette alone read any size into memory
(cgthub.api.http_protocol)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from cgthub.api.http_protocol import GuardedH11, GuardedHttpProtocol
from tests.test_api_body_deadline import SCAN, _post_head, _slow_then_echo, _tasks_end
from tests.test_api_header_deadline import (
    held_by_api_serve,
    held_by_the_courier_receiver,
    read_until_closed,
    serving,
    serving_app,
)

CAP = 1000
PARSERS: list[type] = sorted({GuardedH11, GuardedHttpProtocol}, key=lambda p: p.__name__)


def _capped(parser: type) -> type:
    return type(f"Capped{parser.__name__}", (parser,), {"max_body_bytes": CAP})


@pytest.fixture(params=PARSERS, ids=[parser.__name__ for parser in PARSERS])
def port(request: pytest.FixtureRequest, db_url: str) -> Iterator[int]:
    """The hub's API under the protocol with a 1,000-byte body cap, on a loopback port."""
    with serving(db_url, _capped(request.param)) as server:
        yield server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(params=PARSERS, ids=[parser.__name__ for parser in PARSERS])
def echo_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A bare app answering a POST with its body's length, under the capped protocol."""
    with serving_app(_slow_then_echo, _capped(request.param)) as server:
        yield server.servers[0].sockets[0].getsockname()[1]


def test_a_content_length_past_the_cap_is_answered_413_from_the_head_alone(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head("/verify", 200_000_000))  # 200 MB declared, not one byte of it sent
        received, closed_after = read_until_closed(sock, timeout=5)
    assert received.startswith(b"HTTP/1.1 413 ") and b"request body larger than 1000 bytes" in received
    assert closed_after < 3


async def _count_body(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI app that reads a body to its end or to a disconnect, recording the bytes it got."""
    if scope["type"] == "http":
        APP_GOT.append(0)
        more = True
        while more:
            message = await receive()
            APP_GOT[-1] += len(message.get("body", b""))
            more = message["type"] != "http.disconnect" and message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


APP_GOT: list[int] = []


@pytest.mark.parametrize("parser", PARSERS, ids=[parser.__name__ for parser in PARSERS])
def test_a_200_mb_chunked_body_is_cut_off_near_the_cap(parser: type) -> None:
    """The client tries to send 200 MB in 64 KiB chunks: the app gets at most the cap's bytes, and the
    server stops reading, so the client's sends fail long before 200 MB are through."""
    APP_GOT.clear()
    with serving_app(_count_body, _capped(parser)) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_post_head("/upload", None))
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            sent = 0
            sock.settimeout(5)
            try:
                while sent < 200_000_000:
                    sock.sendall(chunk)
                    sent += 0x10000
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                received, _ = read_until_closed(sock, timeout=5)
            except ConnectionResetError:  # the server closed with our bytes unread: the kernel sends RST
                received = b""
        assert _tasks_end(server, within=3)
    assert sent < 20_000_000, "the server kept reading past the cap"
    assert APP_GOT and all(got <= CAP for got in APP_GOT), APP_GOT
    assert b"HTTP/1.1 200 " not in received and (not received or received.startswith(b"HTTP/1.1 413 "))


def test_a_chunked_body_a_little_past_the_cap_is_answered_413(echo_port: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_port)) as sock:
        sock.sendall(_post_head("/echo", None) + b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"1\r\ny\r\n")
        received, closed_after = read_until_closed(sock, timeout=5)
    assert received.startswith(b"HTTP/1.1 413 ") and b"HTTP/1.1 200" not in received and closed_after < 3


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_at_the_cap_is_served(echo_port: int, chunked: bool) -> None:
    body = b"x" * CAP
    framed = b"3e8\r\n" + body + b"\r\n0\r\n\r\n" if chunked else body
    with socket.create_connection(("127.0.0.1", echo_port)) as sock:
        sock.sendall(_post_head("/echo", None if chunked else CAP, keep_alive=False) + framed)
        received, _ = read_until_closed(sock, timeout=5)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"1000")


def test_an_honest_client_is_served_while_others_are_refused(port: int) -> None:
    answers: list[int] = []

    def honest() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            answers.extend(client.post("/verify", content=SCAN).status_code for _ in range(5))

    beside = threading.Thread(target=honest)
    beside.start()
    refused = []
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_post_head("/verify", 10_000))
            refused.append(read_until_closed(sock, timeout=5)[0][:13])
    beside.join()
    assert refused == [b"HTTP/1.1 413 "] * 5
    assert answers == [401] * 5  # no API key: answered, its body read


def test_cgthub_api_serve_refuses_bodies_past_the_configured_cap(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGTHUB_API_MAX_BODY_BYTES", "500")
    received, closed_after, beside = held_by_api_serve(
        db_url, _post_head("/verify", 501), lambda base: httpx.post(f"{base}/verify", content=SCAN, timeout=10)
    )
    assert received.startswith(b"HTTP/1.1 413 ") and b"larger than 500 bytes" in received
    assert closed_after < 5 and beside == 401


def test_the_courier_webhook_receiver_refuses_bodies_past_the_cap_too(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The courier's webhook receiver (python -m cgthub.services courier-webhook) faces the internet."""
    monkeypatch.setenv("CGTHUB_API_MAX_BODY_BYTES", "500")
    received, closed_after = held_by_the_courier_receiver(db_url, _post_head("/webhooks/courier", 200_000_000))
    assert received.startswith(b"HTTP/1.1 413 ") and closed_after < 4


def test_the_default_cap_holds_the_largest_legitimate_body() -> None:
    """A bulk quarantine retry of 10,000 row ids (the API's largest body) fits under the default."""
    from cgthub.settings import Settings

    assert Settings.model_fields["api_max_body_bytes"].default == 4 * 1024 * 1024  # README: 4194304 (4 MiB)
    largest = ('{"entry_ids": [' + ", ".join(["9223372036854775807"] * 10_000) + "]}").encode()
    assert len(largest) < Settings().api_max_body_bytes


def test_a_body_growing_past_the_cap_after_the_answer_is_closed_without_a_413(port: int) -> None:
    """The app answered without reading the body (a route that takes none): the connection is closed
    when the body passes the cap, and no 413 is written after the answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 405 ")
        sock.sendall(b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"1\r\ny\r\n")
        received, closed_after = read_until_closed(sock, timeout=5)
    assert received == b"" and closed_after < 3
