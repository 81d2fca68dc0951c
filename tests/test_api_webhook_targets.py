"""Webhooks reach only public addresses, unless the operator's allow-list names the target: checked
when subscribing and again at delivery, on the address actually connected to."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from cgthub import outbox
from cgthub.api import webhook_targets, webhooks
from cgthub.store import session_scope
from cgthub.tables import utcnow
from tests import api_server
from tests.factories import happy_path

api = api_server.api

PUBLIC = "93.184.216.34"


class Receiver:
    """An HTTP server on loopback that notes every request's Host header."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hosts.append(self.headers["Host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """Names the test controls, as a hostile DNS server would (None: no such name); others resolve as usual."""
    answers: dict[str, str | None] = {}
    real = webhook_targets.resolve

    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            return real(host, port)
        answer = answers[host]
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [answer]

    monkeypatch.setattr(webhook_targets, "resolve", resolve)
    return answers


def _refused(answer) -> None:
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "webhook_target_refused" and error["details"] == [
        {"location": "body.url", "problem": "target refused"}
    ]
    assert "CGTHUB_WEBHOOK_ALLOW" in error["message"]


def test_a_site_key_cannot_point_webhooks_inward(api, receiver, monkeypatch):
    monkeypatch.delenv("CGTHUB_WEBHOOK_ALLOW", raising=False)
    site_key = api.client(api.key("status:read", sites=["US-SITE-1"]))
    api_port = int(api.base_url.rsplit(":", 1)[1])
    inward = [
        f"http://127.0.0.1:{api_port}/",  # the hub's own API
        f"http://127.0.0.1:{receiver.port}/hooks",  # something listening on loopback
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://localhost:2575/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://10.0.0.7/",
        "http://172.16.3.4/",
        "http://192.168.1.1/",
        "http://[fd12:3456::1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0:9000/",
        "http://224.0.0.251/",
        "http://100.64.0.1/",
        f"http://{PUBLIC}/",  # a public address of this very machine
    ]
    monkeypatch.setattr(webhook_targets, "own_addresses", lambda: frozenset({ipaddress.ip_address(PUBLIC)}))
    for url in inward:
        _refused(site_key.post("/subscriptions", json={"url": url}))
    assert site_key.get("/subscriptions").json() == []


def test_the_allow_list_opens_exactly_what_it_names(api, receiver, monkeypatch):
    client = api.client(api.key("admin"))
    target = f"http://127.0.0.1:{receiver.port}/hooks"
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", f"127.0.0.1:{receiver.port},hooks.internal")
    assert client.post("/subscriptions", json={"url": target}).status_code == 201
    _refused(client.post("/subscriptions", json={"url": f"http://127.0.0.1:{_closed_port()}/"}))
    # A host named without a port opens its ports but the hub's own.
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", "127.0.0.1")
    monkeypatch.setenv("CGTHUB_MLLP_LISTENER", "0.0.0.0:12575")
    assert client.post("/subscriptions", json={"url": target}).status_code == 201
    api_port = int(api.base_url.rsplit(":", 1)[1])
    for port in (2575, 8080, 8088, 12575, api_port):
        _refused(client.post("/subscriptions", json={"url": f"http://127.0.0.1:{port}/"}))

    api_server.build_orders(api.database_url, [happy_path(1)[:1]])
    assert webhooks.pump(api.database_url).delivered == 2 and len(receiver.hosts) == 2


def test_a_name_that_rebinds_inward_is_refused_at_delivery_whatever_the_port(api, receiver, dns, monkeypatch):
    monkeypatch.delenv("CGTHUB_WEBHOOK_ALLOW", raising=False)
    client = api.client(api.key("status:read", sites=["US-SITE-1"]))
    dns.update({"open.rebind.test": PUBLIC, "closed.rebind.test": PUBLIC})
    open_url = f"http://open.rebind.test:{receiver.port}/"
    closed_url = f"http://closed.rebind.test:{_closed_port()}/"
    subs = [client.post("/subscriptions", json={"url": url}).json()["id"] for url in (open_url, closed_url)]
    dns.update({"open.rebind.test": "127.0.0.1", "closed.rebind.test": "127.0.0.1"})

    api_server.build_orders(api.database_url, [happy_path(1)[:2]])
    report = webhooks.pump(api.database_url)
    assert (report.delivered, report.failed) == (0, 4) and receiver.hosts == []
    # An open port and a closed one look the same to the subscriber, and to the operator.
    views = {s["id"]: s["delivery"] for s in client.get("/subscriptions").json()}
    assert views == {subs[0]: {"failed": 2}, subs[1]: {"failed": 2}}
    with session_scope(api.database_url) as session:
        errors = set(session.scalars(select(outbox.OutboxMessage.last_error)))
    assert len(errors) == 1 and errors.pop().startswith("target refused: ")


def test_delivery_connects_to_the_address_it_checked(api, receiver, dns, monkeypatch):
    """The name is resolved once, by the check; the request goes to that address with the URL's Host."""
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", "hooks.internal")
    dns["hooks.internal"] = "127.0.0.1"  # no real DNS knows this name: only a pinned address reaches it
    client = api.client(api.key("status:read"))
    url = f"http://hooks.internal:{receiver.port}/cgthub"
    assert client.post("/subscriptions", json={"url": url}).status_code == 201
    api_server.build_orders(api.database_url, [happy_path(1)[:1]])
    assert webhooks.pump(api.database_url).delivered == 1
    assert receiver.hosts == [f"hooks.internal:{receiver.port}"]


def test_a_name_not_yet_in_dns_is_judged_when_delivering(api, dns, monkeypatch):
    monkeypatch.delenv("CGTHUB_WEBHOOK_ALLOW", raising=False)
    client = api.client(api.key("status:read"))
    dns["later.rebind.test"] = None
    assert client.post("/subscriptions", json={"url": "https://later.rebind.test/hooks"}).status_code == 201
    api_server.build_orders(api.database_url, [happy_path(1)[:1]])
    report = webhooks.pump(api.database_url)
    assert report.failed == 1 and report.errors == ["target refused: the URL's host does not resolve"]
    dns["later.rebind.test"] = "10.9.8.7"
    with session_scope(api.database_url) as session:
        session.execute(update(outbox.OutboxMessage).values(next_attempt_at=utcnow()))
    report = webhooks.pump(api.database_url)
    assert report.failed == 1 and report.errors[0].startswith("target refused: webhooks may not reach")
