"""Bad requests through the API over real HTTP: each is refused with the uniform error body and changes nothing.

The same table a new integration engineer meets from the CLI (tests/test_bad_input.py), asked of the
API: missing, wrong or revoked key, an order nobody knows, filters and cursors that mean nothing, a
page too large, a body that is not JSON, a webhook aimed at the hub's own machine, a route that does
not exist. Each answer is {"error": {"code", "message", "details"}} with its status, names the problem
in words, carries no traceback and no patient identifier, and leaves every table as it was (the
access log aside, whose job is to note each request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select

from cgthub.api.auth import revoke
from cgthub.store import get_engine, session_scope
from tests import api_server
from tests.factories import PATIENTS, enrolment, happy_path

api = api_server.api  # the running-server fixture

# Tables whose rows record the request itself, not a change the request made.
_REQUEST_LOGS = {"api_access_log"}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    key: str  # "admin", "none", "bad" or "revoked"
    status: int
    code: str
    named: str  # a word the message or details must contain, so the caller knows what to fix
    body: bytes | None = None


CASES = [
    Case("no key", "GET", "/orders", "none", 401, "unauthenticated", "key"),
    Case("bad key", "GET", "/orders", "bad", 401, "unauthenticated", "key"),
    Case("revoked key", "GET", "/orders", "revoked", 401, "unauthenticated", "revoked"),
    Case("unknown order id", "GET", "/orders/ORD-NO-SUCH-ORDER", "admin", 404, "not_found", "order"),
    Case("bad status filter", "GET", "/orders?status=bogus", "admin", 422, "invalid_request", "status"),
    Case("hold is not a status", "GET", "/orders?status=on-hold", "admin", 422, "invalid_request", "status"),
    Case("bad cursor", "GET", "/orders?cursor=not-a-cursor", "admin", 400, "invalid_cursor", "cursor"),
    Case("limit over 200", "GET", "/orders?limit=201", "admin", 422, "invalid_request", "limit"),
    Case("bad JSON body", "POST", "/subscriptions", "admin", 422, "invalid_request", "json", b"{not json"),
    Case(
        "webhook on loopback",
        "POST",
        "/subscriptions",
        "admin",
        422,
        "webhook_target_refused",
        "loopback",
        b'{"url": "http://127.0.0.1:9/hook"}',
    ),
    Case("unknown route", "GET", "/nowhere", "admin", 404, "not_found", "not found"),
]


def _row_counts(database_url: str) -> dict[str, int]:
    engine = get_engine(database_url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        return {
            name: conn.scalar(select(func.count()).select_from(table)) or 0
            for name, table in tables.tables.items()
            if name not in _REQUEST_LOGS
        }


def _token(server: api_server.ApiServer, kind: str) -> str | None:
    if kind == "none":
        return None
    if kind == "bad":
        return "cgt_nope_nope"
    token = server.key("admin")
    if kind == "revoked":
        with session_scope(server.database_url) as session:
            assert revoke(session, token.split("_")[1])
    return token


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_gets_the_uniform_error_and_changes_nothing(api: Any, case: Case) -> None:
    api_server.build_orders(
        api.database_url, [[enrolment(1, market="DE", mrn=PATIENTS[0]["mrn"]), *happy_path(1)[1:3]]]
    )
    client = api.client(_token(api, case.key))
    api.flush_audit()
    before = _row_counts(api.database_url)

    headers = {"Content-Type": "application/json"} if case.body is not None else {}
    response = client.request(case.method, case.path, content=case.body, headers=headers)

    assert response.status_code == case.status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == case.code
    assert body["error"]["message"].strip()
    assert case.named in response.text.lower(), response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    for patient in PATIENTS:
        for value in (patient["mrn"], patient["birth_date"], *patient["name"].split("^")):
            assert value not in response.text
    api.flush_audit()
    assert _row_counts(api.database_url) == before
