"""The order console as an Airflow user meets it over HTTP: signed in by Airflow's JWT, scoped by role."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cgthub import ledger
from cgthub.api.auth import create_key
from cgthub.devtools.samples import T0, din, event, happy_path
from cgthub.model import EventType, Material, SourceSystem
from cgthub.store import session_scope

D = timedelta(days=1)


@pytest.fixture(scope="module")
def auth_manager() -> Any:
    """Airflow's configured auth manager (the simple one here), as the API server initialises it; it
    checks each token against Airflow's metadata database (revoked tokens), so that is migrated."""
    from airflow.api_fastapi.app import init_auth_manager

    from cgthub.airflow_env import migrate_metadata_db

    migrate_metadata_db()
    return init_auth_manager()


def airflow_token(auth_manager: Any, name: str, role: str | None) -> str:
    """The JWT Airflow's UI holds for a user who signed in with this role."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role))


def seed(url: str) -> dict[str, str]:
    """Three orders: two that a CMO scan put on hold (COI conflict), one delivered in full."""
    with session_scope(url) as session:
        for n in (1, 2):
            for e in happy_path(n)[:3]:
                ledger.append(session, e)
        wrong = event(
            EventType.MATERIAL_RECEIVED_AT_CMO, 1, at=T0 + 8 * D, system=SourceSystem.CMO, material=Material(din=din(2))
        )
        ledger.append(session, wrong)
        for e in happy_path(3):
            ledger.append(session, e)
        ids = {row.value: row.order_id for row in session.query(ledger.OrderKey).filter_by(kind="crm_order_id")}
    return {"held": ids["CRM-00001"], "other_held": ids["CRM-00002"], "done": ids["CRM-00003"]}


@pytest.fixture
def console(db_url: str, auth_manager: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The plugin's app mounted at /cgthub, as Airflow's API server mounts it."""
    from fastapi import FastAPI

    from cgthub.orders_view import plugin_app

    app = plugin_app(db_url)
    host = FastAPI()
    host.mount("/cgthub", app)
    with TestClient(host) as client:
        yield client
    hub_api = next(route.app for route in app.routes if getattr(route, "path", "") == "/api")
    hub_api.state.audit.close()


def signed_in(client: TestClient, auth_manager: Any, name: str = "olga", role: str = "op") -> TestClient:
    client.cookies.set("_token", airflow_token(auth_manager, name, role))
    return client


def test_without_an_airflow_session_the_console_sends_the_browser_to_airflows_login(console):
    answer = console.get("/cgthub/console/orders", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/auth/login")
    assert "next=" in answer.headers["location"] and "cgthub%2Fconsole%2Forders" in answer.headers["location"]
    forged = console.get("/cgthub/console/orders", cookies={"_token": "e30.e30.forged"}, follow_redirects=False)
    assert forged.status_code == 303  # a token Airflow did not sign is no session
    old_page = console.get("/cgthub/ui/orders", follow_redirects=False)
    assert old_page.status_code == 308 and old_page.headers["location"].endswith("/console/orders")


def test_board_lists_held_orders_first_with_alert_names_and_partner_references(db_url, console, auth_manager):
    ids = seed(db_url)
    page = signed_in(console, auth_manager).get("/cgthub/console/orders").text
    assert page.index(f'data-order="{ids["held"]}"') < page.index(f'data-order="{ids["done"]}"')
    held_row = page[page.index(f'data-order="{ids["held"]}"') :].split("</tr>")[0]
    assert "coi discrepancy" in held_row and ">held<" in held_row
    assert "CRM-00001" in held_row and din(1) in held_row  # partner references, not counts
    assert "olga" in page  # who is signed in, from Airflow's token


def test_board_filters_and_search_by_any_partner_reference(db_url, console, auth_manager):
    ids = seed(db_url)
    client = signed_in(console, auth_manager)
    held = client.get("/cgthub/console/orders", params={"held": "true"}).text
    assert ids["held"] in held and ids["other_held"] in held and ids["done"] not in held
    by_din = client.get("/cgthub/console/orders", params={"q": din(3)}).text
    assert ids["done"] in by_din and ids["held"] not in by_din
    by_crm = client.get("/cgthub/console/orders", params={"q": "CRM-00002"}).text
    assert ids["other_held"] in by_crm and ids["done"] not in by_crm
    infused = client.get("/cgthub/console/orders", params={"status": "infused"}).text
    assert ids["done"] in infused and ids["held"] not in infused
    by_order_id = client.get("/cgthub/console/orders", params={"q": ids["done"]}).text
    assert ids["done"] in by_order_id and ids["held"] not in by_order_id
    held_by_din = client.get("/cgthub/console/orders", params={"q": din(1), "held": "true"}).text
    assert ids["held"] in held_by_din and ids["other_held"] not in held_by_din


def test_search_covers_every_kind_of_key_the_ledger_indexes(db_url):
    """The board searches keys by the kinds it names (to use the (kind, value) index): a kind the
    ledger starts indexing must be named there too, or a search by it would find nothing."""
    from sqlalchemy import select

    from cgthub.console import board
    from cgthub.tables import OrderKey

    seed(db_url)
    with session_scope(db_url) as session:
        indexed = set(session.scalars(select(OrderKey.kind).distinct()))
    assert {"crm_order_id", "coi_id", "din"} <= indexed
    assert indexed <= set(board.SEARCHED_KINDS), indexed - set(board.SEARCHED_KINDS)


def test_order_detail_draws_planned_and_actual_milestones_and_verifies_the_ledger(db_url, console, auth_manager):
    ids = seed(db_url)
    page = signed_in(console, auth_manager).get(f"/cgthub/console/orders/{ids['done']}").text
    assert "<svg" in page and 'data-kind="planned"' in page
    for milestone in ("collected", "manufacturing", "released", "infused"):
        assert f'data-milestone="{milestone}" data-kind="actual"' in page
    assert 'data-verified="yes"' in page and "data-deadline" in page
    assert "SHP-3-OUT" not in page or "cryo" in page  # custody rows name the courier
    held = signed_in(console, auth_manager).get(f"/cgthub/console/orders/{ids['held']}").text
    assert 'data-hold="open"' in held and 'data-alert="coi_discrepancy"' in held
    assert "psn:" not in held  # pseudonyms stay out of the page


def test_an_order_only_enrolled_opens_with_a_note_instead_of_a_timeline(db_url, console, auth_manager):
    with session_scope(db_url) as session:
        [enrolled] = [e for e in happy_path(4) if e.event_type is EventType.ORDER_ENROLLED]
        order_id = ledger.append(session, enrolled).order_id
    answer = signed_in(console, auth_manager).get(f"/cgthub/console/orders/{order_id}")
    assert answer.status_code == 200, answer.text[-500:]
    assert 'id="no-timeline"' in answer.text and "<svg" not in answer.text and ">enrolled<" in answer.text


def test_a_viewer_sees_no_action_button_and_a_role_outside_the_config_sees_no_order(db_url, console, auth_manager):
    ids = seed(db_url)
    operator = signed_in(console, auth_manager, "olga", "op").get(f"/cgthub/console/orders/{ids['held']}").text
    assert 'id="release-hold"' in operator
    viewer = signed_in(console, auth_manager, "vera", "viewer").get(f"/cgthub/console/orders/{ids['held']}").text
    assert ids["held"] in viewer and 'id="release-hold"' not in viewer and "Resolve" not in viewer
    stranger = signed_in(console, auth_manager, "sam", "nobody")
    assert ids["held"] not in stranger.get("/cgthub/console/orders").text
    refused = stranger.get(f"/cgthub/console/orders/{ids['held']}")
    assert refused.status_code == 403 and "CRM-00001" not in refused.text


def test_data_scope_per_market_from_the_role_config(db_url, console, auth_manager, tmp_path: Path, monkeypatch):
    ids = seed(db_url)
    config = tmp_path / "config"
    config.mkdir()
    (config / "console_roles.yaml").write_text(
        "roles:\n  de_liaison:\n    scopes: [status:read]\n    data: {markets: [DE]}\n"
    )
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    client = signed_in(console, auth_manager, "dora", "de_liaison")
    assert ids["held"] not in client.get("/cgthub/console/orders").text  # the seeded orders are US
    assert client.get(f"/cgthub/console/orders/{ids['held']}").status_code == 404


def test_quarantine_shows_the_payload_decoded_with_patient_identifiers_masked(db_url, console, auth_manager):
    from cgthub import archive, quarantine

    message = (
        b"MSH|^~\\&|EPIC|HOSP|CGTHUB|HUB|202603020800||ORU^R01|C1|P|2.5\r"
        b"PID|1||MRN123456^^^HOSP^MR||DOE^JANE||19800101|F\r"
        b"OBR|1|PL-1|FL-1|APH^Apheresis\r"
    )
    with session_scope(db_url) as session:
        stored = archive.store(session, system="hl7", kind="ORU^R01", channel="mllp", payload=message, dedupe_key="C1")
        entry = quarantine.put(
            session, stage=quarantine.Stage.MAP, system="hl7", kind="ORU^R01", reason="no mapping", raw_id=stored.raw_id
        )
    client = signed_in(console, auth_manager)
    listing = client.get("/cgthub/console/quarantine").text
    assert f'data-entry="{entry.id}"' in listing and "no mapping" in listing and "actions/retry_quarantine/" in listing
    page = client.get(f"/cgthub/console/quarantine/{entry.id}").text
    assert "OBR|1|PL-1|FL-1|APH^Apheresis" in page and "PID|1|" in page
    for phi in ("MRN123456", "DOE", "JANE", "19800101"):
        assert phi not in page
    form = client.get(f"/cgthub/console/actions/retry_quarantine/{entry.id}").text
    assert "<dd>no mapping</dd>" in form  # the signer sees why it was quarantined
    viewer = signed_in(console, auth_manager, "vera", "viewer").get("/cgthub/console/quarantine").text
    assert f'data-entry="{entry.id}"' in viewer and "actions/retry_quarantine/" not in viewer


def test_partner_health_and_mappings_pages(db_url, console, auth_manager):
    from cgthub.outbox import Destination, enqueue

    with session_scope(db_url) as session:
        message = enqueue(session, Destination("crm", "crm"), "k1", {"order": "x"})
        message.status = "dead"
    client = signed_in(console, auth_manager)
    health = client.get("/cgthub/console/partners").text
    crm_row = health[health.index('data-partner="crm"') :].split("</tr>")[0]
    assert ">1</a>" in crm_row and "Replay all" in crm_row
    mappings = client.get("/cgthub/console/mappings").text
    us_crm = mappings[mappings.index('data-mapping="US/crm/enrollment"') :].split("</tr>")[0]
    assert "v1" in us_crm and "pinned" in us_crm and "First mapping of the CRM therapy-order record" in us_crm
    assert "v2 from" in us_crm  # the version that comes next, with its date and note


def test_hub_api_keys_still_work_beside_the_console(db_url, console):
    with session_scope(db_url) as session:
        _, token = create_key(session, name="liaison", scopes=["status:read"], all_data=True)
    assert console.get("/cgthub/api/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert console.get("/cgthub/api/orders").status_code == 401


OPERATOR_PASSWORD = "correct horse battery"


def add_operator(url: str, name: str = "olga", scopes: tuple[str, ...] = ("all",)) -> None:
    from cgthub import decisions

    with session_scope(url) as session:
        decisions.add_operator(session, name, OPERATOR_PASSWORD, scopes)


def sign(client: TestClient, path: str, password: str = OPERATOR_PASSWORD, code: str = "COI-VERIFIED") -> Any:
    form = client.get(path)
    assert form.status_code == 200, form.text
    shown_hash = form.text.split('name="shown_hash" value="')[1].split('"')[0]
    return client.post(
        path,
        data={
            "shown_hash": shown_hash,
            "meaning": "approved",
            "reason_code": code,
            "reason_text": "DIN checked with the CMO: a label swap at receipt, corrected",
            "password": password,
        },
        follow_redirects=False,
    )


def test_release_a_hub_hold_with_a_signed_reason_and_watch_it_leave_the_held_filter(db_url, console, auth_manager):
    from cgthub import decisions

    ids = seed(db_url)
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    path = f"/cgthub/console/actions/release_hold/{ids['held']}"
    refused = sign(client, path, password="not my password at all")
    assert refused.status_code == 401 and 'id="sign-error"' in refused.text
    assert ids["held"] in client.get("/cgthub/console/orders", params={"held": "true"}).text
    signed = sign(client, path)
    assert signed.status_code == 303 and "signed=" in signed.headers["location"]
    assert ids["held"] not in client.get("/cgthub/console/orders", params={"held": "true"}).text
    page = client.get(signed.headers["location"].removeprefix("http://testserver")).text
    assert 'id="signed"' in page and 'id="held"' not in page
    with session_scope(db_url) as session:
        [decision] = decisions.for_order(session, ids["held"])
        assert (decision.signer, decision.reason_code, decision.meaning) == ("olga", "COI-VERIFIED", "approved")
        assert ledger.verify(session, ids["held"]) == (1, [])


def test_a_user_without_the_scope_is_refused_the_signing_form_and_the_signature(db_url, console, auth_manager):
    ids = seed(db_url)
    add_operator(db_url, "vera")
    viewer = signed_in(console, auth_manager, "vera", "viewer")
    path = f"/cgthub/console/actions/release_hold/{ids['held']}"
    assert viewer.get(path).status_code == 403
    answer = viewer.post(
        path,
        data={"meaning": "approved", "reason_code": "COI-VERIFIED", "reason_text": "x", "password": OPERATOR_PASSWORD},
    )
    assert answer.status_code == 403
    assert ids["held"] in viewer.get("/cgthub/console/orders", params={"held": "true"}).text


def test_a_decision_the_console_has_no_form_for_answers_404_not_500(console, auth_manager):
    from cgthub.console.actions import CONSOLE_SCOPE
    from cgthub.decisions import Action

    client = signed_in(console, auth_manager)
    for action in set(Action) - set(CONSOLE_SCOPE):  # signed elsewhere: booking, release approval
        answer = client.get(f"/cgthub/console/actions/{action.value}/x")
        assert answer.status_code == 404 and "has no form" in answer.text, action


def test_replay_a_partners_dead_letter_signed_from_partner_health(db_url, console, auth_manager):
    from cgthub.outbox import Destination, OutboxMessage, enqueue

    with session_scope(db_url) as session:
        message = enqueue(session, Destination("crm", "crm"), "k1", {"order": "x"})
        message.status = "dead"
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    letters = client.get("/cgthub/console/partners", params={"partner": "crm"}).text
    assert f'data-dead-letter="{message.id}"' in letters
    answer = sign(
        client, f"/cgthub/console/actions/replay_dead_letters/crm?message={message.id}", code="RECEIVER-FIXED"
    )
    assert answer.status_code == 303
    with session_scope(db_url) as session:
        assert session.get(OutboxMessage, message.id).status == "pending"


def test_each_airflow_session_signing_in_to_the_console_is_in_the_audit_trail_once(db_url, console, auth_manager):
    from cgthub import audit_trail
    from cgthub.tables import AuditRecord

    client = signed_in(console, auth_manager, "olga", "op")
    for _ in range(3):
        assert client.get("/cgthub/console/orders").status_code == 200
    signed_in(console, auth_manager, "vera", "viewer").get("/cgthub/console/orders")
    with session_scope(db_url) as session:
        rows = session.query(AuditRecord).filter_by(action="console.sign_in").order_by(AuditRecord.seq).all()
        assert [r.actor for r in rows] == ["airflow:olga", "airflow:vera"]
        assert audit_trail.verify(session).problems == []


def test_bulk_discard_by_filter_is_signed_once_and_refused_without_the_scope(db_url, console, auth_manager):
    from cgthub import quarantine
    from cgthub.tables import OperatorDecision, QuarantineEntry

    with session_scope(db_url) as session:
        crm = [
            quarantine.put(session, stage=quarantine.Stage.MAP, system="crm", kind="enrollment", reason=f"no pin {n}")
            for n in (1, 2)
        ]
        other = quarantine.put(session, stage=quarantine.Stage.MAP, system="erp", kind="enrollment", reason="erp")
        crm_ids, other_id = [e.id for e in crm], other.id
    add_operator(db_url)
    add_operator(db_url, "vera")
    viewer = signed_in(console, auth_manager, "vera", "viewer")
    assert "bulk-discard" not in viewer.get("/cgthub/console/quarantine", params={"partner": "crm"}).text
    bulk = "/cgthub/console/actions/discard_quarantine/bulk?partner=crm&kind=enrollment"
    assert viewer.get(bulk).status_code == 403
    answer = viewer.post(
        bulk,
        data={"meaning": "approved", "reason_code": "TEST-MESSAGE", "reason_text": "x", "password": OPERATOR_PASSWORD},
    )
    assert answer.status_code == 403

    client = signed_in(console, auth_manager)
    listing = client.get("/cgthub/console/quarantine", params={"partner": "crm", "kind": "enrollment"}).text
    assert (
        'id="bulk-discard"' in listing and "actions/discard_quarantine/bulk?partner=crm&amp;kind=enrollment" in listing
    )
    form = client.get(bulk).text
    assert all(f"<dt>#{i}</dt>" in form for i in crm_ids) and f"<dt>#{other_id}</dt>" not in form
    signed = sign(client, bulk, code="TEST-MESSAGE")
    assert signed.status_code == 303 and "signed=" in signed.headers["location"]
    with session_scope(db_url) as session:
        statuses = {e.id: e.status for e in session.query(QuarantineEntry)}
        assert [statuses[i] for i in crm_ids] == ["discarded", "discarded"] and statuses[other_id] == "open"
        decided = session.query(OperatorDecision).filter_by(action="discard_quarantine").all()
        assert {(d.signer, d.reason_code) for d in decided} == {("olga", "TEST-MESSAGE")} and len(decided) == 2
    assert "bulk-discard" not in client.get("/cgthub/console/quarantine", params={"partner": "crm"}).text


def test_mappings_page_shows_what_the_next_version_changes_on_archived_traffic(db_url, console, auth_manager):
    from cgthub import archive
    from cgthub.settings import PROJECT_ROOT

    page = PROJECT_ROOT / "mappings/crm/enrollment/fixtures/page_with_cancellation.json"
    with session_scope(db_url) as session:
        archive.store(session, system="crm", kind="enrollment", channel="poll", payload=page.read_bytes())
    mappings = signed_in(console, auth_manager).get("/cgthub/console/mappings").text
    us_crm = mappings[mappings.index('data-mapping="US/crm/enrollment"') :].split("</tr>")[0]
    shown = us_crm[us_crm.index('data-diff="v1-v2"') :]
    assert "On the 1 newest archived payloads" in shown
    assert "<code>order.therapy</code> changed 1" in shown and "CART-19 -&gt; CART-19-KYM" in shown
