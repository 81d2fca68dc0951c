"""The change feed (ordered, resumable, never skipping a late commit) and signed webhook delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cgthub import ledger, outbox
from cgthub.api import webhooks
from cgthub.api.tables import WebhookSubscription
from cgthub.changes import OrderChange
from cgthub.store import session_scope
from cgthub.tables import utcnow
from tests import api_server
from tests.factories import happy_path

api = api_server.api


def _walk(client, after: str | None = None, limit: int = 3) -> tuple[list[dict], str | None]:
    events, cursor = [], after
    while True:
        params = {"limit": limit} | ({"after": cursor} if cursor else {})
        page = client.get("/events", params=params).json()
        events += page["events"]
        if not page["events"]:
            return events, page["next_cursor"]
        cursor = page["next_cursor"]


def _polled(client, after: str | None, done) -> tuple[list[dict], str | None]:
    """The feed walked from `after` as a consumer polls it, until `done(events)` or 30 s. On
    PostgreSQL the feed serves a change once no older transaction runs in the hub's database
    (changes._pg_horizon), which another xdist worker's, in its own schema of the same database,
    holds back a while; SQLite serves every committed change at once."""
    deadline = time.monotonic() + 30
    events, cursor = _walk(client, after)
    while not done(events) and time.monotonic() < deadline:
        time.sleep(0.2)
        more, cursor = _walk(client, cursor)
        events += more
    return events, cursor


def test_feed_is_ordered_complete_and_resumable(api):
    first, second = api_server.build_orders(api.database_url, [happy_path(1), happy_path(2)[:5]])
    client = api.client(api.key("status:read"))

    def both_served(events: list[dict]) -> bool:
        seconds = [e["status"] for e in events if e["order_id"] == second]
        return len(seconds) == 5 and any(e["order_id"] == first and e["status"] == "infused" for e in events)

    events, cursor = _polled(client, None, both_served)
    one_page = client.get("/events", params={"limit": 1000}).json()["events"]
    assert events == one_page
    by_order = {first: [], second: []}
    for e in events:
        by_order[e["order_id"]].append(e["status"])
    assert by_order[first][0] == "enrolled" and by_order[first][-1] == "infused"
    assert by_order[second] == ["enrolled", "apheresis_scheduled", "collected", "in_transit_to_cmo", "received_at_cmo"]
    assert events[1]["previous_status"] == events[0]["status"] and "milestones" in events[1]["changed"]

    # Nothing new: the cursor stays where it is. New changes appear after it, and only they.
    again = client.get("/events", params={"after": cursor}).json()
    assert again == {"events": [], "next_cursor": cursor}
    with session_scope(api.database_url) as session:
        for e in happy_path(2)[5:7]:
            ledger.append(session, e)
    fresh, _ = _polled(client, cursor, bool)
    assert [(e["order_id"], e["status"]) for e in fresh] == [(second, "manufacturing")]
    # Resuming from the middle gives exactly the rest (at-least-once consumers replay from their cursor).
    middle = events[4]["cursor"]
    rest, _ = _walk(client, middle, limit=2)
    assert rest == events[5:] + fresh


def test_a_narrow_reader_moves_past_what_it_cannot_see(api):
    api_server.build_orders(api.database_url, [happy_path(1)[:3]])
    narrow = api.client(api.key("status:read", sites=["DE-SITE-9"]))
    wide = api.client(api.key("status:read"))
    # On PostgreSQL the feed waits for transactions that can write to the hub's database: another
    # xdist worker's, in its own schema of the same database, holds both readers back a while. A
    # consumer polls again; so does this test, 30 s.
    deadline = time.monotonic() + 30
    while True:
        page, everything = narrow.get("/events").json(), wide.get("/events").json()
        caught_up = len(everything["events"]) == 3 and page["next_cursor"] == everything["next_cursor"]
        if caught_up or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert page["events"] == [] and len(everything["events"]) == 3
    assert page["next_cursor"] == everything["next_cursor"]  # no rescanning of other sites' changes


def test_a_late_commit_is_never_skipped(api, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers: ids commit in order")
    slow_order, fast_order = api_server.build_orders(api.database_url, [happy_path(1)[:1], happy_path(2)[:1]])
    client = api.client(api.key("status:read"))
    # The cursor past both enrolments, read as a consumer reads: another worker's transaction on the
    # same server may hold the horizon back a while (a fresh clone's run once served them later).
    enrolled, cursor = _polled(client, None, lambda events: len(events) >= 2)
    assert sorted(e["order_id"] for e in enrolled) == sorted([slow_order, fast_order])
    with session_scope(api.database_url) as slow:
        ledger.append(slow, happy_path(1)[1])  # written (and id taken) first, committed last
        with session_scope(api.database_url) as fast:
            ledger.append(fast, happy_path(2)[1])
        served_meanwhile = client.get("/events", params={"after": cursor}).json()
        assert served_meanwhile["events"] == []  # the fast commit waits behind the open transaction
    # Both are final once no older transaction runs in the hub's database (changes._pg_horizon),
    # which another xdist worker's transaction, in its own schema of the same database, holds back a
    # while. A consumer polls again; so does this test, for up to 30 s.
    after, _ = _polled(client, cursor, lambda events: len(events) >= 2)
    assert sorted(e["order_id"] for e in after) == sorted([slow_order, fast_order])


@dataclass
class Receiver:
    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_with: int | None = None


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A consumer on loopback, which webhooks reach only because the operator's allow-list names it."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.fail_with or 204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/cgthub"
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", f"127.0.0.1:{server.server_address[1]}")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_webhooks_are_signed_filtered_and_scoped(api, receiver):
    (before,) = api_server.build_orders(api.database_url, [happy_path(9)[:2]])
    client = api.client(api.key("status:read", sites=["US-SITE-1"]))
    created = client.post("/subscriptions", json={"url": receiver.url, "statuses": ["collected", "infused"]})
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["secret"] and sub["statuses"] == ["collected", "infused"]
    assert "secret" not in client.get("/subscriptions").json()[0]

    german = [happy_path(3)[0].model_copy(update={"order": happy_path(3)[0].order.model_copy(update={"site": "DE-1"})})]
    german += happy_path(3)[1:3]
    mine, _ = api_server.build_orders(api.database_url, [happy_path(1), german])
    with session_scope(api.database_url) as session:
        last = session.scalars(select(OrderChange).order_by(OrderChange.tx.desc(), OrderChange.id.desc())).first()
    # The delivery loop pumps again and again; so does this test, until the change feed's horizon
    # (PostgreSQL's, which another worker's transaction on the server holds back a while) passes the
    # last change, for up to 30 s.
    delivered, deadline = 0, time.monotonic() + 30
    while True:
        report = webhooks.pump(api.database_url)
        assert report.failed == 0, report.errors
        delivered += report.delivered
        with session_scope(api.database_url, readonly=True) as session:
            row = session.get(WebhookSubscription, sub["id"])
            caught_up = (row.cursor_tx, row.cursor_id) == (last.tx, last.id)
        if caught_up or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delivered == 2

    payloads = [json.loads(body) for _, body in receiver.requests]
    assert [(p["order_id"], p["status"]) for p in payloads] == [(mine, "collected"), (mine, "infused")]
    assert before not in {p["order_id"] for p in payloads}  # changes before the subscription are not pushed
    for headers, body in receiver.requests:
        assert webhooks.verify_signature(sub["secret"], body, headers["x-cgthub-signature"])
        assert not webhooks.verify_signature("wrong secret", body, headers["x-cgthub-signature"])
        assert headers["x-cgthub-delivery"] == json.loads(body)["id"]
    assert webhooks.pump(api.database_url).delivered == 0  # nothing twice
    assert caught_up  # the cursor moved past the changes filtered out
    listed = client.get("/subscriptions").json()
    assert listed[0]["delivery"] == {"delivered": 2}


def test_a_write_is_committed_before_its_answer(api, receiver, monkeypatch):
    """A 201 means the subscription is stored: the write session commits before the response is
    sent (FastAPI ends a yield dependency after sending unless its scope is "function"; a slow
    commit here would then still be running when the client reads)."""
    client = api.client(api.key("status:read"))
    commit = Session.commit

    def slow_commit(self: Session) -> None:
        time.sleep(0.5)
        commit(self)

    monkeypatch.setattr(Session, "commit", slow_commit)
    created = client.post("/subscriptions", json={"url": receiver.url})
    assert created.status_code == 201, created.text
    with session_scope(api.database_url, readonly=True) as session:  # no commit of its own
        assert session.get(WebhookSubscription, created.json()["id"]) is not None
    assert [s["id"] for s in client.get("/subscriptions").json()] == [created.json()["id"]]


def test_failed_deliveries_back_off_die_and_replay(api, receiver):
    admin = api.client(api.key("admin"))
    sub = admin.post("/subscriptions", json={"url": receiver.url}).json()
    receiver.fail_with = 503
    api_server.build_orders(api.database_url, [happy_path(1)[:2]])

    report = webhooks.pump(api.database_url)
    assert report.failed == 2 and report.delivered == 0 and "HTTP 503" in report.errors[0]
    with session_scope(api.database_url) as session:
        rows = outbox.messages(session, destination_kind="webhook")
        assert {r.status for r in rows} == {"failed"} and all(r.next_attempt_at > utcnow() for r in rows)
    assert webhooks.pump(api.database_url).failed == 0  # backing off: not due yet

    with session_scope(api.database_url) as session:  # time passes, and the receiver stays down
        session.execute(update(outbox.OutboxMessage).values(next_attempt_at=utcnow(), max_attempts=2))
    assert webhooks.pump(api.database_url).dead == 2
    assert admin.get("/subscriptions").json()[0]["delivery"] == {"dead": 2}
    assert len(receiver.requests) == 4

    status_only = api.client(api.key("status:read"))
    assert status_only.post(f"/subscriptions/{sub['id']}/replay").status_code == 403
    receiver.fail_with = None
    assert admin.post(f"/subscriptions/{sub['id']}/replay").json() == {"replayed": 2}
    assert webhooks.pump(api.database_url).delivered == 2
    assert admin.get("/subscriptions").json()[0]["delivery"] == {"delivered": 2}
    deliveries = [h["x-cgthub-delivery"] for h, _ in receiver.requests]
    assert len(set(deliveries)) == 2 and len(deliveries) == 6  # same idempotency keys on every attempt


def test_deleted_subscription_stops_and_is_private(api, receiver):
    owner = api.client(api.key("status:read"))
    sub = owner.post("/subscriptions", json={"url": receiver.url}).json()
    stranger = api.client(api.key("status:read"))
    assert stranger.delete(f"/subscriptions/{sub['id']}").status_code == 404
    assert owner.delete(f"/subscriptions/{sub['id']}").json()["active"] is False
    api_server.build_orders(api.database_url, [happy_path(1)[:1]])
    webhooks.pump(api.database_url)
    assert receiver.requests == []


def test_the_delivery_loop_of_serve_pushes_new_changes(api, receiver):
    client = api.client(api.key("status:read"))
    client.post("/subscriptions", json={"url": receiver.url, "statuses": ["enrolled"]})
    stop = threading.Event()
    loop = threading.Thread(target=webhooks.run_forever, args=(api.database_url, stop), kwargs={"interval": 0.05})
    loop.start()
    try:
        (order_id,) = api_server.build_orders(api.database_url, [happy_path(1)[:1]])
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert [json.loads(body)["order_id"] for _, body in receiver.requests] == [order_id]


def test_a_revoked_keys_subscriptions_get_nothing(api, receiver):
    token = api.key("status:read")
    api.client(token).post("/subscriptions", json={"url": receiver.url})
    from cgthub.api.auth import revoke

    with session_scope(api.database_url) as session:
        revoke(session, token.split("_")[1])
    api_server.build_orders(api.database_url, [happy_path(1)[:2]])
    assert webhooks.pump(api.database_url).delivered == 0 and receiver.requests == []
