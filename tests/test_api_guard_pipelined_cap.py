"""A request past the body cap pipelined behind another, in the same packet, is answered 413 after the
earlier answers, and the app never sees it, on both parsers: httptools parses a whole packet at once,
so the over-cap request was refused while the first was still being answered, and the refusal threw
the first request's answer away and closed the connection with no 413 (h11 parses the second request
only after the first answer). Over real sockets (cgthub.api.http_protocol)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from starlette.types import Receive, Scope, Send

from cgthub.api.http_protocol import GuardedH11, GuardedHttpProtocol
from tests.test_api_body_deadline import _post_head
from tests.test_api_header_deadline import read_until_closed, serving_app

CAP = 1000
PARSERS: list[type] = sorted({GuardedH11, GuardedHttpProtocol}, key=lambda p: p.__name__)
SEEN: list[str] = []  # each request the app was started for: method and path
GOT: list[int] = []  # and how many body bytes it was handed


def _capped(parser: type) -> type:
    return type(f"Capped{parser.__name__}", (parser,), {"max_body_bytes": CAP})


async def _recording_app(scope: Scope, receive: Receive, send: Send) -> None:
    """GET /slow answers after 0.3 s (the next request waits, queued), anything else at once, after
    reading its body."""
    if scope["type"] != "http":
        return
    SEEN.append(f"{scope['method']} {scope['path']}")
    GOT.append(0)
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    more = True
    while more:
        message = await receive()
        GOT[-1] += len(message.get("body", b""))
        more = message["type"] != "http.disconnect" and message.get("more_body", False)
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


GET = b"GET %s HTTP/1.1\r\nHost: hub\r\n\r\n"
PAST_THE_CAP_BY_LENGTH = _post_head("/upload", 200_000_000)  # 200 MB declared, none of it sent
PAST_THE_CAP_CHUNKED = _post_head("/upload", None) + b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"1\r\ny\r\n"


@pytest.mark.parametrize("parser", PARSERS, ids=[parser.__name__ for parser in PARSERS])
@pytest.mark.parametrize(
    ("earlier", "refused"),
    [
        ([b"/slow"], PAST_THE_CAP_BY_LENGTH),
        ([b"/fast"], PAST_THE_CAP_BY_LENGTH),
        ([b"/slow"], PAST_THE_CAP_CHUNKED),
        ([b"/slow", b"/fast"], PAST_THE_CAP_BY_LENGTH),
        ([b"/slow", b"/fast"], PAST_THE_CAP_CHUNKED),
    ],
    ids=["slow+length", "fast+length", "slow+chunked", "slow+fast+length", "slow+fast+chunked"],
)
def test_a_pipelined_request_past_the_cap_is_answered_413_after_the_earlier_answers(
    parser: type, earlier: list[bytes], refused: bytes
) -> None:
    SEEN.clear()
    GOT.clear()
    with serving_app(_recording_app, _capped(parser)) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"".join(GET % path for path in earlier) + refused)  # one packet
            received, closed_after = read_until_closed(sock, timeout=5)
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [answer[:3] for answer in answers] == [b"200"] * len(earlier) + [b"413"], received
    assert [answer.rsplit(b"\r\n\r\n", 1)[1] for answer in answers[:-1]] == earlier
    assert b"request body larger than 1000 bytes" in answers[-1]
    assert closed_after < 3
    assert SEEN[: len(earlier)] == [f"GET {path.decode()}" for path in earlier]
    if refused is PAST_THE_CAP_BY_LENGTH:
        assert SEEN == SEEN[: len(earlier)]  # refused at its head: no app was started for it
    else:  # h11 starts its app at the head, before the body passes the cap (as for a request not pipelined)
        assert SEEN[len(earlier) :] in ([], ["POST /upload"]) and all(got <= CAP for got in GOT), GOT
