"""A caller without a valid key is answered 401 (403 without the route's scope) before its body is read,
over real sockets, both parsers, both stores: FastAPI reads, buffers and parses a request's body before
it solves the route's dependencies, so a POST with no key made the server take in up to
CGTHUB_API_MAX_BODY_BYTES, or wait for it until the body deadline, before refusing it
(cgthub.api.deps.check_keys_before_bodies). A valid key's request is read and answered as before, and
every answer is in the access log as before."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.requests import Request

from cgthub.api.auth import create_key, revoke
from cgthub.api.http_protocol import GuardedH11, GuardedHttpProtocol
from cgthub.api.tables import ApiAccess
from cgthub.store import session_scope
from tests.test_api_header_deadline import serving

BODY_DEADLINE = 3.0
PARSERS: list[type] = sorted({GuardedH11, GuardedHttpProtocol}, key=lambda p: p.__name__)
THREE_MIB = 3 * 1024 * 1024  # under the 4 MiB cap: the protocol lets it through to the app
SCAN = b'{"order_id": "ORD-1", "step": "bedside", "din": "=W00002600000100"}'  # valid, for no order


@pytest.fixture(params=PARSERS, ids=[parser.__name__ for parser in PARSERS])
def served(request: pytest.FixtureRequest, db_url: str) -> Iterator[tuple[uvicorn.Server, int]]:
    """The hub's API under the guarded protocol (body deadline 3 s) on a loopback port."""
    protocol = type(f"Short{request.param.__name__}", (request.param,), {"body_timeout": BODY_DEADLINE})
    with serving(db_url, protocol) as server:
        yield server, server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture
def body_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each request whose body the app read (Starlette's Request.body, which FastAPI's handler awaits)."""
    reads: list[str] = []
    read = Request.body

    async def counted(self: Request) -> bytes:
        reads.append(self.url.path)
        return await read(self)

    monkeypatch.setattr(Request, "body", counted)
    return reads


def _keys(db_url: str) -> dict[str, str]:
    """Bearer values of every kind: a scanner's key, a key without the scan scope, a revoked scanner's
    key, another's secret under a real key id, a well-formed unknown key, and nonsense."""
    with session_scope(db_url) as session:
        scanner, scanner_token = create_key(session, name="scanner", scopes=["scan:write"], all_data=True)
        _, reader_token = create_key(session, name="reader", scopes=["status:read"], all_data=True)
        revoked, revoked_token = create_key(session, name="revoked", scopes=["scan:write"], all_data=True)
        revoke(session, revoked.id)
    return {
        "valid": scanner_token,
        "no scan scope": reader_token,
        "revoked": revoked_token,
        "wrong secret": f"cgt_{scanner.id}_{'A' * 43}",
        "unknown": f"cgt_000000000000_{'A' * 43}",
        "malformed": "not-a-key",
    }


def _post_head(length: int, token: str | None, path: str = "/verify", method: str = "POST") -> bytes:
    authorization = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n{authorization}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _first_answer(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """The first answer's bytes (head and a body up to its Content-Length) and how long it took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < _length(received):
        block = sock.recv(65536)
        if not block:
            break
        received += block
    return received, time.monotonic() - started


def _answer_to(port: int, sent: bytes) -> tuple[bytes, float]:
    """Send `sent` on a new connection; its first answer and how long that took."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        return _first_answer(sock, timeout=BODY_DEADLINE + 5)


def _length(received: bytes) -> int:
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _error(received: bytes) -> dict[str, Any]:
    return json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]


@pytest.mark.parametrize("kind", ["missing", "revoked", "wrong secret", "unknown", "malformed"])
def test_a_caller_without_a_valid_key_is_answered_401_before_its_body_is_read(
    served: tuple[uvicorn.Server, int], db_url: str, body_reads: list[str], kind: str
) -> None:
    """The head announces 3 MiB and none of it is sent: the 401 comes at once, not at the body deadline."""
    _, port = served
    token = None if kind == "missing" else _keys(db_url)[kind]
    received, took = _answer_to(port, _post_head(THREE_MIB, token))
    assert received.startswith(b"HTTP/1.1 401 "), received[:200]
    assert took < BODY_DEADLINE - 0.5, f"answered after {took:.2f} s"
    assert b"www-authenticate: Bearer" in received
    assert _error(received)["code"] == "unauthenticated"
    assert body_reads == []


def test_a_key_without_the_routes_scope_is_answered_403_before_its_body_is_read(
    served: tuple[uvicorn.Server, int], db_url: str, body_reads: list[str]
) -> None:
    _, port = served
    received, took = _answer_to(port, _post_head(THREE_MIB, _keys(db_url)["no scan scope"]))
    assert received.startswith(b"HTTP/1.1 403 ") and took < BODY_DEADLINE - 0.5
    assert _error(received) == {
        "code": "forbidden",
        "message": "this API key lacks the scan:write scope",
        "details": [],
    }
    assert body_reads == []


def test_a_valid_keys_body_is_still_awaited_read_and_answered(
    served: tuple[uvicorn.Server, int], db_url: str, body_reads: list[str]
) -> None:
    """The same head with the scanner's key: no answer until the body comes; then the route's own answer."""
    _, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head(len(SCAN), _keys(db_url)["valid"]))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        sock.sendall(SCAN)
        received, _ = _first_answer(sock, timeout=10)
    assert received.startswith(b"HTTP/1.1 404 ") and _error(received)["code"] == "not_found"  # ORD-1 is no order
    assert body_reads and set(body_reads) == {"/verify"}  # read (and once more by request.json())


def test_refusals_before_the_body_are_in_the_access_log_as_before(
    served: tuple[uvicorn.Server, int], db_url: str
) -> None:
    """Each answer's row names the route and, for a key that was recognised, the key."""
    server, port = served
    keys = _keys(db_url)
    statuses = []
    for kind in ("missing", "unknown", "no scan scope", "valid"):
        received, _ = _answer_to(port, _post_head(len(SCAN), None if kind == "missing" else keys[kind]) + SCAN)
        statuses.append(received[9:12])
    assert statuses == [b"401", b"401", b"403", b"404"]
    server.config.app.state.audit.flush()
    with session_scope(db_url) as session:
        rows = [
            (r.key_id, r.method, r.path, r.status_code)
            for r in session.scalars(select(ApiAccess).order_by(ApiAccess.id))
        ]
    key_ids = {kind: keys[kind].split("_")[1] for kind in ("no scan scope", "valid")}
    assert rows == [
        (None, "POST", "/verify", 401),
        (None, "POST", "/verify", 401),
        (key_ids["no scan scope"], "POST", "/verify", 403),
        (key_ids["valid"], "POST", "/verify", 404),
    ]


def test_a_malformed_body_without_a_key_is_answered_401_not_422(served: tuple[uvicorn.Server, int]) -> None:
    """The key comes first now: before, the body's JSON was parsed, and refused 422, before the key was looked at."""
    _, port = served
    received, _ = _answer_to(port, _post_head(9, None) + b"not json!")
    assert received.startswith(b"HTTP/1.1 401 ")


def test_every_route_that_takes_a_body_refuses_a_caller_without_a_key_before_reading_it(
    served: tuple[uvicorn.Server, int], body_reads: list[str]
) -> None:
    """The operator decisions, bookings, subscriptions and scans alike: each route of the app with a body."""
    server, port = served
    app = server.config.app
    filled = {"order_id": "ORD-1", "alert_id": "1", "entry_id": "1", "partner": "erp", "subscription_id": "sub_1"}
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.body_field is not None]
    assert len(routes) >= 13
    for route in routes:
        path = route.path_format.format(**{name: filled[name] for name in route.param_convertors})
        (method,) = route.methods
        received, took = _answer_to(port, _post_head(THREE_MIB, None, path, method))
        assert received.startswith(b"HTTP/1.1 401 ") and took < BODY_DEADLINE - 0.5, (route.path, received[:40], took)
    assert body_reads == []
