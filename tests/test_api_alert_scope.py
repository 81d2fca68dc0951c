"""An alert on a key's own order never names another site's order to that key: the link is shown
only to keys whose data scope covers every order the alert's facts involve."""

from __future__ import annotations

from datetime import timedelta

from cgthub import ledger
from cgthub.model import EventType, Material, SourceSystem
from cgthub.store import session_scope
from tests import api_server
from tests.factories import T0, din, event, happy_path

api = api_server.api


def _at_site(events, site: str):
    first = events[0].model_copy(update={"order": events[0].order.model_copy(update={"site": site})})
    return [first, *events[1:]]


def test_an_alert_linking_another_sites_order_does_not_name_it(api):
    mine, theirs = api_server.build_orders(
        api.database_url, [happy_path(1)[:3], _at_site(happy_path(2)[:3], "US-SITE-2")]
    )
    # The CMO reports receipt for the first order but scans the second order's DIN: both are held.
    wrong = event(
        EventType.MATERIAL_RECEIVED_AT_CMO,
        1,
        at=T0 + timedelta(days=8),
        system=SourceSystem.CMO,
        material=Material(din=din(2)),
    )
    with session_scope(api.database_url) as session:
        assert ledger.append(session, wrong).status == "quarantined"

    site_key = api.client(api.key("status:read", sites=["US-SITE-1"]))
    seen = site_key.get(f"/orders/{mine}").json()["alerts"]
    assert [a["kind"] for a in seen] == ["coi_discrepancy"]
    assert theirs not in seen[0]["message"] and din(2) not in seen[0]["message"]
    assert "outside this key's data scope" in seen[0]["message"]

    operator = api.client(api.key("status:read"))  # every order: the whole text, link included
    full = operator.get(f"/orders/{mine}").json()["alerts"]
    assert theirs in full[0]["message"]
    both_sites = api.client(api.key("status:read", sites=["US-SITE-1", "US-SITE-2"]))
    assert both_sites.get(f"/orders/{mine}").json()["alerts"] == full
