"""Order routes through real HTTP: auth, data scope, filters, pagination, detail, timeline, errors, audit."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from cgthub.api.tables import ApiAccess
from cgthub.model import EventType, Shipment, SourceSystem
from cgthub.pseudonym import pseudonymize
from cgthub.store import session_scope
from tests import api_server
from tests.factories import PATIENTS, T0, enrolment, event, happy_path

api = api_server.api  # the running-server fixture
build_orders = api_server.build_orders

MRN = PATIENTS[0]["mrn"]


def _scenario(database_url: str) -> dict[str, str]:
    """Three orders: US infused, DE received at CMO (with a pseudonymized MRN), US with an open excursion alert."""
    german = [enrolment(2, market="DE", mrn=MRN), *happy_path(2)[1:6]]
    excursion = event(
        EventType.TEMPERATURE_EXCURSION,
        3,
        at=T0 + timedelta(days=7, hours=9),
        system=SourceSystem.COURIER,
        shipment=Shipment(shipment_id="SHP-3-OUT"),
        attributes={"extreme_c": -120.0, "limit_c": -150.0},
    )
    a, b, c = build_orders(database_url, [happy_path(1), german, [*happy_path(3)[:4], excursion]])
    return {"infused": a, "german": b, "alerted": c}


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def test_every_data_route_needs_a_valid_key(api):
    orders = _scenario(api.database_url)
    anonymous = api.client()
    for path in ("/orders", f"/orders/{orders['infused']}", f"/orders/{orders['infused']}/custody", "/events"):
        refused = anonymous.get(path)
        _error(refused, 401, "unauthenticated")
        assert refused.headers["www-authenticate"] == "Bearer"
    _error(api.client("cgt_nope_nope").get("/orders"), 401, "unauthenticated")
    _error(api.client("not-even-a-key").get("/orders"), 401, "unauthenticated")
    assert anonymous.get("/health").json() == {"status": "ok"}
    assert anonymous.get("/openapi.json").status_code == 200

    token = api.key("status:read")
    assert api.client(token).get("/orders").status_code == 200
    key_id = token.split("_")[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    _error(api.client(tampered).get("/orders"), 401, "unauthenticated")
    from cgthub.api.auth import revoke

    with session_scope(api.database_url) as session:
        assert revoke(session, key_id)
    time.sleep(api.app.state.keys.ttl + 0.05)  # a running server forgets a valid key within the cache TTL
    _error(api.client(token).get("/orders"), 401, "unauthenticated")


def test_scopes_gate_routes(api):
    orders = _scenario(api.database_url)
    order = orders["infused"]
    timeline_only = api.client(api.key("timeline:read"))
    _error(timeline_only.get("/orders"), 403, "forbidden")
    assert timeline_only.get(f"/orders/{order}/timeline").status_code == 200
    status_only = api.client(api.key("status:read"))
    assert status_only.get(f"/orders/{order}").status_code == 200
    _error(status_only.get(f"/orders/{order}/timeline"), 403, "forbidden")
    _error(status_only.get(f"/orders/{order}/custody"), 403, "forbidden")
    _error(status_only.get(f"/orders/{order}/fhir"), 403, "forbidden")
    custody = api.client(api.key("custody:read"))
    assert custody.get(f"/orders/{order}/custody").status_code == 200
    assert custody.get(f"/orders/{order}/fhir").status_code == 200


def test_data_scope_hides_other_orders_as_if_they_did_not_exist(api):
    orders = _scenario(api.database_url)
    us_site = api.client(api.key("admin", sites=["US-SITE-1"]))
    listed = {o["id"] for o in us_site.get("/orders").json()["orders"]}
    assert listed == {orders["infused"], orders["alerted"]}
    hidden = _error(us_site.get(f"/orders/{orders['german']}"), 404, "not_found")
    missing = _error(us_site.get("/orders/ORD-DOESNOTEXIST0"), 404, "not_found")
    assert hidden == missing
    for sub in ("timeline", "custody", "fhir"):
        _error(us_site.get(f"/orders/{orders['german']}/{sub}"), 404, "not_found")
    feed_orders = {e["order_id"] for e in us_site.get("/events").json()["events"]}
    assert feed_orders == {orders["infused"], orders["alerted"]}

    german_market = api.client(api.key("status:read", markets=["de"]))
    assert [o["id"] for o in german_market.get("/orders").json()["orders"]] == [orders["german"]]
    other_cmo = api.client(api.key("status:read", cmos=["CMO-WEST"]))
    assert other_cmo.get("/orders").json()["orders"] == []
    assert other_cmo.get("/events").json()["events"] == []
    _error(other_cmo.get(f"/orders/{orders['infused']}"), 404, "not_found")
    east = api.client(api.key("status:read", cmos=["CMO-EAST"]))
    assert len(east.get("/orders").json()["orders"]) == 3


def test_filters_and_cursor_pagination(api):
    orders = _scenario(api.database_url)
    client = api.client(api.key("status:read"))

    def ids(**params):
        response = client.get("/orders", params=params)
        assert response.status_code == 200, response.text
        return {o["id"] for o in response.json()["orders"]}

    assert ids(status="infused") == {orders["infused"]}
    assert ids(status="received_at_cmo") == {orders["german"]}
    assert ids(market="DE") == {orders["german"]} == ids(market="de")
    assert ids(site="US-SITE-1") == {orders["infused"], orders["alerted"]}
    assert ids(therapy="CART-19") == set(orders.values())
    assert ids(therapy="OTHER") == set()
    assert ids(has_open_alerts="true") == {orders["alerted"]}
    assert ids(has_open_alerts="false") == {orders["infused"], orders["german"]}
    assert ids(updated_since=(datetime.now(UTC) - timedelta(hours=1)).isoformat()) == set(orders.values())
    assert ids(updated_since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == set()

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = client.get("/orders", params=params).json()
        seen += [o["id"] for o in page["orders"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == seen and set(seen) == set(orders.values()) and pages == 3

    alerted = next(o for o in client.get("/orders").json()["orders"] if o["id"] == orders["alerted"])
    assert alerted["open_alerts"] == 1


def test_order_detail_milestones_refs_coi_alerts(api):
    orders = _scenario(api.database_url)
    status_key = api.client(api.key("status:read"))
    detail = status_key.get(f"/orders/{orders['infused']}").json()
    assert detail["status"] == "infused" and detail["stage"] == "infused"
    names = [m["milestone"] for m in detail["milestones"]]
    assert names[0] == "enrolled" and names[-1] == "infused" and "released" in names
    assert detail["external_refs"]["crm_order_id"] == ["CRM-00001"]
    assert set(detail["external_refs"]["courier_shipment_id"]) == {"SHP-1-OUT", "SHP-1-BACK"}
    assert detail["coi"]["coi_id"] == "CHW123426000001" and len(detail["coi"]["dins"]) == 1
    assert detail["coi"]["lot"] == "LOT-00001" and detail["coi"]["discrepancy"] is False
    assert detail["vein_to_vein_days"] == 23.0
    assert detail["ledger"]["length"] == 13 and len(detail["ledger"]["head"]) == 64
    assert detail["patient"] is None

    alerted = status_key.get(f"/orders/{orders['alerted']}").json()
    assert [a["kind"] for a in alerted["alerts"]] == ["temperature_excursion"]
    assert alerted["shipments"][0]["excursions"] == 1


def test_phi_only_for_keys_whose_scope_allows_it(api):
    orders = _scenario(api.database_url)
    token = pseudonymize("mrn", MRN)
    german = orders["german"]
    narrow = api.client(api.key("status:read", "timeline:read"))
    bodies = [
        narrow.get("/orders").text,
        narrow.get(f"/orders/{german}").text,
        narrow.get(f"/orders/{german}/timeline").text,
        narrow.get("/events").text,
    ]
    for body in bodies:
        assert MRN not in body and token not in body
        for patient in PATIENTS:
            assert patient["name"].split("^")[0] not in body and patient["birth_date"] not in body
    custody = api.client(api.key("status:read", "custody:read"))
    detail = custody.get(f"/orders/{german}").json()
    assert detail["patient"] == {"pseudonyms": {"mrn": token}}
    assert MRN not in custody.get(f"/orders/{german}/custody").text
    assert MRN not in custody.get(f"/orders/{german}/fhir").text


def test_timeline_has_source_mapping_and_both_times(api):
    orders = _scenario(api.database_url)
    timeline = api.client(api.key("timeline:read")).get(f"/orders/{orders['infused']}/timeline").json()
    entries = timeline["entries"]
    assert [e["seq"] for e in entries] == list(range(1, 14))
    first = entries[0]
    assert first["event_type"] == "order.enrolled" and first["source_system"] == "crm"
    assert first["mapping_id"] == "crm/test" and first["mapping_version"] == "1"
    occurred, received = (datetime.fromisoformat(first[k]) for k in ("occurred_at", "received_at"))
    assert received - occurred == timedelta(minutes=5)
    assert entries[1]["prev_hash"] == first["entry_hash"] and all(e["effective"] for e in entries)
    assert {e["source_system"] for e in entries} == {"crm", "hl7", "courier", "cmo"}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/orders?colour=red", 400, "unknown_parameter"),
        ("/orders?status=infused&status=enrolled", 400, "repeated_parameter"),
        ("/orders?cursor=not-a-cursor", 400, "invalid_cursor"),
        ("/orders?cursor=ZjE6MDox", 400, "invalid_cursor"),  # a feed cursor is not an order cursor
        ("/orders?limit=1000000", 422, "invalid_request"),
        ("/orders?limit=0", 422, "invalid_request"),
        ("/orders?status=teleported", 422, "invalid_request"),
        ("/orders?updated_since=yesterday", 422, "invalid_request"),
        ("/orders?updated_since=2026-01-01T00:00:00", 422, "invalid_request"),  # no offset
        ("/events?after=%00%ff", 400, "invalid_cursor"),
        ("/events?after=bzE6T1JELTE", 400, "invalid_cursor"),
        ("/events?limit=5000", 422, "invalid_request"),
        ("/nowhere", 404, "not_found"),
    ],
)
def test_bad_input_gets_a_clear_4xx(api, path, status, code):
    error = _error(api.client(api.key("admin")).get(path), status, code)
    assert error["message"]


def test_malformed_bodies_are_rejected(api):
    client = api.client(api.key("status:read"))
    headers = {"Content-Type": "application/json"}
    _error(client.post("/subscriptions", content=b"{not json", headers=headers), 422, "invalid_request")
    _error(client.post("/subscriptions", json={"url": "ftp://example.org/x"}), 422, "invalid_request")
    _error(client.post("/subscriptions", json={"url": "http://127.0.0.1/x", "extra": 1}), 422, "invalid_request")
    _error(client.post("/subscriptions", json=[1, 2]), 422, "invalid_request")
    _error(client.put("/orders"), 405, "method_not_allowed")


def test_every_access_is_audited(api):
    orders = _scenario(api.database_url)
    token = api.key("status:read", sites=["US-SITE-1"])
    key_id = token.split("_")[1]
    client = api.client(token)
    assert client.get(f"/orders/{orders['infused']}").status_code == 200
    assert client.get(f"/orders/{orders['german']}").status_code == 404
    assert api.client().get("/orders").status_code == 401
    api.flush_audit()
    with session_scope(api.database_url) as session:
        rows = list(session.scalars(select(ApiAccess).order_by(ApiAccess.id)))
    seen = {(r.key_id, r.route, r.order_id, r.status_code) for r in rows}
    assert (key_id, "/orders/{order_id}", orders["infused"], 200) in seen
    assert (key_id, "/orders/{order_id}", orders["german"], 404) in seen
    assert (None, "/orders", None, 401) in seen
    assert all(r.client == "127.0.0.1" and r.method == "GET" for r in rows)
