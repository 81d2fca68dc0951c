"""What every route depends on: a read session, the caller's key checked for a scope, and strict parameters."""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from cgthub.api.auth import Principal, Scope, authenticate
from cgthub.api.errors import ApiError
from cgthub.store import point_read_engine, session_scope

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer cgt_<key id>_<secret>`")


async def read_session(request: Request) -> AsyncIterator[Session]:
    """Opened and closed on the event loop: a read session costs no I/O until its first query, and a
    sync dependency would cost each request a trip through the thread pool (the hot path's largest
    overhead, measured with bench/api_bench.py)."""
    with session_scope(request.app.state.database_url, readonly=True) as session:
        yield session


async def read_connection(request: Request) -> AsyncIterator[Connection]:
    """A connection for single-statement Core reads on the hot path (see `read_session` for why async,
    and `store.point_read_engine` for what a statement sees)."""
    with point_read_engine(request.app.state.database_url).connect() as connection:
        yield connection


def write_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.database_url) as session:
        yield session


# A write route's session, committed when the route returns and before its answer is sent: FastAPI
# ends a yield dependency after sending the response unless its scope is "function", and a client
# told 201 must find what it wrote (and hear of a commit that failed).
WRITE_SESSION = Depends(write_session, scope="function")


_CHECKED = "cgthub.key_checked"  # in a request's scope: (token, principal), checked before its body was read


def _admitted(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    lookup: Callable[[str], Principal | None],
    scope: Scope | None,
) -> Principal:
    """The caller's principal: 401 without a valid key, 403 without `scope` (None: any scope will do)."""
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthenticated", "send an API key: Authorization: Bearer <key>", headers=_CHALLENGE)
    checked = request.scope.get(_CHECKED)
    principal: Principal | None
    if checked is not None and checked[0] == credentials.credentials:  # before the body: not looked up twice
        principal = checked[1]
    else:
        principal = request.app.state.keys.get(credentials.credentials, lookup)
    if principal is None:
        raise ApiError(401, "unauthenticated", "the API key is not valid or was revoked", headers=_CHALLENGE)
    request.state.key_id = principal.key_id
    if scope is not None and not principal.has(scope):
        raise ApiError(403, "forbidden", f"this API key lacks the {scope.value} scope")
    return principal


# The key checks routes depend on, with the scope each requires (None: any valid key).
_KEY_CHECKS: dict[Callable[..., Any], Scope | None] = {}


async def any_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    session: Session = Depends(read_session),
) -> Principal:
    """Any valid key, whatever its scopes: for what every consumer may read and no data scope narrows
    (the public keys custody exports are signed with). 401 without one."""
    return _admitted(request, credentials, lambda token: authenticate(session, token), None)


_KEY_CHECKS[any_key] = None


def authorized(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits keys holding `scope` (or admin): 401 without a valid key, 403 without the scope.

    It runs on the event loop: a cached key is a dict lookup, an uncached one a single indexed read."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        session: Session = Depends(read_session),
    ) -> Principal:
        return _admitted(request, credentials, lambda token: authenticate(session, token), scope)

    dependency.__name__ = f"require_{scope.name.lower()}"
    _KEY_CHECKS[dependency] = scope
    return dependency


def _key_checks_of(dependant: Dependant) -> list[Scope | None]:
    """The key checks a route depends on: the scope each requires (None: any valid key)."""
    checks = []
    for sub in dependant.dependencies:
        if sub.call in _KEY_CHECKS:
            checks.append(_KEY_CHECKS[sub.call])
        checks += _key_checks_of(sub)
    return checks


def check_keys_before_bodies(app: FastAPI) -> None:
    """Make every route that takes a body and checks a key check the key first.

    FastAPI reads, buffers and parses a request's body before it solves the route's dependencies, so a
    caller with no valid key made the server take in up to CGTHUB_API_MAX_BODY_BYTES on every POST (or
    wait for it until the body deadline) before its 401. Here the key is checked, with the same cache,
    lookup and answers as the route's own dependency, before the route's handler runs; a valid key's
    principal is handed to that dependency, so it is looked up once. Call after the routers are included."""
    for route in app.routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            scopes = _key_checks_of(route.dependant)
            if scopes:
                route.app = _key_before_body(route.app, scopes)


def _key_before_body(handler: ASGIApp, scopes: list[Scope | None]) -> ASGIApp:
    async def checked_first(asgi_scope: AsgiScope, receive: Receive, send: Send) -> None:
        request = Request(asgi_scope)
        credentials = await bearer(request)
        url = request.app.state.database_url

        def lookup(token: str) -> Principal | None:
            with session_scope(url, readonly=True) as session:
                return authenticate(session, token)

        # 401, then 403, raised here: the body is never read
        principal = _admitted(request, credentials, lookup, None)
        assert credentials is not None  # admitted
        asgi_scope[_CHECKED] = (credentials.credentials, principal)
        for scope in scopes:
            _admitted(request, credentials, lookup, scope)
        await handler(asgi_scope, receive, send)

    return checked_first


_allowed: dict[int, frozenset[str]] = {}


_CURSORS = frozenset({"cursor", "after"})  # opaque: their decoding refuses anything not handed out (400)


async def reject_unknown_parameters(request: Request) -> None:
    """A misspelt filter must fail loudly (400), not silently return everything."""
    route: Any = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _allowed.get(id(route))
    if allowed is None:
        allowed = frozenset(p.alias for p in get_flat_dependant(dependant).query_params)
        _allowed[id(route)] = allowed
    unknown = sorted(set(request.query_params.keys()) - allowed)
    if unknown:
        # The names are not repeated back (a caller may put anything there, a patient's name too):
        # only accepted names, the one closest to each unknown name first.
        near = sorted({m for name in unknown for m in difflib.get_close_matches(name, allowed, n=1)})
        guess = f" (did you mean {', '.join(near)}?)" if near else ""
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ApiError(
            400, "unknown_parameter", f"{len(unknown)} unknown query parameter(s){guess}; accepted: {accepted}"
        )
    params = [*request.query_params.multi_items(), *request.path_params.items()]
    if any("\x00" in str(value) for name, value in params if name not in _CURSORS):
        # PostgreSQL's text cannot hold a NUL: the lookup would fail as a server error.
        raise ApiError(422, "invalid_request", "a parameter holds a NUL character")
    repeated = sorted({k for k in request.query_params.keys() if len(request.query_params.getlist(k)) > 1})
    if repeated:
        raise ApiError(400, "repeated_parameter", f"give each query parameter once: {', '.join(repeated[:5])}")
