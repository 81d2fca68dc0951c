"""Scan verification over real HTTP: a DIN scanned with its `=` and flag characters matches its
order; a wrong bag at the bedside answers no match, holds the order, opens a critical alert and is
a custody event in the ledger (which still verifies, and the EPCIS export shows); a key without the
order's site learns nothing; the CLI does the same."""

from __future__ import annotations

from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import decisions, ledger
from cgthub.cli import app as cli
from cgthub.cli.common import CliError
from cgthub.decisions import Signature
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, Order
from tests import api_server, test_api_custody
from tests.factories import PATIENTS, coi, din, happy_path

api = api_server.api
epcis_validator = test_api_custody.epcis_validator  # GS1's EPCIS 2.0 JSON schema
PASSWORD = "correct horse battery"


def _scanned(n: int, flags: str = "00") -> str:
    """The DIN of patient n as a scanner sends it: '=', the 13 characters, two flag digits."""
    return "=" + din(n)[:13] + flags


def _orders(url: str) -> tuple[str, str]:
    """Patient 1's product has arrived at US-SITE-1; patient 2's apheresis was collected (DIN known)."""
    return tuple(api_server.build_orders(url, [happy_path(1)[:11], happy_path(2)[:3]]))  # type: ignore[return-value]


def test_a_bedside_scan_of_the_wrong_bag_holds_the_order_over_http(api, epcis_validator):
    first, _second = _orders(api.database_url)
    nurse = api.client(api.key("scan:write", sites=["US-SITE-1"]))

    ok = nurse.post("/verify", json={"order_id": first, "step": "site_receipt", "din": _scanned(1, "07")})
    assert ok.status_code == 200, ok.text
    assert ok.json() | {"scanned_at": None, "ledger_seq": None} == {
        "order_id": first,
        "step": "site_receipt",
        "match": True,
        "checked": ["din"],
        "mismatched": [],
        "scan_event": ok.json()["scan_event"],
        "ledger_seq": None,
        "on_hold": False,
        "alert_id": None,
        "scanned_at": None,
    }
    both = nurse.post("/verify", json={"order_id": first, "step": "bedside", "din": din(1), "coi_id": coi(1)})
    assert both.json()["match"] is True and both.json()["checked"] == ["din", "coi_id"]

    # At the bedside the nurse scans patient 2's bag.
    wrong = nurse.post(
        "/verify",
        json={
            "order_id": first,
            "step": "bedside",
            "din": _scanned(2),
            "coi_id": coi(1),
            "site": "US-SITE-1",
            "location": "INF-BAY-4",
            "operator": "nurse.k",
            "scan_id": "SCAN-0042",
        },
    )
    assert wrong.status_code == 200, wrong.text
    answer = wrong.json()
    assert (answer["match"], answer["mismatched"], answer["on_hold"]) == (False, ["din"], True)
    assert din(1)[:13] not in wrong.text  # the answer never tells the order's own DIN
    assert all(p["mrn"] not in wrong.text for p in PATIENTS)
    again = nurse.post(  # the scanner resends the same scan: recorded once
        "/verify",
        json={"order_id": first, "step": "bedside", "din": _scanned(2), "coi_id": coi(1), "scan_id": "SCAN-0042"},
    )
    assert again.json()["ledger_seq"] == answer["ledger_seq"]

    with session_scope(api.database_url) as s:
        order = s.get(Order, first)
        assert order is not None and order.on_hold and order.status == "on_hold"
        (alert,) = s.scalars(select(Alert).where(Alert.kind == "scan_mismatch")).all()
        assert (alert.severity, alert.status, alert.order_id, alert.id) == (
            "critical",
            "open",
            first,
            answer["alert_id"],
        )
        assert "din scanned at bedside does not match" in alert.message
        scans = s.scalars(
            select(LedgerEntry).where(LedgerEntry.order_id == first, LedgerEntry.event_type == "custody.scanned")
        ).all()
        assert len(scans) == 3
        recorded = ledger.events(s, first)
        bedside = next(e for e in recorded if e.source_event_id.endswith("SCAN-0042"))
        assert bedside.attributes["scanned_by"].startswith("api_key:") and bedside.attributes["scanned_by"].endswith(
            "/nurse.k"
        )
        assert bedside.attributes["scanned_din"] == din(2) and bedside.attributes["match"] is False
        assert bedside.custody is not None
        assert (bedside.custody.read_point, bedside.custody.biz_location) == ("INF-BAY-4", "US-SITE-1")
        _, problems = ledger.verify(s)
        assert problems == []
    verified = CliRunner().invoke(cli, ["ledger", "verify"], catch_exceptions=False)
    assert verified.exit_code == 0, verified.output

    custody = api.client(api.key("custody:read")).get(f"/orders/{first}/custody").json()
    epcis_validator.validate(custody)
    scanned = [e for e in custody["epcisBody"]["eventList"] if e.get("cgthub:eventType") == "custody.scanned"]
    assert [e["disposition"] for e in scanned] == ["conformant", "conformant", "non_conformant"]
    assert {e["bizStep"] for e in scanned} == {"inspecting"}

    # The hold is the hub's: a signed decision lifts it once the bag is found.
    with session_scope(api.database_url) as s:
        decisions.add_operator(s, "qa.lead", PASSWORD, ["all"])
    with session_scope(api.database_url) as s:
        signature = Signature(
            signer="qa.lead",
            password=PASSWORD,
            meaning="approved",
            reason_code="HOLD-CAUSE-CLEARED",
            reason_text="the right bag was found in the fridge",
        )
        decisions.release_hold(s, first, signature)
    with session_scope(api.database_url) as s:
        released = s.get(Order, first)
        assert released is not None and not released.on_hold


def test_a_key_without_the_orders_site_or_the_scope_learns_nothing(api):
    first, _second = _orders(api.database_url)
    body = {"order_id": first, "step": "bedside", "din": _scanned(2)}
    elsewhere = api.client(api.key("scan:write", markets=["DE"])).post("/verify", json=body)
    missing = api.client(api.key("scan:write", markets=["DE"])).post("/verify", json=body | {"order_id": "ORD-NONE"})
    assert elsewhere.status_code == missing.status_code == 404
    assert (
        elsewhere.json()
        == missing.json()
        == {"error": {"code": "not_found", "message": "no such order", "details": []}}
    )
    reader = api.client(api.key("status:read", "custody:read")).post("/verify", json=body)
    assert reader.status_code == 403 and "scan:write" in reader.json()["error"]["message"]
    nurse = api.client(api.key("scan:write", sites=["US-SITE-1"]))
    unreadable = nurse.post("/verify", json=body | {"din": "=W12342600000A00"})
    assert unreadable.status_code == 422 and unreadable.json()["error"]["code"] == "invalid_request"
    assert unreadable.json()["error"]["details"][0]["location"] == "body.din"
    assert "W123426" not in unreadable.text
    nothing = nurse.post("/verify", json={"order_id": first, "step": "bedside"})
    assert nothing.status_code == 422 and nothing.json()["error"]["code"] == "nothing_scanned"
    with session_scope(api.database_url) as s:  # nothing of it touched the order
        order = s.get(Order, first)
        assert order is not None and not order.on_hold
        assert s.scalars(select(LedgerEntry).where(LedgerEntry.event_type == "custody.scanned")).first() is None


def test_the_cli_verifies_a_scan_the_same_way(db_url, monkeypatch):
    first, second = api_server.build_orders(db_url, [happy_path(1)[:11], happy_path(2)[:3]])
    monkeypatch.setenv("CGTHUB_OPERATOR", "nurse.k")
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", first, "--din", _scanned(1), "--step", "site_receipt"], catch_exceptions=False)
    assert ok.exit_code == 0 and f"MATCH: din scanned at site_receipt belong to order {first}" in ok.output
    wrong = runner.invoke(
        cli, ["verify", second, "--din", _scanned(1), "--step", "cmo_receipt"], catch_exceptions=False
    )
    assert wrong.exit_code == 3 and "NO MATCH" in wrong.output and "on hold" in wrong.output
    right = din(1)[13]
    misread = runner.invoke(
        cli, ["verify", first, "--din", din(1)[:13] + "00" + ("A" if right != "A" else "B"), "--step", "bedside"]
    )
    assert isinstance(misread.exception, CliError)  # `cgthub` prints it and exits 1
    assert "not a valid ISBT 128 identifier" in misread.exception.message
    with session_scope(db_url) as s:
        held = s.get(Order, second)
        assert held is not None and held.on_hold
        entry = s.scalars(
            select(LedgerEntry).where(LedgerEntry.order_id == second, LedgerEntry.event_type == "custody.scanned")
        ).one()
        assert '"scanned_by":"operator:nurse.k"' in entry.body.replace(" ", "")
