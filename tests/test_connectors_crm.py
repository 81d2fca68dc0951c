"""CRM connector: client edge cases against `responses`, sync against the sandbox over loopback."""

import json

import pytest
import requests
import responses
from sqlalchemy import func, select

from cgthub import quarantine
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order, RawMessage
from connectors.common import breaker
from connectors.common.connection import PartnerConnection, get_connection
from connectors.common.http import PartnerError
from connectors.common.sandbox import FaultConfig, SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync
from connectors.crm.client import CrmClient

BASE = "http://crm.test"
CONN = PartnerConnection("crm_api", BASE, "cgthub", "sandbox-secret")


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()
    yield
    breaker._breakers.clear()


def _token(rsps, value="t1", ttl=300):
    return rsps.add(responses.POST, f"{BASE}/oauth/token", json={"access_token": value, "expires_in": ttl})


@responses.activate
def test_token_is_fetched_once_and_reused():
    token = _token(responses)
    responses.add(responses.GET, f"{BASE}/api/orders", json={"items": [], "nextCursor": None})
    client = CrmClient(CONN)
    list(client.pages(None))
    list(client.pages(None))
    assert token.call_count == 1
    assert responses.calls[1].request.headers["Authorization"] == "Bearer t1"


@responses.activate
def test_expired_token_is_refreshed_and_a_401_gets_one_fresh_token():
    token = _token(responses, ttl=10)  # within the 30 s safety margin: refreshed before every call
    responses.add(responses.GET, f"{BASE}/api/orders", status=401)
    responses.add(responses.GET, f"{BASE}/api/orders", json={"items": [{"id": "CRM-00001"}], "nextCursor": None})
    pages = list(CrmClient(CONN).pages(None))
    assert pages[0].records == [{"id": "CRM-00001"}]
    assert token.call_count == 2


@responses.activate
def test_429_honours_retry_after_and_5xx_is_retried():
    _token(responses)
    responses.add(responses.GET, f"{BASE}/api/orders", status=429, headers={"Retry-After": "0.01"})
    responses.add(responses.GET, f"{BASE}/api/orders", status=503)
    responses.add(responses.GET, f"{BASE}/api/orders", json={"items": [], "nextCursor": None})
    assert next(iter(CrmClient(CONN).pages(None))).records == []
    assert len(responses.calls) == 4


@responses.activate
def test_html_error_page_and_malformed_json_become_pages_with_a_problem():
    _token(responses)
    responses.add(responses.GET, f"{BASE}/api/orders", body="<html>maintenance</html>", content_type="text/html")
    (page,) = list(CrmClient(CONN).pages(None))
    assert page.problem.startswith("expected JSON, got text/html") and page.raw.startswith(b"<html>")


@responses.activate
def test_dead_partner_opens_the_circuit_and_fails_fast():
    _token(responses)
    responses.add(responses.GET, f"{BASE}/api/orders", body=requests.ConnectionError("refused"))
    client = CrmClient(CONN, attempts=2)
    for _ in range(breaker.CircuitBreaker("x").threshold):
        with pytest.raises(requests.ConnectionError):
            list(client.pages(None))
    with pytest.raises(breaker.CircuitOpen):
        list(client.pages(None))


def test_missing_connection_and_credentials_say_what_to_set(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE_API", raising=False)
    with pytest.raises(LookupError, match="AIRFLOW_CONN_NOPE_API"):
        get_connection("nope_api")
    with pytest.raises(PartnerError, match="client id and secret"):
        CrmClient(PartnerConnection("crm_api", BASE))


def _record(n, **extra):
    return {
        "id": f"CRM-{n:05d}",
        "status": "ENROLLED",
        "enrolledAt": "2026-03-02T09:00:00",
        "product": "KYM-CD19",
        "site": {"id": "US-BOS-01", "country": "US"},
        "patient": {"coiId": f"CHW1234260000{n:02d}", "mrn": f"MRN{n:08d}"},
        **extra,
    }


def _serve(faults=None):
    app = crm_sandbox.create_app(faults=faults)
    return app, SandboxServer(app)


def _conn(monkeypatch, server):
    monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")


def _state(url):
    """Each order's CRM id, status, therapy and hold flag, and how many ledger entries there are."""
    with session_scope(url) as s:
        orders = sorted(
            (o.projection["refs"]["crm_order_id"], o.status, o.therapy, o.on_hold) for o in s.scalars(select(Order))
        )
        return orders, s.scalar(select(func.count()).select_from(LedgerEntry))


def _story(app):
    state = app.sandbox_state
    for n in range(1, 21):
        state.upsert(_record(n, apheresis={"scheduledFor": "2026-03-09T08:00:00", "bookedAt": "2026-03-03T11:00:00"}))


def test_incremental_pull_from_the_sandbox(db_url, monkeypatch):
    app, server = _serve()
    with server:
        _conn(monkeypatch, server)
        _story(app)
        first = sync.pull()
        assert (first.records, first.appended, first.quarantined, first.errors) == (20, 40, 0, [])
        again = sync.pull()  # overlap re-reads, nothing new lands
        assert again.appended == 0 and again.watermark_after == first.watermark_after
        app.sandbox_state.upsert(
            _record(3, status="CANCELLED", cancelledAt="2026-03-05T10:00:00", cancelReason="PAYER")
        )
        third = sync.pull()
        assert third.appended == 1 and third.watermark_after > first.watermark_after
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 20
        assert s.scalar(select(Order.status).where(Order.coi_id == "CHW123426000003")) == "cancelled"


def test_faults_on_give_the_same_final_state_as_fault_free(db_url, monkeypatch, tmp_path):
    from cgthub import settings, store

    app, server = _serve()
    with server:
        _conn(monkeypatch, server)
        _story(app)
        sync.pull()
    clean = _state(db_url)

    chaos_url = f"sqlite:///{tmp_path / 'chaos.db'}" if db_url.startswith("sqlite") else db_url
    if chaos_url == db_url:  # PostgreSQL: the same schema, emptied
        from tests.conftest import _truncate

        _truncate(db_url)
    store.upgrade(chaos_url)
    monkeypatch.setenv("CGTHUB_DATABASE_URL", chaos_url)
    settings.get_settings.cache_clear()
    app, server = _serve(FaultConfig.chaos(seed=11))
    with server:
        _conn(monkeypatch, server)
        _story(app)
        reports = [sync.pull() for _ in range(8)]
    assert sum(app.injected.values()) > 0, "the fault mode injected nothing"
    assert _state(chaos_url) == clean
    with session_scope(chaos_url) as s:
        quarantined = quarantine.list_entries(s)
        archived = s.scalar(select(func.count()).select_from(RawMessage))
    # Malformed pages were archived and set aside with a reason, and the next pull read them again.
    assert all(e.stage == "parse" and "not valid JSON" in e.reason for e in quarantined)
    assert len(quarantined) == sum(1 for r in reports for e in r.errors if "archived as raw" in e)
    assert archived >= len(quarantined) + 1


def test_push_patches_status_once_per_idempotency_key(monkeypatch):
    app, server = _serve()
    with server:
        _conn(monkeypatch, server)
        app.sandbox_state.upsert(_record(1))
        payload = {
            "order_id": "ORD-1",
            "status": "manufacturing",
            "on_hold": False,
            "status_since": None,
            "refs": {"crm_order_id": "CRM-00001"},
            "idempotency_key": "crm:ORD-1:7",
        }
        assert sync.push(payload)["accepted"] is True
        sync.push(payload)
        statuses = requests.get(f"{server.base_url}/sandbox/statuses", timeout=5).json()
    assert statuses == {
        "CRM-00001": [{"status": "manufacturing", "onHold": False, "statusSince": None, "hubOrderId": "ORD-1"}]
    }
    with pytest.raises(PartnerError, match="no CRM order id"):
        sync.push({**payload, "refs": {}})


def test_sandbox_requires_a_token():
    _app, server = _serve()
    with server:
        assert requests.get(f"{server.base_url}/api/orders", timeout=5).status_code == 401
        bad = requests.post(
            f"{server.base_url}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
            timeout=5,
        )
        assert bad.status_code == 401 and json.loads(bad.text)["detail"] == "invalid_client"
