"""Red team of the partner edges (docs/red-team.md, "Partner edges"): outbound webhooks, the courier's
webhook receiver and the pull connectors, each attacked over real loopback sockets by a hostile
server or client of the test's own, on SQLite and PostgreSQL where the store is touched."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import requests
from fastapi import FastAPI, Request, Response
from sqlalchemy import func, select

from cgthub import alert_delivery, ledger, ops_config, outbox, quarantine, sync_state
from cgthub.api import webhooks
from cgthub.store import session_scope
from cgthub.sync_state import SyncReport
from cgthub.tables import LedgerEntry, Order, RawMessage, utcnow
from connectors.cmo import sync as cmo_sync
from connectors.cmo.client import CmoClient
from connectors.common import breaker
from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError
from connectors.common.sandbox import SandboxServer
from connectors.courier import webhook as courier_webhook
from connectors.courier.signature import HEADER as COURIER_HEADER
from connectors.courier.signature import sign as courier_sign
from connectors.crm import client as crm_client
from connectors.crm import sync as crm_sync
from connectors.crm.client import CrmClient
from connectors.erp import sandbox as erp_sandbox
from connectors.erp import sync as erp_sync
from connectors.erp.client import ErpClient
from tests.factories import din, happy_path
from tests.hub_log import hub_log
from tests.loopback_http import LoopbackHttpServer


class Hostile(LoopbackHttpServer):
    """A server on loopback that reads a request and then does what `answer` says with the
    connection; it keeps the requests and counts the bytes it managed to send."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.sent = 0
        self.requests: list[bytes] = []
        super().__init__(self._answer)

    def _answer(self, conn: socket.socket, request: bytes) -> None:
        self.requests.append(request)
        self.answer(conn)

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[socket.socket], None]], Hostile]]:
    made: list[Hostile] = []

    def make(answer: Callable[[socket.socket], None]) -> Hostile:
        made.append(Hostile(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _answering(status: bytes, headers: bytes = b"") -> Callable[[Hostile], Callable[[socket.socket], None]]:
    def bind(server: Hostile) -> Callable[[socket.socket], None]:
        return lambda conn: server.send(conn, b"HTTP/1.1 " + status + b"\r\n" + headers + b"Content-Length: 0\r\n\r\n")

    return bind


def _honest(hostile) -> Hostile:
    server = hostile(lambda conn: None)
    server.answer = _answering(b"204 No Content")(server)
    return server


# Outbound webhooks ---------------------------------------------------------------------------------


def _subscribe(db_url: str, monkeypatch, *servers: Hostile, messages: int = 1) -> list[str]:
    """One subscription per server (the operator's allow-list naming each), `messages` due for each."""
    allow = ",".join(f"127.0.0.1:{server.port}" for server in servers)
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", allow)
    ids = []
    with session_scope(db_url) as session:
        for n, server in enumerate(servers):
            sub, _secret = webhooks.create(
                session, key_id=f"key-{n}", url=f"http://127.0.0.1:{server.port}/hook", statuses=[]
            )
            for m in range(messages):
                outbox.enqueue(session, outbox.Destination(webhooks.KIND, sub.id), f"{sub.id}:{m}", {"n": m})
            ids.append(sub.id)
    return ids


def _rows(db_url: str, subscription_id: str) -> list[outbox.OutboxMessage]:
    with session_scope(db_url) as session:
        return outbox.messages(session, destination_kind=webhooks.KIND, destination_id=subscription_id)


def test_a_webhook_target_that_redirects_inward_is_not_followed(db_url, monkeypatch, hostile):
    inward = _honest(hostile)  # something internal the attacker wants reached
    redirecting = hostile(lambda conn: None)
    for status in (b"302 Found", b"307 Temporary Redirect", b"308 Permanent Redirect"):
        redirecting.answer = _answering(status, f"Location: http://127.0.0.1:{inward.port}/\r\n".encode())(redirecting)
        monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", f"127.0.0.1:{redirecting.port}")
        with session_scope(db_url) as session:
            sub, _ = webhooks.create(session, key_id="k", url=f"http://127.0.0.1:{redirecting.port}/", statuses=[])
            outbox.enqueue(session, outbox.Destination(webhooks.KIND, sub.id), f"{sub.id}:1", {"n": 1})
        report = webhooks.deliver(db_url)
        assert report.failed == 1 and report.errors == [f"receiver answered HTTP {status[:3].decode()}"]
    assert inward.connections == 0 and redirecting.connections == 3


def test_a_webhook_target_answering_an_endless_body_is_done_with_at_its_status(db_url, monkeypatch, hostile):
    def endless(conn: socket.socket) -> None:
        endless_server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        while True:  # no length, never closed: read to its end, it is gigabytes a minute
            endless_server.send(conn, b"[" * 65536)

    endless_server = hostile(endless)
    huge = hostile(lambda conn: None)
    huge.answer = _answering(b"500 Internal Server Error", b"X-Pad: " + b"x" * 60000 + b"\r\n")(huge)
    honest = _honest(hostile)
    ids = _subscribe(db_url, monkeypatch, endless_server, huge, honest)
    started = time.monotonic()
    report = webhooks.deliver(db_url)
    assert time.monotonic() - started < 5
    assert report.delivered == 2 and report.failed == 1 and report.errors == ["receiver answered HTTP 500"]
    assert [r.status for r in _rows(db_url, ids[0])] == ["delivered"]
    assert [r.status for r in _rows(db_url, ids[2])] == ["delivered"]
    assert endless_server.sent < 64 * 1024 * 1024  # what the kernel's buffers took before the hub hung up


def test_an_alert_webhook_answering_an_endless_body_is_done_with_at_its_status(hostile):
    def endless(conn: socket.socket) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        while True:
            server.send(conn, b"ok" * 32768)

    server = hostile(endless)
    config = ops_config.Notify(webhook_url=f"http://127.0.0.1:{server.port}/page", timeout_seconds=5)
    started = time.monotonic()
    assert alert_delivery.post({"source": "cgthub", "kind": "test"}, config) == 200
    assert time.monotonic() - started < 5 and server.sent < 64 * 1024 * 1024


def test_the_deadline_alert_callback_is_done_with_an_endless_or_dribbled_answer_at_its_deadline(hostile):
    """Airflow's triggerer awaits cgthub.notifier.sync_deadline_missed: an alert receiver sending a body
    without end, or its head a byte at a time, must not hold the triggerer's loop."""
    import asyncio

    from cgthub.notifier import sync_deadline_missed

    def endless(conn: socket.socket) -> None:
        flooding.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        while True:
            flooding.send(conn, b"ok" * 32768)

    def dribble(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: 1\r\n" * 1000:  # each read is quick
            dribbling.send(conn, bytes([byte]))
            time.sleep(0.1)

    flooding, dribbling = hostile(endless), hostile(dribble)
    for server in (flooding, dribbling):
        config = ops_config.Notify(webhook_url=f"http://127.0.0.1:{server.port}/page", timeout_seconds=1.5)
        started = time.monotonic()
        with patch.object(ops_config, "get", return_value=SimpleNamespace(notify=config)):
            asyncio.run(sync_deadline_missed(dag_label="crm", context={"dag_run": {"run_id": "x"}}))
        assert time.monotonic() - started < 6
    assert flooding.sent < 64 * 1024 * 1024


def test_a_webhook_target_that_dribbles_its_answer_is_cut_at_the_delivery_deadline(db_url, monkeypatch, hostile):
    monkeypatch.setenv("CGTHUB_WEBHOOK_DELIVERY_DEADLINE", "1.5")

    def dribble(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: 1\r\n" * 1000:  # a byte every 0.1 s: each read is quick
            dribbler.send(conn, bytes([byte]))
            time.sleep(0.1)

    dribbler = hostile(dribble)
    honest = _honest(hostile)
    ids = _subscribe(db_url, monkeypatch, dribbler, honest, messages=3)
    started = time.monotonic()
    report = webhooks.deliver(db_url)
    took = time.monotonic() - started
    assert took < 8, took  # the dribble alone would take minutes
    assert report.delivered == 3 and report.failed == 1 and report.postponed == 2
    assert "Timeout" in report.errors[0]
    assert dribbler.connections == 1  # its other two messages were not tried after it failed to answer
    rows = _rows(db_url, ids[0])
    assert [r.attempts for r in rows] == [1, 0, 0] and all(r.next_attempt_at > utcnow() for r in rows)


def test_a_webhook_target_that_never_answers_holds_no_other_subscriber(db_url, monkeypatch, hostile):
    monkeypatch.setenv("CGTHUB_WEBHOOK_DELIVERY_DEADLINE", "4")
    arrived: list[float] = []
    silent = hostile(lambda conn: time.sleep(60))  # accepts, reads the request, never answers
    honest = _honest(hostile)
    honest_answer = honest.answer

    def noted(conn: socket.socket) -> None:
        arrived.append(time.monotonic())
        honest_answer(conn)

    honest.answer = noted
    silent_id, honest_id = _subscribe(db_url, monkeypatch, silent, honest, messages=5)
    # The silent receiver's messages are claimed first (older), as after a partner's outage.
    with session_scope(db_url) as session:
        for row in outbox.messages(session, destination_id=honest_id):
            row.created_at = row.next_attempt_at = utcnow() + timedelta(microseconds=1)
    started = time.monotonic()
    report = webhooks.deliver(db_url)
    took = time.monotonic() - started
    assert report.delivered == 5 and report.failed == 1 and report.postponed == 4, report
    assert len(arrived) == 5 and arrived[-1] - started < 3.5  # before the silent one's deadline ended
    assert took < 12, took  # one deadline, not five (20 s)
    assert silent.connections == 1
    assert [r.attempts for r in _rows(db_url, silent_id)] == [1, 0, 0, 0, 0]


def test_a_webhook_targets_retry_after_is_honoured_and_gone_is_retried_then_dead(db_url, monkeypatch, hostile):
    limited = hostile(lambda conn: None)
    limited.answer = _answering(b"429 Too Many Requests", b"Retry-After: 3600\r\n")(limited)
    dated = hostile(lambda conn: None)
    dated.answer = _answering(b"503 Service Unavailable", b"Retry-After: Fri, 31 Dec 2100 23:59:59 GMT\r\n")(dated)
    gone = hostile(lambda conn: None)
    gone.answer = _answering(b"410 Gone")(gone)
    ids = _subscribe(db_url, monkeypatch, limited, dated, gone)
    before = utcnow()
    webhooks.deliver(db_url)
    (limited_row,), (dated_row,), (gone_row,) = (_rows(db_url, i) for i in ids)
    assert limited_row.next_attempt_at >= before + timedelta(seconds=3600)  # not after the 5 s backoff
    assert before + timedelta(minutes=59) < dated_row.next_attempt_at <= utcnow() + outbox.MAX_DELAY
    assert gone_row.status == "failed" and gone_row.next_attempt_at <= utcnow() + outbox.BASE_DELAY
    with session_scope(db_url) as session:  # the receiver stays gone: dead after its attempts, replayable
        for row in outbox.messages(session, destination_id=ids[2]):
            row.next_attempt_at, row.max_attempts = utcnow(), 2
    assert webhooks.deliver(db_url).dead == 1
    assert gone.connections == 2 and limited.connections == 1


def test_a_webhook_secret_is_in_no_error_log_or_answer(db_url, monkeypatch, hostile):
    def echo(conn: socket.socket) -> None:  # a receiver that quotes our request back in its error
        request = echoing.requests[-1]
        echoing.send(conn, b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(request) + request)

    echoing = hostile(echo)
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    with session_scope(db_url) as session:
        refused_sub, refused_secret = webhooks.create(
            session, key_id="k2", url=f"http://127.0.0.1:{closed_port}/", statuses=[]
        )
        outbox.enqueue(session, outbox.Destination(webhooks.KIND, refused_sub.id), "r:1", {"n": 1})
    (echo_id,) = _subscribe(db_url, monkeypatch, echoing)
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", f"127.0.0.1:{echoing.port},127.0.0.1:{closed_port}")
    with session_scope(db_url) as session:
        echo_secret = webhooks.secret_of(session.get(webhooks.WebhookSubscription, echo_id))
        for row in outbox.messages(session):
            row.max_attempts = 1  # dead at once: the dead-letter warning is logged too
    with hub_log() as lines:
        report = webhooks.deliver(db_url)
    assert report.dead == 2 and "is dead after 1 attempts" in lines.text
    assert b"X-CGTHub-Signature: t=" in echoing.requests[0]
    with session_scope(db_url) as session:
        stored = " ".join(str(r.last_error) for r in outbox.messages(session))
    for secret in (echo_secret, refused_secret):
        assert secret not in lines.text and secret not in stored and secret not in " ".join(report.errors)
    assert "v1=" not in lines.text + stored  # nor a signature made with it


# The courier's webhook receiver ---------------------------------------------------------------------

COURIER_SECRET = "whsec-red-team"


@pytest.fixture
def courier_receiver(db_url: str) -> Iterator[str]:
    """The receiver served on loopback; yields the URL the courier posts to."""
    with session_scope(db_url) as session:
        ledger.append_many(session, happy_path(1)[:3])  # order 1 enrolled and collected: its outbound leg next
    with SandboxServer(courier_webhook.create_app(secret=COURIER_SECRET, database_url=db_url, drain_every=None)) as app:
        yield f"{app.base_url}/webhooks/courier"


def _tracking(event_id: str, status: str, when: str, shipment: str = "SHP-1-OUT", crm: str = "CRM-00001") -> bytes:
    event = {
        "eventId": event_id,
        "shipmentId": shipment,
        "status": status,
        "timestamp": when,
        "direction": "TO_MANUFACTURER",
        "reference": {"crmOrderId": crm},
        "contents": {"din": din(1)},
    }
    return json.dumps(event).encode()


def _signed(url: str, body: bytes, signature: str | None = None) -> requests.Response:
    headers = {"content-type": "application/json", COURIER_HEADER: signature or courier_sign(COURIER_SECRET, body)}
    return requests.post(url, data=body, headers=headers, timeout=30)


def _order_state(db_url: str) -> tuple[list[str], int, int]:
    with session_scope(db_url) as session:
        statuses = [o.status for o in session.scalars(select(Order).order_by(Order.id))]
        entries = session.scalar(select(func.count()).select_from(LedgerEntry)) or 0
        raw = session.scalar(select(func.count()).select_from(RawMessage).where(RawMessage.system == "courier")) or 0
    return statuses, entries, raw


def test_courier_events_unsigned_or_wrongly_signed_are_refused_and_nothing_is_kept(db_url, courier_receiver):
    body = _tracking("EVT-1", "DELIVERED", "2026-03-10T09:30:00-05:00")
    before = _order_state(db_url)
    answers = [
        requests.post(courier_receiver, data=body, timeout=30),  # unsigned
        _signed(courier_receiver, body, courier_sign("another-secret", body)),
        _signed(courier_receiver, body, "sha256=" + "0" * 64),
        _signed(courier_receiver, body, courier_sign(COURIER_SECRET, body).upper()),
        _signed(courier_receiver, body + b" ", courier_sign(COURIER_SECRET, body)),  # body changed after signing
        _signed(courier_receiver, body, "sha1=" + courier_sign(COURIER_SECRET, body)[7:]),
    ]
    assert [a.status_code for a in answers] == [401] * 6
    assert all(a.json() == {"error": "missing or invalid X-Courier-Signature"} for a in answers)
    assert _order_state(db_url) == before


def test_a_courier_event_replayed_later_is_applied_once_and_moves_nothing_back(db_url, courier_receiver):
    picked_up = _tracking("EVT-1", "PICKED_UP", "2026-03-09T14:00:00-05:00")
    delivered = _tracking("EVT-2", "DELIVERED", "2026-03-10T09:30:00-05:00")
    first = _signed(courier_receiver, picked_up)
    assert first.status_code == 202 and first.json()["appended"] == 1, first.text
    assert _signed(courier_receiver, delivered).json()["appended"] == 1
    after = _order_state(db_url)
    # An attacker (or the courier's retry) posts the first signed event again, a day later.
    replayed = _signed(courier_receiver, picked_up)
    assert replayed.status_code == 202 and replayed.json()["appended"] == 0 and replayed.json().get("duplicate")
    # The same event id re-sent with other content under a fresh signature is not applied either.
    edited = _tracking("EVT-1", "PICKED_UP", "2026-03-11T14:00:00-05:00")
    assert _signed(courier_receiver, edited).json()["appended"] == 0
    statuses, entries, _raw = _order_state(db_url)
    assert (statuses, entries) == (after[0], after[1]) and statuses == ["received_at_cmo"]


def test_a_signed_courier_event_for_another_shipment_or_order_changes_no_order(db_url, courier_receiver):
    before = _order_state(db_url)
    for body in (
        _tracking("EVT-7", "DELIVERED", "2026-03-10T09:30:00-05:00", crm="CRM-00002"),  # no such order here
        _tracking("EVT-8", "DELIVERED", "2026-03-10T09:30:00-05:00", shipment="SHP-2-OUT", crm="CRM-99999"),
    ):
        answer = _signed(courier_receiver, body)
        assert answer.status_code == 202 and answer.json()["appended"] == 0 and answer.json()["quarantined"]
    statuses, entries, raw = _order_state(db_url)
    assert (statuses, entries, raw) == (before[0], before[1], before[2] + 2)
    with session_scope(db_url) as session:
        assert len(quarantine.list_entries(session, system="courier")) == 2


def test_a_signed_courier_event_nested_a_million_deep_is_archived_and_quarantined(db_url, courier_receiver):
    before = _order_state(db_url)
    with hub_log() as lines:
        for body in (b"[" * 1_000_000 + b"]" * 1_000_000, b'{"a":' * 200_000 + b"1" + b"}" * 200_000):
            answer = _signed(courier_receiver, body)
            assert answer.status_code == 202 and answer.json()["appended"] == 0
            reason = answer.json()["quarantined"][0]
            assert "nested deeper than the hub reads (1,024 levels)" in reason, reason
            assert "fix the mapping" not in reason  # the payload is the sender's to fix, not the mapping
    assert "quarantined raw #" in lines.text and "Traceback" not in lines.text
    statuses, entries, raw = _order_state(db_url)
    assert (statuses, entries, raw) == (before[0], before[1], before[2] + 2)
    assert _signed(courier_receiver, _tracking("EVT-1", "PICKED_UP", "2026-03-09T14:00:00-05:00")).status_code == 202


# Pull connectors --------------------------------------------------------------------------------------

PATIENT = ("Johanna Okonkwo-Smith", "MRN48213377", "1961-04-17")


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    breaker._breakers.clear()
    yield
    breaker._breakers.clear()


class HostileCrm:
    """A CRM on loopback that grants any token and answers each listing with `page(cursor)`'s raw bytes."""

    def __init__(self, hostile, page: Callable[[int, socket.socket], None]) -> None:
        self.cursors: list[int] = []
        self.server = hostile(self._answer)
        self.page = page

    def _answer(self, conn: socket.socket) -> None:
        head = self.server.requests[-1].split(b"\r\n", 1)[0].decode()
        if "/oauth/token" in head:
            body = b'{"access_token": "t", "expires_in": 300}'
            self.server.send(conn, _json_head(len(body)) + body)
            return
        cursor = int(head.split("cursor=", 1)[1].split("&", 1)[0].split(" ", 1)[0])
        self.cursors.append(cursor)
        self.page(cursor, conn)

    def client(self) -> CrmClient:
        return CrmClient(
            PartnerConnection("crm_api", f"http://127.0.0.1:{self.server.port}", "id", "secret"), attempts=1
        )


def _json_head(length: int | None, content_type: bytes = b"application/json") -> bytes:
    size = b"Content-Length: %d\r\n" % length if length is not None else b""
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n" + size + b"Connection: close\r\n\r\n"


def _page(crm: HostileCrm, conn: socket.socket, items: list[dict], next_cursor: object) -> None:
    body = json.dumps({"items": items, "nextCursor": next_cursor}).encode()
    crm.server.send(conn, _json_head(len(body)) + body)


def _crm_pull(db_url: str, crm: HostileCrm, *, within: float) -> tuple[SyncReport, float]:
    started = time.monotonic()
    report = crm_sync.pull(database_url=db_url, crm=crm.client())
    took = time.monotonic() - started
    assert took < within, took
    return report, took


def test_a_crm_page_cursor_that_loops_back_or_never_ends_stops_the_walk(db_url, hostile, monkeypatch):
    looping = HostileCrm(hostile, lambda cursor, conn: _page(looping, conn, [], {0: 200, 200: 400, 400: 0}[cursor]))
    report, _took = _crm_pull(db_url, looping, within=10)
    assert looping.cursors == [0, 200, 400]
    assert report.payloads == 3 and any("listing orders loops" in e for e in report.errors)
    # A cursor that moves on for ever, every page empty: a walk ends after MAX_PAGES pages.
    monkeypatch.setattr(crm_client, "MAX_PAGES", 40)
    endless = HostileCrm(hostile, lambda cursor, conn: _page(endless, conn, [], cursor + 200))
    report, _took = _crm_pull(db_url, endless, within=20)
    assert len(endless.cursors) == 40 and report.payloads == 40


def test_a_cmo_event_cursor_that_goes_back_does_not_move_the_stream_back(db_url, hostile):
    answers = iter([5, 0, 5])  # the feed's next sequence: on, then back to the start, then on again
    seen: list[str] = []

    def feed(conn: socket.socket) -> None:
        seen.append(cmo.requests[-1].split(b"\r\n", 1)[0].decode())
        body = json.dumps({"items": [], "next": next(answers)}).encode()
        cmo.send(conn, _json_head(len(body)) + body)

    cmo = hostile(feed)
    client = CmoClient(PartnerConnection("cmo_api", f"http://127.0.0.1:{cmo.port}", None, "key"), attempts=1)
    first = cmo_sync.pull(database_url=db_url, cmo=client, pages=1)
    back = cmo_sync.pull(database_url=db_url, cmo=client, pages=1)
    assert first.errors == [] and back.errors == [
        "page 1: the CMO's next cursor goes back before 5; kept at 5 (archived as raw #2)"
    ]
    cmo_sync.pull(database_url=db_url, cmo=client, pages=1)
    assert ["after=0" in seen[0], "after=5" in seen[1], "after=5" in seen[2]] == [True, True, True]
    with session_scope(db_url) as session:
        assert sync_state.state(session, "cmo", "events").cursor == "5"


def test_a_partner_page_of_millions_of_records_or_an_endless_body_is_cut_at_the_size_cap(db_url, hostile, monkeypatch):
    monkeypatch.setenv("CGTHUB_PARTNER_MAX_RESPONSE_BYTES", str(1024 * 1024))
    record = json.dumps({"id": "CRM-00001", "therapy": "cart19"}).encode()

    def declared(cursor: int, conn: socket.socket) -> None:  # says 300 MB up front
        crm_declared.server.send(conn, _json_head(300_000_000) + b'{"items": [' + record)

    def endless(cursor: int, conn: socket.socket) -> None:  # no length: millions of records until we hang up
        crm_endless.server.send(conn, _json_head(None) + b'{"items": [' + record)
        while True:
            crm_endless.server.send(conn, (b"," + record) * 2000)

    crm_declared, crm_endless = HostileCrm(hostile, declared), HostileCrm(hostile, endless)
    for crm, said in ((crm_declared, "declares 300,000,000 bytes, over 1,048,576"), (crm_endless, "passed 1,048,576")):
        report, _took = _crm_pull(db_url, crm, within=10)
        assert report.payloads == 0 and any(said in e for e in report.errors), report.errors
    assert crm_endless.server.sent < 64 * 1024 * 1024


def test_a_partner_that_dribbles_its_answer_is_cut_at_the_response_deadline(db_url, hostile, monkeypatch):
    monkeypatch.setenv("CGTHUB_PARTNER_RESPONSE_DEADLINE", "1")
    body = json.dumps({"items": [], "nextCursor": None}).encode() + b" " * 5000

    def dribble(cursor: int, conn: socket.socket) -> None:  # a byte every 0.05 s: each read well within 10 s
        crm.server.send(conn, _json_head(len(body)))
        for byte in body:
            crm.server.send(conn, bytes([byte]))
            time.sleep(0.05)

    crm = HostileCrm(hostile, dribble)
    report, _took = _crm_pull(db_url, crm, within=10)  # the dribble alone: 250 s
    assert report.payloads == 0 and any("took over 1 s; stopped reading" in e for e in report.errors)


def test_a_partner_answer_of_the_wrong_content_type_is_archived_and_quarantined(db_url, hostile):
    html = b"<html><body>Maintenance</body></html>"
    crm = HostileCrm(hostile, lambda cursor, conn: crm.server.send(conn, _json_head(len(html), b"text/html") + html))
    report, _took = _crm_pull(db_url, crm, within=10)
    assert report.payloads == 1 and report.quarantined == 1
    assert any("expected JSON, got text/html" in e for e in report.errors)
    with session_scope(db_url) as session:
        (entry,) = quarantine.list_entries(session, system="crm")
        assert "not valid JSON" in entry.reason and entry.stage == "parse"


def test_phi_in_a_crm_error_body_reaches_no_log_report_or_reason(db_url, hostile):
    body = json.dumps({"error": f"patient {PATIENT[0]} ({PATIENT[1]}, born {PATIENT[2]}) is locked"}).encode()

    def refuse(cursor: int, conn: socket.socket) -> None:
        crm.server.send(conn, b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n")
        crm.server.send(conn, b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    crm = HostileCrm(hostile, refuse)
    with hub_log("cgthub", "connectors") as lines:
        report, _took = _crm_pull(db_url, crm, within=10)
        assert lines.hears("cgthub.partner_sync") and lines.hears("connectors.common.http")
    assert report.errors == ["crm: listing orders answered 400"]
    with session_scope(db_url) as session:
        reasons = " ".join(e.reason for e in quarantine.list_entries(session))
    for value in PATIENT:
        assert value not in lines.text + reasons + " ".join(report.errors)


class HostileErp:
    """An ERP on loopback: the sandbox's WSDL, and every SOAP call answered with `envelope`."""

    def __init__(self, envelope: bytes, status: int = 200) -> None:
        app = FastAPI()

        @app.get("/erp/soap")
        def wsdl(request: Request) -> Response:
            text = erp_sandbox.WSDL.read_text().replace("http://127.0.0.1/erp/soap", str(request.url.replace(query="")))
            return Response(text, media_type="text/xml")

        @app.post("/erp/soap")
        def soap() -> Response:
            return Response(envelope, status_code=status, media_type="text/xml")

        self.server = SandboxServer(app)

    def __enter__(self) -> ErpClient:
        self.server.__enter__()
        return ErpClient(PartnerConnection("erp_soap", f"{self.server.base_url}/erp/soap"), attempts=1)

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def _soap(doctype: bytes, inner: bytes) -> bytes:
    return (
        b'<?xml version="1.0"?>' + doctype + b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        b'xmlns:erp="urn:cgthub:sandbox:erp"><soap:Body>' + inner + b"</soap:Body></soap:Envelope>"
    )


SECRET_FILE_LINE = "red-team-secret-line"


@pytest.mark.parametrize(
    "doctype",
    [
        b'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{path}">]>',  # external entity: a file of the hub's
        b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY xxe "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',  # laughs
        b'<!DOCTYPE x SYSTEM "http://169.254.169.254/latest/meta-data/x.dtd"><!-- &xxe; -->',  # external DTD
    ],
    ids=["external-entity", "entity-expansion", "external-dtd"],
)
def test_an_erp_answer_with_a_dtd_or_entities_is_refused_or_kept_unexpanded(db_url, monkeypatch, tmp_path, doctype):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET_FILE_LINE)
    doctype = doctype.replace(b"{path}", str(secret).encode())
    order = b"<salesOrderNumber>SO-1</salesOrderNumber><crmOrderId>&xxe;</crmOrderId>"
    created = _soap(
        doctype, b"<erp:CreateSalesOrderResponse><salesOrder>" + order + b"</salesOrder></erp:CreateSalesOrderResponse>"
    )
    listed = _soap(
        doctype, b"<erp:GetSalesOrdersResponse><salesOrder>" + order + b"</salesOrder></erp:GetSalesOrdersResponse>"
    )
    with HostileErp(created) as erp, pytest.raises(PartnerError, match="DTD or entity declarations"):
        erp.create_sales_order("CRM-00001", "MAT-CART19", "US10")
    with HostileErp(listed) as erp, hub_log() as lines:
        report = erp_sync.pull(database_url=db_url, erp=erp)
    assert report.payloads == 2 and report.appended == 0  # archived as received; nothing expanded applied
    with session_scope(db_url) as session:
        reasons = " ".join(e.reason for e in quarantine.list_entries(session))
        ledger_text = " ".join(json.dumps(o.projection) for o in session.scalars(select(Order)))
    assert SECRET_FILE_LINE not in reasons + ledger_text + lines.text + " ".join(report.errors)
    assert "a" * 1000 not in reasons + ledger_text + lines.text


def test_phi_in_an_erp_soap_fault_reaches_no_quarantine_reason(db_url):
    fault = f"patient {PATIENT[0]} ({PATIENT[1]}) has no sales order".encode()
    envelope = _soap(
        b"", b"<soap:Fault><faultcode>soap:Client</faultcode><faultstring>" + fault + b"</faultstring></soap:Fault>"
    )
    with HostileErp(envelope, status=500) as erp:
        report = erp_sync.pull(database_url=db_url, erp=erp)
    assert report.quarantined == 2
    with session_scope(db_url) as session:
        reasons = " ".join(e.reason for e in quarantine.list_entries(session))
    assert PATIENT[1] not in reasons + " ".join(report.errors)
