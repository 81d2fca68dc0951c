"""Red team of the order API over real HTTP (a uvicorn server on loopback, real keys of limited
scope): another site's or market's orders through every route, guessed ids, filters that could
tell that something exists, PHI echoed in errors, huge and hostile parameters. Each row of
docs/red-team.md that concerns the API is one of these tests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import socket
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import cli
from cgthub.api import webhooks
from cgthub.api.auth import create_key, revoke
from cgthub.api.epcis import build_document, verify_ledger
from cgthub.api.tables import ApiAccess, WebhookSubscription
from cgthub.ledger import GENESIS
from cgthub.lifecycle import project
from cgthub.model import CanonicalEvent
from cgthub.settings import var_dir
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry
from tests import api_server, test_api_feed
from tests.factories import PATIENTS, enrolment, happy_path
from tests.hub_log import hub_log
from tests.test_api_access_log import _start_server
from tests.test_api_custody import _order_with_cold_chain

api = api_server.api
receiver = test_api_feed.receiver  # a webhook consumer on loopback, allow-listed

MRN, NAME, BORN = PATIENTS[0]["mrn"], PATIENTS[0]["name"], PATIENTS[0]["birth_date"]


def _orders(api: Any) -> tuple[str, str]:
    """A US order (US-SITE-1) and a DE order (DE market), both well along."""
    us, de = api_server.build_orders(
        api.database_url,
        [happy_path(1)[:6], [enrolment(2, market="DE", mrn=MRN), *happy_path(2)[1:6]]],
    )
    return us, de


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def _no_phi(text: str) -> None:
    for clear in (MRN, NAME, NAME.split("^")[0], BORN):
        assert clear not in text, clear


def test_a_site_key_cannot_reach_another_markets_order_by_any_route(api):
    us, de = _orders(api)
    site = api.client(api.key("status:read", "timeline:read", "custody:read", sites=["US-SITE-1"]))
    missing = _error(site.get("/orders/ORD-0000000000000000"), 404)
    for path in ("", "/timeline", "/custody", "/fhir", "/slots"):
        hidden = site.get(f"/orders/{de}{path}")
        assert hidden.status_code == 404, (path, hidden.text)
        assert hidden.json()["error"] == missing or path == "/slots", (path, hidden.text)
        _no_phi(hidden.text)
    assert site.get(f"/orders/{us}/fhir").status_code == 200
    listed = site.get("/orders", params={"market": "DE"}).json()
    assert listed["orders"] == [] and listed["next_cursor"] is None
    assert site.get("/orders", params={"site": "DE-SITE-1"}).json()["orders"] == []
    events = site.get("/events").json()["events"]
    assert events and {e["order_id"] for e in events} == {us}
    verify = site.post("/verify", json={"order_id": de, "step": "bedside", "din": "=W12342600000200"})
    assert verify.status_code in (403, 404), verify.text  # no scan:write; and the order is out of scope


def test_filters_on_hidden_orders_answer_exactly_as_filters_on_nothing(api):
    """A scoped key filtering for another market's status, site or time gets the same empty page
    as a filter nobody matches: the shape, the cursor and the words are alike."""
    _orders(api)
    site = api.client(api.key("status:read", sites=["US-SITE-1"]))
    hidden = site.get("/orders", params={"market": "DE", "status": "received_at_cmo"})
    nothing = site.get("/orders", params={"market": "FR", "status": "received_at_cmo"})
    assert hidden.status_code == nothing.status_code == 200
    assert hidden.content == nothing.content


def test_a_forged_cursor_pages_only_inside_the_keys_scope(api):
    us, de = _orders(api)
    site = api.client(api.key("status:read", sites=["US-SITE-1"]))
    before_de = base64.urlsafe_b64encode(f"o1:{de[:-1]}".encode()).decode().rstrip("=")
    page = site.get("/orders", params={"cursor": before_de, "limit": 200}).json()
    assert de not in {o["id"] for o in page["orders"]}
    feed_start = base64.urlsafe_b64encode(b"f1:0:0").decode().rstrip("=")
    assert {e["order_id"] for e in site.get("/events", params={"after": feed_start}).json()["events"]} <= {us}
    for cursor in ("f1:99999999999999999999:0", "f1:-1:0", "o1:" + "Z" * 500, "f1:1:1:1"):
        forged = base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")
        path, name = ("/events", "after") if cursor.startswith("f1") else ("/orders", "cursor")
        answer = site.get(path, params={name: forged})
        assert answer.status_code in (400, 422), (cursor, answer.text)


def test_hostile_limits_and_huge_parameters_are_refused_without_echo(api):
    _orders(api)
    client = api.client(api.key("status:read"))
    for limit in ("-1", "0", "99999999999999999999999", "1e9", "NaN", ""):
        _error(client.get("/orders", params={"limit": limit}), 422)
        _error(client.get("/events", params={"limit": limit}), 422)
    _error(client.get("/orders", params={"limit": "201"}), 422)  # pages of at most 200 orders
    _error(client.get("/events", params={"limit": "1001"}), 422)  # and 1,000 changes
    huge = MRN + "x" * 60_000
    for params in ({"site": huge}, {"therapy": huge}, {"status": huge}, {"updated_since": huge}):
        answer = client.get("/orders", params=params)
        assert answer.status_code in (400, 414, 422, 431), (list(params), answer.status_code)
        assert "x" * 100 not in answer.text
        _no_phi(answer.text)
    after = client.get("/orders", params={"site": "US-SITE-1"})  # the server is still there
    assert after.status_code == 200


def test_a_validation_error_names_the_field_and_never_echoes_the_value(api):
    """FastAPI's own 422 repeats the input; the hub's names only where the problem is."""
    us, _de = _orders(api)
    client = api.client(api.key("status:read", "scan:write", "operate"))
    bodies = [
        ("/subscriptions", {"url": f"https://example.org/{MRN}", "statuses": [NAME]}),
        ("/verify", {"order_id": us, "step": f"bedside {NAME}", "din": MRN}),
        ("/verify", {"order_id": MRN, "step": "bedside", "coi": BORN, "location": {"site": NAME}}),
        (f"/orders/{us}/release-hold", {"signer": NAME, "password": BORN, "meaning": MRN}),
    ]
    for path, body in bodies:
        answer = client.post(path, json=body)
        assert answer.status_code in (400, 404, 422), (path, answer.text)
        error = _error(answer, answer.status_code)
        assert error["code"], error
        _no_phi(answer.text)
    text = client.post("/verify", content=f'{{"order_id": "{MRN}", broken'.encode()).text
    _no_phi(text)
    _no_phi(client.get(f"/orders/{MRN}").text)
    _no_phi(client.get(f"/orders/{MRN}/timeline").text)


def test_a_key_cannot_list_read_or_delete_another_keys_webhook_subscription(api):
    _orders(api)
    owner = api.client(api.key("status:read", sites=["US-SITE-1"]))
    made = owner.post("/subscriptions", json={"url": "https://example.org/hook"})
    assert made.status_code == 201, made.text
    subscription = made.json()["id"]
    other = api.client(api.key("status:read", markets=["DE"]))
    assert subscription not in {s["id"] for s in other.get("/subscriptions").json()}
    missing = _error(other.delete("/subscriptions/whsub_doesnotexist"), 404)
    assert _error(other.delete(f"/subscriptions/{subscription}"), 404) == missing
    _error(other.post(f"/subscriptions/{subscription}/replay"), 403)
    with session_scope(api.database_url) as session:
        assert session.get(WebhookSubscription, subscription).active


def _recompute_chain(document: dict[str, Any]) -> None:
    """What anyone holding the export can do: recompute every entry hash and the head with SHA-256."""
    ledger = document["cgthub:ledger"]
    prev = GENESIS
    for entry in ledger["entries"]:
        entry["prevHash"] = prev
        material = {
            "prev": prev,
            "order": ledger["orderId"],
            "seq": entry["seq"],
            "recorded_at": entry["recordedAt"],
            "body": entry["body"],
        }
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        old, entry["entryHash"] = entry["entryHash"], hashlib.sha256(canonical.encode()).hexdigest()
        for event in document["epcisBody"]["eventList"]:
            if event.get("cgthub:entryHash") == old:
                event["cgthub:entryHash"] = entry["entryHash"]
        prev = entry["entryHash"]
    ledger["head"] = prev


def _custody(api: Any) -> tuple[str, dict[str, Any]]:
    (order_id,) = api_server.build_orders(api.database_url, [_order_with_cold_chain(7)])
    document = api.client(api.key("custody:read")).get(f"/orders/{order_id}/custody").json()
    return order_id, document


def test_an_edited_custody_event_is_found_by_the_offline_check(api, tmp_path):
    """`verify-custody` recomputed the ledger's hashes but only checked that each EPCIS event cited
    one of them: an excursion's temperature, a place or a time edited in the eventList (its entry
    hash kept), or an event deleted, verified clean."""
    _order_id, document = _custody(api)
    assert verify_ledger(document) == []
    excursion = next(e for e in document["epcisBody"]["eventList"] if e.get("disposition") == "non_conformant")
    warmer = copy.deepcopy(document)
    for event in warmer["epcisBody"]["eventList"]:
        if event["eventID"] == excursion["eventID"]:
            event.pop("sensorElementList", None)
            event["disposition"] = "conformant"
    moved = copy.deepcopy(document)
    moved["epcisBody"]["eventList"][0]["eventTime"] = "2026-01-01T00:00:00.000Z"
    dropped = copy.deepcopy(document)
    dropped["epcisBody"]["eventList"] = [
        e for e in dropped["epcisBody"]["eventList"] if e["eventID"] != excursion["eventID"]
    ]
    runner = CliRunner()
    for name, forged in (("warmer", warmer), ("moved", moved), ("dropped", dropped)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(forged))
        refused = runner.invoke(cli.app, ["api", "verify-custody", str(path)])
        assert refused.exit_code == 1, (name, refused.output)
        assert "ledger entry says" in refused.output or "is missing" in refused.output, (name, refused.output)
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(document))
    assert runner.invoke(cli.app, ["api", "verify-custody", str(clean)]).exit_code == 0


def test_a_ledger_rewritten_with_recomputed_hashes_is_found_by_the_offline_check(api, tmp_path):
    """The excursion's entry taken out, the chain's hashes recomputed and the events made again
    from what is left, with the hub's own published code: the document is internally consistent,
    and a consumer who pinned the hub's key (from GET /custody/keys) refuses it all the same."""
    _order_id, document = _custody(api)
    forged = copy.deepcopy(document)
    ledger = forged["cgthub:ledger"]
    ledger["entries"] = [e for e in ledger["entries"] if "temperature_excursion" not in e["body"]]
    for seq, entry in enumerate(ledger["entries"], start=1):
        entry["seq"] = seq
    ledger["length"] = len(ledger["entries"])
    _recompute_chain(forged)
    entries = [
        LedgerEntry(
            seq=e["seq"],
            recorded_at=datetime.fromisoformat(e["recordedAt"]),
            prev_hash=e["prevHash"],
            entry_hash=e["entryHash"],
            body=e["body"],
        )
        for e in ledger["entries"]
    ]
    state = project(ledger["orderId"], [CanonicalEvent.model_validate_json(e.body) for e in entries])
    made = build_document(state, entries, order_id=ledger["orderId"], head=ledger["head"], created=datetime.now(UTC))
    forged["epcisBody"]["eventList"] = made["epcisBody"]["eventList"]
    assert "non_conformant" not in json.dumps(forged["epcisBody"]) and "non_conformant" in json.dumps(document)
    assert verify_ledger(forged) == []  # the hashes alone cannot tell
    keys = api.client(api.key("status:read")).get("/custody/keys").json()["keys"]  # no PHI scope needed
    pinned = tmp_path / "hub.pem"
    pinned.write_text(keys[0]["public_key_pem"])
    runner = CliRunner()
    unsigned = {k: v for k, v in forged.items() if k != "cgthub:signature"}
    for name, candidate, why in (
        ("forged", forged, "the signature does not verify under pinned key"),
        ("unsigned", unsigned, "the document carries no cgthub:signature"),
    ):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(candidate))
        refused = runner.invoke(cli.app, ["api", "verify-custody", str(path), "--public-key", str(pinned)])
        assert refused.exit_code == 1, (name, refused.output)
        assert why in " ".join(refused.output.split()), (name, refused.output)
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(document))
    assert runner.invoke(cli.app, ["api", "verify-custody", str(clean), "--public-key", str(pinned)]).exit_code == 0


def test_an_mrn_or_a_name_typed_where_an_order_id_goes_is_not_kept_in_the_access_log(api):
    """The access log and its journal kept the path as requested: a client looking an order up by
    MRN or name wrote the patient's identifier into both, in clear."""
    us, _de = _orders(api)
    token = api.key("status:read", "timeline:read")
    client = api.client(token)
    for path in (f"/orders/{MRN}", f"/orders/{NAME}/timeline", f"/{MRN}", f"/orders/{us}"):
        client.get(path)
    client.delete(f"/subscriptions/{BORN}")
    api.flush_audit()
    with session_scope(api.database_url) as session:
        rows = [(r.path, r.order_id, r.status_code) for r in session.scalars(select(ApiAccess).order_by(ApiAccess.id))]
    _no_phi(repr(rows))
    assert (f"/orders/{us}", us, 200) in rows  # the hub's own ids are kept: who looked at which order
    assert ("/orders/{order_id}", None, 404) in rows and ("/orders/{order_id}/timeline", None, 404) in rows
    assert ("(no route)", None, 404) in rows and ("/subscriptions/{subscription_id}", None, 404) in rows
    journals = list((var_dir() / "api-access").rglob("*.jsonl"))
    _no_phi("".join(p.read_text() for p in journals))


def test_a_hidden_order_and_a_missing_one_take_alike_long_to_refuse(api):
    """404 for an order outside the key's scope and for one that does not exist: the same body, and
    no difference in time a caller could use to learn that the hidden one exists."""
    _us, de = _orders(api)
    site = api.client(api.key("status:read", sites=["US-SITE-1"]))
    hidden, missing = [], []
    for _ in range(3):  # warm both paths
        site.get(f"/orders/{de}")
        site.get("/orders/ORD-0000000000000000")
    for _ in range(60):
        for target, times in ((de, hidden), ("ORD-0000000000000000", missing)):
            started = time.perf_counter()
            answer = site.get(f"/orders/{target}")
            times.append(time.perf_counter() - started)
            assert answer.status_code == 404
    gap = statistics.median(hidden) - statistics.median(missing)
    print(f"hidden {statistics.median(hidden) * 1000:.2f} ms, missing {statistics.median(missing) * 1000:.2f} ms")
    assert abs(gap) < 0.005, f"{gap * 1000:.2f} ms between a hidden order and a missing one"


def test_two_thousand_connections_with_unfinished_headers_hold_no_other_caller(db_url):
    """`cgthub api serve` (uvicorn) under a slowloris: 2,000 connections each send half a request
    and stop. Another caller with a key is still answered at once. (Those connections are closed
    at the header deadline, 10 s: tests/test_api_header_deadline.py.)"""
    (order_id,) = api_server.build_orders(db_url, [happy_path(1)[:3]])
    with session_scope(db_url) as session:
        _key, token = create_key(session, name="red team", scopes=("status:read",), all_data=True)
    server, port = _start_server(db_url)
    stalled: list[socket.socket] = []
    try:
        for _ in range(2000):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /orders HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
            stalled.append(sock)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            started = time.monotonic()
            answer = client.get(f"/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
            took = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
        server.terminate()
        server.wait(timeout=20)
        assert server.stderr is not None
        server.stderr.close()
    assert answer.status_code == 200 and answer.json()["id"] == order_id
    assert took < 2, f"{took:.2f} s beside 2,000 stalled connections"


def test_nul_characters_and_huge_integers_are_the_callers_mistake_not_a_server_error(api, caplog):
    """On PostgreSQL a NUL in an order id, a filter or a body's string, or an alert id past 64
    bits, failed the lookup: 500, a traceback in the log quoting the statement's parameters, and
    the caller's keep-alive connection dropped (its next request: connection reset)."""
    us, _de = _orders(api)
    client = api.client(api.key("admin", "status:read", "timeline:read", "custody:read", "operate", "scan:write"))
    signed = {"signer": "x", "password": "y", "meaning": "reviewed", "reason_code": "X", "reason_text": "t"}
    attempts = [
        ("GET", f"/orders/{MRN}%00", None),
        ("GET", "/orders/ORD-%00/timeline", None),
        ("GET", "/orders?site=%00", None),
        ("GET", f"/orders?therapy={MRN}%00", None),
        ("POST", "/verify", {"order_id": f"ORD-\u0000{MRN}", "step": "bedside", "din": "=W12342600000100"}),
        ("POST", "/alerts/99999999999999999999999/resolve", {**signed, "shown_hash": "0" * 64}),
    ]
    # The hub's and uvicorn's errors read at their loggers (tests/hub_log.py): uvicorn's logger does
    # not propagate, so caplog never held an "Exception in ASGI application" to find.
    with hub_log("cgthub", "uvicorn.error") as logged:
        for method, path, body in attempts:
            answer = client.request(method, path, json=body)
            assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
            _no_phi(answer.text)
            after = client.get(f"/orders/{us}")  # the same keep-alive connection goes on
            assert after.status_code == 200, path
        assert logged.hears("cgthub.api.errors") and logged.hears("uvicorn.error")  # the check below can fail
    log_text = logged.text + caplog.text
    assert "Traceback" not in log_text and "Exception in ASGI application" not in log_text
    _no_phi(log_text)


def test_an_unknown_parameter_name_is_not_repeated_back(api):
    client = api.client(api.key("status:read"))
    refused = _error(client.get("/orders", params={MRN: "1", "colour": "red", "stauts": "infused"}), 400)
    assert refused["code"] == "unknown_parameter"
    assert MRN not in refused["message"] and "colour" not in refused["message"]
    assert "3 unknown" in refused["message"] and "did you mean status" in refused["message"]


def test_an_updated_since_beyond_what_a_datetime_holds_is_refused_not_a_server_error(api, caplog):
    """`0001-01-01T00:00:00+01:00` is a valid ISO time before the first instant in UTC: converting
    it raised OverflowError, a 500 with a traceback and the connection dropped."""
    us, _de = _orders(api)
    client = api.client(api.key("status:read"))
    with hub_log("cgthub", "uvicorn.error") as logged:
        for since in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
            refused = _error(client.get("/orders", params={"updated_since": since}), 422)
            assert "updated_since" in refused["message"]
            assert client.get(f"/orders/{us}").status_code == 200  # the same connection goes on
        assert client.get("/orders", params={"updated_since": "0001-01-01T00:00:00Z"}).json()["orders"]
        assert logged.hears("cgthub.api.errors") and logged.hears("uvicorn.error")  # the check below can fail
    assert "Traceback" not in logged.text + caplog.text


def test_a_revoked_keys_webhooks_stop_and_a_site_keys_carry_only_its_site(api, receiver):
    """Webhooks are pushed with the key's data scope, and a revoked key's subscription pushes
    nothing more: revoking a leaked key also stops what it subscribed to."""
    token = api.key("status:read", sites=["US-SITE-1"])
    client = api.client(token)
    assert client.post("/subscriptions", json={"url": receiver.url}).status_code == 201
    us, de = _orders(api)
    webhooks.pump(api.database_url)
    pushed = {json.loads(body)["order_id"] for _headers, body in receiver.requests}
    assert pushed == {us} and de not in pushed
    with session_scope(api.database_url) as session:
        assert revoke(session, token.split("_")[1])
    receiver.requests.clear()
    api_server.build_orders(api.database_url, [happy_path(3)[:3]])  # a new US-SITE-1 order
    report = webhooks.pump(api.database_url)
    assert report.delivered == 0 and receiver.requests == []
