"""Outbound: each partner hears the order changes it cares about, once, and one partner's outage stops no other."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from cgthub import ledger, outbound, outbox
from cgthub.changes import OrderChange
from cgthub.settings import var_dir
from cgthub.store import session_scope
from tests.factories import PATIENTS, happy_path


@pytest.fixture
def files_only(monkeypatch, tmp_path):
    """No connector installed for any partner: every partner is reached through the file exchange
    (in a folder of this test's own)."""
    monkeypatch.setenv("CGTHUB_CONNECTORS", "no-such-partner")
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))


def _live_one_event_at_a_time(url: str, n: int = 1) -> None:
    """The order's life cycle as the partners report it, one event per transaction, as the listener and
    the connectors commit them: every status step is a change in the feed."""
    for item in happy_path(n):
        with session_scope(url) as session:
            ledger.append_many(session, [item])


def _route(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return outbound.route(session)


def _route_all(url: str) -> dict[str, int]:
    """Route until every change not yet routed is. On PostgreSQL the feed serves a change only
    once every transaction older than it has ended, anyone's on the server, so one pass may see part."""
    with session_scope(url) as session:
        written = session.scalar(select(func.count()).select_from(OrderChange)) - session.scalar(
            select(func.count()).select_from(outbox.OutboxMessage).where(outbox.OutboxMessage.destination_kind == "crm")
        )
    total: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while total.get("crm", 0) < written and time.monotonic() < deadline:
        for partner, count in _route(url).items():
            total[partner] = total.get(partner, 0) + count
        time.sleep(0.05)
    assert total["crm"] == written, "the CRM hears every change"
    return total


def _statuses(partner: str) -> list[str]:
    files = sorted(
        (var_dir() / "outbound" / partner).glob("*.json"), key=lambda p: json.loads(p.read_text())["change_id"]
    )
    return [json.loads(p.read_text())["status"] for p in files]


def test_each_partner_hears_the_statuses_it_cares_about(db_url, files_only):
    _live_one_event_at_a_time(db_url)
    counts = _route_all(db_url)
    for partner in ("crm", "erp", "hl7", "cmo", "courier"):
        assert outbound.drain(partner, database_url=db_url)["delivered"] == counts[partner]
    everything = _statuses("crm")
    assert everything[0] == "enrolled" and everything[-1] == "infused" and len(everything) == counts["crm"]
    assert _statuses("cmo") == ["collected", "in_transit_to_cmo"]  # the material is on its way to them
    assert _statuses("hl7") == ["received_at_cmo", "manufacturing", "released", "in_transit_to_site"]
    assert _statuses("erp") == ["released", "in_transit_to_site", "received_at_site", "infused"]  # what is billed
    assert _statuses("courier") == ["apheresis_scheduled", "released"]  # a booking for each leg
    sent = [json.loads(f.read_text()) for f in (var_dir() / "outbound" / "courier").glob("*.json")]
    (booking,) = [m for m in sent if m["status"] == "apheresis_scheduled"]  # what the push reads: dates, places
    assert booking["scheduled"]["apheresis"].startswith("2026-03-09") and booking["cmo"] == "CMO-EAST"


def test_a_change_is_routed_once_however_often_the_router_runs(db_url, files_only):
    _live_one_event_at_a_time(db_url)
    first = _route_all(db_url)
    assert sum(first.values()) > 0 and sum(_route(db_url).values()) == 0
    _live_one_event_at_a_time(db_url, 2)
    second = _route_all(db_url)
    assert second == first  # the second order's changes, and none of the first's again
    with session_scope(db_url) as session:
        keys = [m.idempotency_key for m in outbox.messages(session, limit=1000)]
    assert len(keys) == len(set(keys)) == 2 * sum(first.values())


def test_what_goes_out_names_the_order_by_its_references_and_carries_no_phi(db_url, files_only):
    _live_one_event_at_a_time(db_url)
    _route_all(db_url)
    outbound.drain("crm", database_url=db_url)
    (first, *_) = sorted((var_dir() / "outbound" / "crm").glob("*.json"))
    message = json.loads(first.read_text())
    assert message["refs"]["crm_order_id"] == "CRM-00001" and message["idempotency_key"].startswith("crm:")
    assert {"order_id", "status", "previous_status", "on_hold", "market", "site", "change_id"} <= message.keys()
    text = "\n".join(p.read_text() for p in (var_dir() / "outbound" / "crm").glob("*.json"))
    assert not any(value in text for patient in PATIENTS for value in patient.values())


def test_one_partners_outage_stops_no_other_and_its_messages_wait_for_a_retry(db_url, files_only, monkeypatch):
    _live_one_event_at_a_time(db_url)
    counts = _route_all(db_url)
    files = outbound.deliverer

    def erp_down(partner: str):
        if partner != "erp":
            return files(partner)

        def refuse(payload: dict) -> None:
            raise ConnectionError("ERP gateway answered 503")

        return "erp connector", refuse

    monkeypatch.setattr(outbound, "deliverer", erp_down)
    erp = outbound.drain("erp", database_url=db_url)
    crm = outbound.drain("crm", database_url=db_url)
    assert (erp["delivered"], erp["failed"]) == (0, counts["erp"]) and crm["delivered"] == counts["crm"]
    assert erp["errors"][0].endswith("ConnectionError")  # the type, not the partner's words
    assert outbound.drain("erp", database_url=db_url)["claimed"] == 0  # backing off, not hammering
    with session_scope(db_url) as session:
        waiting = outbox.messages(session, destination_kind="erp")
    assert {(m.status, m.attempts, m.last_error) for m in waiting} == {
        ("failed", 1, "ConnectionError: ERP gateway answered 503")
    }
