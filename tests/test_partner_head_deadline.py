"""A partner that trickles its answer's head (status line, then a header byte every 0.2 s) cannot hang
a sync: the HTTP pulls (CRM, CMO, courier: PartnerSession) and the ERP's zeep transport end the call
within CGTHUB_PARTNER_RESPONSE_DEADLINE of sending it, head included, over real loopback sockets;
an honest partner that is slow but in time is still read. The DAGs' tasks carry an execution_timeout
as a backstop (cgthub.dag_defaults)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from connectors.common import breaker
from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError, PartnerSession
from connectors.crm import sync as crm_sync
from connectors.crm.client import CrmClient
from connectors.erp.client import ErpClient
from connectors.erp.sandbox import WSDL
from tests.loopback_http import LoopbackHttpServer

DEADLINE = 1.0
MARGIN = 2.5  # a loaded shared machine: the watchdog's timer and the unwinding after it
TRICKLE = 0.2  # seconds between two header bytes: each socket read well within requests' 10 s


class Partner(LoopbackHttpServer):
    """A partner on loopback: `answer(partner, conn, request_line)` for each request. It notes when
    the hub hung up on a trickle, and stops trickling when the test ends."""

    def __init__(self, answer: Callable[[Partner, socket.socket, str], None]) -> None:
        self.answer = answer
        self.hung_up = threading.Event()
        super().__init__(lambda conn, request: self.answer(self, conn, request.split(b"\r\n", 1)[0].decode()))

    def trickle_head(self, conn: socket.socket, *, header_bytes: int = 10_000, then: bytes | None = None) -> None:
        """`HTTP/1.1 200 OK`, then one header byte every TRICKLE s; `then` (a blank line and a body)
        after `header_bytes` bytes. A send failing means the hub hung up."""
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        try:
            for _ in range(header_bytes):
                if self.stopped.is_set():
                    return
                conn.sendall(b"a")
                time.sleep(TRICKLE)
            conn.sendall(b"\r\n" + (then or b""))
        except OSError:
            self.hung_up.set()


@pytest.fixture
def partner() -> Iterator[Callable[[Callable[[Partner, socket.socket, str], None]], Partner]]:
    made: list[Partner] = []

    def make(answer: Callable[[Partner, socket.socket, str], None]) -> Partner:
        made.append(Partner(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture(autouse=True)
def _small_deadline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CGTHUB_PARTNER_RESPONSE_DEADLINE", str(DEADLINE))
    breaker._breakers.clear()
    yield
    breaker._breakers.clear()


def _timed(call: Callable[[], Any]) -> tuple[BaseException | None, Any, float]:
    """`call()` in a thread of its own, joined at the deadline plus margin: it must have ended by then
    (a thread still blocked on the partner's socket fails the test instead of hanging it)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE + MARGIN + 5)
    took = time.monotonic() - started
    assert not worker.is_alive(), f"the call still hangs after {took:.1f} s"
    return outcome.get("error"), outcome.get("value"), took


def _no_watchdog_left() -> bool:
    """Every watchdog timer of the calls made has ended (cancelled, or fired and done)."""
    for _ in range(50):
        if not any(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate()):
            return True
        time.sleep(0.02)
    return False


def _ok_json(server: Partner, conn: socket.socket, line: str) -> None:
    body = b'{"access_token": "t", "expires_in": 300, "items": [], "nextCursor": null}'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_a_pull_whose_partner_trickles_its_head_fails_at_the_deadline_naming_the_call(partner):
    trickling = partner(lambda server, conn, line: server.trickle_head(conn))
    session = PartnerSession("cmo", trickling.url, attempts=6)

    error, _value, took = _timed(lambda: session.request("GET", "/v1/events?after=0"))

    assert isinstance(error, PartnerError), error
    assert str(error) == "cmo: the answer to GET /v1/events?after=0 took over 1 s; stopped reading"
    assert DEADLINE <= took < DEADLINE + MARGIN, took
    assert trickling.connections == 1  # not retried: it would trickle again, `attempts` deadlines long
    assert trickling.hung_up.wait(3)  # the hub closed the connection; the partner's thread ends
    assert _no_watchdog_left()


def test_a_proxy_that_trickles_the_head_is_cut_at_the_deadline_too(partner):
    """requests honours HTTP_PROXY and the like: a broken proxy between the hub and its partner is
    watched as a partner is."""
    proxy = partner(lambda server, conn, line: server.trickle_head(conn))
    session = PartnerSession("courier", "http://courier.example", attempts=3)
    session.http.proxies = {"http": proxy.url}

    error, _value, took = _timed(lambda: session.request("GET", "/v1/shipments"))

    assert isinstance(error, PartnerError), error
    assert str(error) == "courier: the answer to GET /v1/shipments took over 1 s; stopped reading"
    assert took < DEADLINE + MARGIN and proxy.connections == 1 and proxy.hung_up.wait(3), took


def test_a_crm_pull_whose_partner_trickles_its_head_reports_the_deadline(db_url, partner):
    """Through the sync the ingest DAG runs: the report names the partner, the call and the deadline."""

    def crm(server: Partner, conn: socket.socket, line: str) -> None:
        if "/oauth/token" in line:
            _ok_json(server, conn, line)
        else:
            server.trickle_head(conn)

    trickling = partner(crm)
    client = CrmClient(PartnerConnection("crm_api", trickling.url, "id", "secret"))

    _error, report, took = _timed(lambda: crm_sync.pull(database_url=db_url, crm=client))

    assert took < DEADLINE + MARGIN, took
    assert report.payloads == 0
    assert any(
        "crm: the answer to GET /api/orders" in e and "took over 1 s; stopped reading" in e for e in report.errors
    ), report.errors
    assert trickling.hung_up.wait(3)


def test_an_honest_partner_slow_but_in_time_is_still_read(partner, monkeypatch):
    monkeypatch.setenv("CGTHUB_PARTNER_RESPONSE_DEADLINE", "4")
    body = b'{"items": [], "nextCursor": null}'
    then = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    slow = partner(lambda server, conn, line: server.trickle_head(conn, header_bytes=6, then=then))  # ~1.2 s

    error, answer, took = _timed(lambda: PartnerSession("crm", slow.url).request("GET", "/api/v1/orders"))

    assert error is None and answer.json() == {"items": [], "nextCursor": None}
    assert took >= 6 * TRICKLE
    assert _no_watchdog_left()


def _erp(head_of_post: Callable[[Partner, socket.socket], None], *, wsdl_trickled: bool = False) -> Callable[..., None]:
    wsdl = WSDL.read_bytes()

    def answer(server: Partner, conn: socket.socket, line: str) -> None:
        if line.startswith("GET") and not wsdl_trickled:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(wsdl) + wsdl)
        elif line.startswith("GET"):
            server.trickle_head(conn)
        else:
            head_of_post(server, conn)

    return answer


def test_the_erp_whose_soap_answer_trickles_its_head_fails_at_the_deadline(partner):
    erp = partner(_erp(lambda server, conn: server.trickle_head(conn)))
    client = ErpClient(PartnerConnection("erp_soap", f"{erp.url}/erp/soap"))

    error, _value, took = _timed(lambda: client.sales_orders_raw(None))

    assert isinstance(error, PartnerError), error
    assert str(error) == "erp: the answer to POST GetSalesOrders took over 1 s; stopped reading"
    assert DEADLINE <= took < DEADLINE + MARGIN, took
    assert erp.connections == 2  # the WSDL, then the one call: neither urllib3 nor tenacity retried it
    assert erp.hung_up.wait(3)
    assert _no_watchdog_left()


def test_the_erp_whose_wsdl_trickles_its_head_fails_at_the_deadline(partner):
    erp = partner(_erp(lambda server, conn: None, wsdl_trickled=True))

    error, _value, took = _timed(lambda: ErpClient(PartnerConnection("erp_soap", f"{erp.url}/erp/soap")))

    assert isinstance(error, PartnerError) and "erp: the answer to GET the WSDL took over 1 s" in str(error), error
    assert took < DEADLINE + MARGIN, took


def test_the_erp_answer_is_bounded_by_the_size_cap_too(partner, monkeypatch):
    """zeep read the answer whole through requests: it now passes the same cap as the HTTP pulls."""

    def endless(server: Partner, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<a>")
            while not server.stopped.is_set():
                conn.sendall(b"<b/>" * 1024)
        except OSError:
            server.hung_up.set()

    erp = partner(_erp(endless))
    client = ErpClient(PartnerConnection("erp_soap", f"{erp.url}/erp/soap"))
    monkeypatch.setenv("CGTHUB_PARTNER_MAX_RESPONSE_BYTES", "4096")  # the WSDL is 9 KB

    error, _value, _took = _timed(lambda: client.goods_movements_raw(None))

    assert isinstance(error, PartnerError) and str(error) == (
        "erp: the answer to POST GetGoodsMovements passed 4,096 bytes; stopped reading"
    ), error


def test_an_honest_erp_slow_but_in_time_is_still_read(partner, monkeypatch):
    monkeypatch.setenv("CGTHUB_PARTNER_RESPONSE_DEADLINE", "4")
    body = b"<ok/>"
    then = b"Content-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    erp = partner(_erp(lambda server, conn: server.trickle_head(conn, header_bytes=6, then=then)))
    client = ErpClient(PartnerConnection("erp_soap", f"{erp.url}/erp/soap"))

    error, raw, took = _timed(lambda: client.sales_orders_raw(None))

    assert error is None and raw == b"<ok/>"
    assert took >= 6 * TRICKLE


def test_the_dags_tasks_carry_an_execution_timeout_sized_from_the_partner_deadline(monkeypatch):
    from cgthub.dag_defaults import default_args

    monkeypatch.setenv("CGTHUB_PARTNER_RESPONSE_DEADLINE", "60")
    assert default_args()["execution_timeout"] == timedelta(hours=1)  # ten calls, six attempts each at 60 s
    monkeypatch.setenv("CGTHUB_PARTNER_RESPONSE_DEADLINE", "30")
    assert default_args(retries=3)["execution_timeout"] == timedelta(minutes=30)
    monkeypatch.setenv("CGTHUB_TASK_EXECUTION_TIMEOUT", "900")
    assert default_args()["execution_timeout"] == timedelta(minutes=15)


def test_every_task_of_the_hubs_dags_carries_the_execution_timeout(monkeypatch):
    """As the DAG processor parses them: no DAG file sets default_args of its own without it."""
    from airflow.dag_processing.dagbag import DagBag

    from cgthub import airflow_env

    monkeypatch.setenv("CGTHUB_TASK_EXECUTION_TIMEOUT", "1234")
    bag = DagBag(dag_folder=str(airflow_env.DAGS_FOLDER))
    assert not bag.import_errors and len(bag.dags) >= 7
    timeouts = {(name, task.task_id): task.execution_timeout for name, dag in bag.dags.items() for task in dag.tasks}
    assert set(timeouts.values()) == {timedelta(seconds=1234)}, timeouts
