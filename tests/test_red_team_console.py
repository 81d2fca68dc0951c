"""Red team of the operator console (docs/red-team.md, "Operator console"): each attack made through the
plugin's app mounted at /cgthub as Airflow's API server mounts it, signed in by real Airflow JWTs
from Airflow's own auth manager, on SQLite and PostgreSQL. A row of the doc names each test here.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cgthub import archive, quarantine
from cgthub.devtools.samples import T0
from cgthub.store import session_scope
from tests import test_console
from tests.test_console import OPERATOR_PASSWORD, add_operator, airflow_token, seed, sign, signed_in

auth_manager = test_console.auth_manager
console = test_console.console

CONSOLE = "/cgthub/console"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PHI = ("Smithson", "MRN48213377", "19710412")


def _form(password: str = OPERATOR_PASSWORD, code: str = "COI-VERIFIED") -> dict[str, str]:
    return {"meaning": "approved", "reason_code": code, "reason_text": "checked with the CMO", "password": password}


def _held(client: TestClient, order_id: str) -> bool:
    return order_id in client.get(f"{CONSOLE}/orders", params={"held": "true"}).text


def _entry(url: str, **fields: Any) -> int:
    with session_scope(url) as session:
        values: dict[str, Any] = {"stage": quarantine.Stage.MAP, "system": "crm", "kind": "enrollment", "reason": "x"}
        return quarantine.put(session, **{**values, **fields}).id


def _quarantined_hl7(url: str, control_id: str, details: dict[str, Any] | None = None) -> tuple[bytes, int]:
    """An HL7 message naming a patient (PHI's name, MRN, birth date), archived and quarantined at map."""
    message = (
        f"MSH|^~\\&|EPIC|HOSP|CGTHUB|HUB|202603020800||ORU^R01|{control_id}|P|2.5\r"
        "PID|1||MRN48213377^^^HOSP^MR||Smithson^Jane||19710412|F\r"
    ).encode()
    with session_scope(url) as session:
        stored = archive.store(
            session, system="hl7", kind="ORU^R01", channel="mllp", payload=message, dedupe_key=control_id
        )
        entry = quarantine.put(
            session,
            stage=quarantine.Stage.MAP,
            system="hl7",
            kind="ORU^R01",
            reason="no mapping",
            raw_id=stored.raw_id,
            details=details,
        )
        return message, entry.id


def _roles(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """The project's configuration with console_roles.yaml replaced."""
    import shutil

    from cgthub.settings import PROJECT_ROOT

    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    (config / "console_roles.yaml").write_text(text)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))


# CSRF -------------------------------------------------------------------------------------------


def test_a_signing_form_posted_from_another_origin_is_refused_even_with_the_password(db_url, console, auth_manager):
    ids = seed(db_url)
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    path = f"{CONSOLE}/actions/release_hold/{ids['held']}"
    for headers in (
        {"Origin": "https://partner.example"},
        {"Origin": "null"},  # a sandboxed frame or a data: page
        {"Referer": "https://partner.example/orders"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://portal.hub.example"},  # a sibling subdomain
    ):
        answer = client.post(path, data=_form(), headers=headers, follow_redirects=False)
        assert answer.status_code == 403, (headers, answer.status_code)
        assert "another site" in answer.text
    assert _held(client, ids["held"])
    # The console's own form (same origin, as a browser posts it) still signs.
    form = client.get(path).text
    shown_hash = form.split('name="shown_hash" value="')[1].split('"')[0]
    own = client.post(
        path,
        data={**_form(), "shown_hash": shown_hash},
        headers={"Origin": "http://testserver", "Referer": f"http://testserver{path}", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert own.status_code == 303 and not _held(client, ids["held"])


def test_a_forged_post_without_the_operators_password_signs_nothing(db_url, console, auth_manager):
    """The signing password is a second defence: a same-origin POST without it (say, from a script an
    attacker got into a page) is refused, and so is every GET route: none changes state."""
    ids = seed(db_url)
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    path = f"{CONSOLE}/actions/release_hold/{ids['held']}"
    for data in ({}, {**_form(), "password": ""}, {**_form(), "password": "guess"}):
        answer = client.post(path, data=data, follow_redirects=False)
        assert answer.status_code in (401, 422), answer.status_code
    assert client.get(path).status_code == 200 and client.get(f"{path}?signed=1").status_code == 200
    assert _held(client, ids["held"])


def test_a_console_post_without_the_hash_of_what_was_shown_signs_nothing(db_url, console, auth_manager):
    """A signature is over what the page showed: a POST without that hash (a script, a stale form
    copied by hand) is refused by name, with the operator's right password, and the hold stays."""
    ids = seed(db_url)
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    path = f"{CONSOLE}/actions/release_hold/{ids['held']}"
    for data in (_form(), {**_form(), "shown_hash": ""}):
        answer = client.post(path, data=data, follow_redirects=False)
        assert answer.status_code == 422 and "no hash of what was shown" in answer.text
    assert _held(client, ids["held"])
    assert sign(client, path).status_code == 303 and not _held(client, ids["held"])


def test_airflows_session_cookie_is_samesite_lax_and_its_login_sends_nowhere_else(auth_manager, monkeypatch):
    """The console rides on Airflow's `_token` cookie: Airflow sets it HttpOnly and SameSite=Lax (a
    cross-site POST does not carry it), and its login hand-off refuses a `next` on another host."""
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    with TestClient(auth_manager.get_fastapi_app()) as airflow_auth:
        for target, lands in (
            ("/cgthub/console/orders", "/cgthub/console/orders"),
            ("https://evil.example/cgthub/console/orders", None),
            ("//evil.example/x", None),
            ("javascript:alert(1)", None),
        ):
            answer = airflow_auth.get("/token/login", params={"next": target}, follow_redirects=False)
            cookie = answer.headers["set-cookie"].lower()
            assert "samesite=lax" in cookie and "httponly" in cookie
            where = answer.headers["location"]
            assert "evil.example" not in where and "javascript" not in where, where
            if lands:
                assert where.endswith(lands)


def test_the_console_hands_the_login_a_next_on_its_own_host_whatever_host_header_came(console):
    answer = console.get(
        f"{CONSOLE}/orders?q=x",
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert "evil.example" not in answer.headers["location"]
    assert "next=%2Fcgthub%2Fconsole%2Forders%3Fq%3Dx" in answer.headers["location"]


# Stored XSS ---------------------------------------------------------------------------------------


def test_partner_text_is_escaped_on_every_page_that_shows_it(db_url, console, auth_manager):
    from cgthub.outbox import Destination, enqueue
    from cgthub.sync_state import SyncState

    ids = seed(db_url)
    hostile = f"{SCRIPT}{IMG}javascript:alert(1)</script><svg onload=alert(1)>"
    payload = (
        '{"note": "' + "</script><script>alert(1)</script>" + '", "order": "' + IMG.replace('"', "'") + '"}'
    ).encode()
    with session_scope(db_url) as session:
        raw = archive.store(session, system="crm", kind="enrollment", channel="poll", payload=payload)
        entry = quarantine.put(
            session,
            stage=quarantine.Stage.MAP,
            system="crm",
            kind=f"ORM^O01{IMG}",
            reason=f"no mapping for {hostile}",
            raw_id=raw.raw_id,
            details={"control_id": hostile, "facility": SCRIPT},
        )
        message = enqueue(session, Destination("crm", "crm"), f"k{IMG}", {"order": hostile})
        message.status = "dead"
        session.add(SyncState(partner="crm", stream=f"orders{IMG}", last_report={"errors": [hostile]}, updated_at=T0))
    client = signed_in(console, auth_manager)
    pages = {
        "quarantine list": client.get(f"{CONSOLE}/quarantine"),
        "quarantine entry": client.get(f"{CONSOLE}/quarantine/{entry.id}"),
        "retry form": client.get(f"{CONSOLE}/actions/retry_quarantine/{entry.id}"),
        "partners": client.get(f"{CONSOLE}/partners", params={"partner": "crm"}),
        "replay form": client.get(f"{CONSOLE}/actions/replay_dead_letters/crm"),
        "board search": client.get(f"{CONSOLE}/orders", params={"q": hostile[:200]}),
        "order": client.get(f"{CONSOLE}/orders/{ids['held']}"),
        "refused": client.get(f"{CONSOLE}/actions/resolve_alert/{SCRIPT}"),
    }
    for name, answer in pages.items():
        assert answer.status_code in (200, 404), (name, answer.status_code)
        lowered = answer.text.lower()
        assert "<script" not in lowered and "<img" not in lowered and "<svg onload" not in lowered, name
        assert 'href="javascript' not in lowered, name
    assert "&lt;script&gt;" in pages["quarantine entry"].text and "&lt;img" in pages["quarantine list"].text
    assert "&lt;script&gt;" in pages["partners"].text


def test_an_alerts_facts_and_a_hold_reason_are_escaped_in_the_order_page_and_its_timeline(
    db_url, console, auth_manager
):
    from cgthub.tables import Alert

    ids = seed(db_url)
    with session_scope(db_url) as session:
        session.add(
            Alert(
                order_id=ids["held"],
                kind="coi_discrepancy",
                severity="critical",
                message=f"DIN {SCRIPT} from {IMG}",
                details={"facts": SCRIPT},
                dedupe_key="red-team-1",
            )
        )
    client = signed_in(console, auth_manager)
    for path in (f"/orders/{ids['held']}", "/orders"):
        page = client.get(CONSOLE + path).text.lower()
        assert "<script" not in page and "<img" not in page, path
    with session_scope(db_url) as session:
        alert_id = session.query(Alert).filter_by(dedupe_key="red-team-1").one().id
    form = client.get(f"{CONSOLE}/actions/resolve_alert/{alert_id}").text
    assert "&lt;script&gt;" in form and "<script" not in form.lower()


# Clickjacking and headers ----------------------------------------------------------------------


def test_every_console_answer_forbids_framing_by_others_sniffing_caching_and_referrers(db_url, console, auth_manager):
    ids = seed(db_url)
    client = signed_in(console, auth_manager)
    answers = {
        "board": client.get(f"{CONSOLE}/orders"),
        "order": client.get(f"{CONSOLE}/orders/{ids['held']}"),
        "sign form": client.get(f"{CONSOLE}/actions/release_hold/{ids['held']}"),
        "refused": client.get(f"{CONSOLE}/orders/no-such-order"),
        "quarantine": client.get(f"{CONSOLE}/quarantine"),
        "partners": client.get(f"{CONSOLE}/partners"),
        "invalid query": client.get(f"{CONSOLE}/orders", params={"q": "x" * 201}),
    }
    for name, answer in answers.items():
        headers = answer.headers
        csp = headers.get("content-security-policy", "")
        assert headers.get("x-frame-options") == "SAMEORIGIN", name  # Airflow's UI frames it; others may not
        assert "frame-ancestors 'self'" in csp and "script-src 'none'" in csp and "form-action 'self'" in csp, name
        assert headers.get("x-content-type-options") == "nosniff", name
        assert "no-store" in headers.get("cache-control", ""), name
        assert headers.get("referrer-policy") == "same-origin", name
    css = client.get(f"{CONSOLE}/static/console.css")
    assert css.status_code == 200 and css.headers.get("x-content-type-options") == "nosniff"
    # No page needs a script: the policy that forbids them breaks nothing (no <script>, no on* handler).
    for name, answer in answers.items():
        assert "<script" not in answer.text and " onclick=" not in answer.text, name


# Authorization ----------------------------------------------------------------------------------


def test_a_viewer_posting_each_action_route_directly_is_refused_and_nothing_changes(db_url, console, auth_manager):
    from cgthub.outbox import Destination, OutboxMessage, enqueue
    from cgthub.tables import Alert, QuarantineEntry

    ids = seed(db_url)
    entry_id = _entry(db_url)
    with session_scope(db_url) as session:
        message = enqueue(session, Destination("crm", "crm"), "k1", {"order": "x"})
        message.status = "dead"
        alert_id = session.query(Alert).filter_by(order_id=ids["held"]).first().id
    add_operator(db_url, "vera")  # a registered signer, but her Airflow role grants no action
    viewer = signed_in(console, auth_manager, "vera", "viewer")
    for path, code in (
        (f"release_hold/{ids['held']}", "COI-VERIFIED"),
        (f"release_under_exception/{ids['held']}", "COI-VERIFIED"),
        (f"resolve_alert/{alert_id}", "COI-VERIFIED"),
        (f"acknowledge_alert/{alert_id}", "COI-VERIFIED"),
        (f"retry_quarantine/{entry_id}", "MAPPING-FIXED"),
        (f"discard_quarantine/{entry_id}", "TEST-MESSAGE"),
        ("retry_quarantine/bulk?partner=crm", "MAPPING-FIXED"),
        ("replay_dead_letters/crm", "RECEIVER-FIXED"),
    ):
        answer = viewer.post(f"{CONSOLE}/actions/{path}", data=_form(code=code), follow_redirects=False)
        assert answer.status_code == 403, (path, answer.status_code)
    with session_scope(db_url) as session:
        assert session.get(QuarantineEntry, entry_id).status == "open"
        assert session.get(OutboxMessage, message.id).status == "dead"
        assert session.get(Alert, alert_id).status == "open"
    assert _held(viewer, ids["held"])


def test_a_site_scoped_operator_cannot_read_or_act_on_another_sites_order_or_entry_by_id(
    db_url, console, auth_manager, tmp_path, monkeypatch
):
    from cgthub.tables import Alert, Order

    ids = seed(db_url)  # US-SITE-1's orders
    other_entry = _entry(db_url, order_id=ids["held"], reason="on US-SITE-1's order")
    orphan_entry = _entry(db_url, reason="matched no order", kind="orphan")
    with session_scope(db_url) as session:
        alert_id = session.query(Alert).filter_by(order_id=ids["held"]).first().id
    _roles(
        tmp_path,
        monkeypatch,
        "roles:\n  de_op:\n    scopes: [status:read, timeline:read, orders:release-hold, alerts:resolve,"
        " quarantine:act, outbox:replay]\n    data: {sites: [DE-SITE-1]}\n",
    )
    add_operator(db_url, "dieter")
    client = signed_in(console, auth_manager, "dieter", "de_op")
    for path in (
        f"/orders/{ids['held']}",
        f"/quarantine/{other_entry}",
        f"/quarantine/{orphan_entry}",
        f"/actions/release_hold/{ids['held']}",
        f"/actions/resolve_alert/{alert_id}",
        f"/actions/retry_quarantine/{other_entry}",
        f"/actions/discard_quarantine/{orphan_entry}",
        "/actions/replay_dead_letters/crm",
        "/actions/discard_quarantine/bulk?partner=crm",
    ):
        assert client.get(CONSOLE + path).status_code == 404, path
        posted = client.post(CONSOLE + path, data=_form(), follow_redirects=False)
        assert posted.status_code in (403, 404, 405), (path, posted.status_code)  # 405: a page, not a form
        assert "CRM-00001" not in posted.text and "US-SITE-1" not in posted.text
    listing = client.get(f"{CONSOLE}/quarantine").text
    assert f'data-entry="{other_entry}"' not in listing and f'data-entry="{orphan_entry}"' not in listing
    assert ids["held"] not in client.get(f"{CONSOLE}/orders").text
    with session_scope(db_url) as session:
        assert session.get(Order, ids["held"]).on_hold


def test_a_role_outside_the_config_sees_no_partner_health_mappings_or_archived_values(db_url, console, auth_manager):
    """README: "a role not listed sees nothing". The partner page and the mappings page (whose diff
    quotes values from any site's archived payloads) answered every signed-in Airflow user."""
    from cgthub.outbox import Destination, enqueue
    from cgthub.settings import PROJECT_ROOT

    page = PROJECT_ROOT / "mappings/crm/enrollment/fixtures/page_with_cancellation.json"
    with session_scope(db_url) as session:
        archive.store(session, system="crm", kind="enrollment", channel="poll", payload=page.read_bytes())
        enqueue(session, Destination("crm", "crm"), "k1", {"order": "x"}).status = "dead"
    stranger = signed_in(console, auth_manager, "sam", "nobody")
    for path in ("/partners", "/partners?partner=crm", "/mappings"):
        answer = stranger.get(CONSOLE + path)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "CART-19" not in answer.text and 'data-partner="crm"' not in answer.text
    operator = signed_in(console, auth_manager)
    assert "CART-19 -&gt; CART-19-KYM" in operator.get(f"{CONSOLE}/mappings").text


def test_a_site_scoped_user_sees_no_other_sites_archived_values_in_the_mappings_diff(
    db_url, console, auth_manager, tmp_path, monkeypatch
):
    from cgthub.settings import PROJECT_ROOT

    page = PROJECT_ROOT / "mappings/crm/enrollment/fixtures/page_with_cancellation.json"
    with session_scope(db_url) as session:
        archive.store(session, system="crm", kind="enrollment", channel="poll", payload=page.read_bytes())
    _roles(tmp_path, monkeypatch, "roles:\n  de_viewer:\n    scopes: [status:read]\n    data: {sites: [DE-SITE-1]}\n")
    mappings = signed_in(console, auth_manager, "dora", "de_viewer").get(f"{CONSOLE}/mappings")
    assert mappings.status_code == 200 and 'data-mapping="US/crm/enrollment"' in mappings.text
    assert "<code>order.therapy</code> changed" not in mappings.text and 'data-diff="' not in mappings.text
    assert "compared on archived payloads only for users who see all data" in mappings.text


def test_a_disabled_operator_cannot_sign_from_the_console(db_url, console, auth_manager):
    from cgthub import decisions

    ids = seed(db_url)
    add_operator(db_url)
    with session_scope(db_url) as session:
        decisions.disable_operator(session, "olga")
    client = signed_in(console, auth_manager)
    answer = sign(client, f"{CONSOLE}/actions/release_hold/{ids['held']}")
    assert answer.status_code == 401 and 'id="sign-error"' in answer.text
    assert _held(client, ids["held"])


def test_an_expired_revoked_or_foreign_airflow_token_is_no_session(db_url, console, auth_manager):
    import jwt
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    ids = seed(db_url)
    add_operator(db_url)
    path = f"{CONSOLE}/actions/release_hold/{ids['held']}"
    user = SimpleAuthManagerUser(username="olga", role="op")
    expired = auth_manager.generate_jwt(user, expiration_time_in_seconds=-3600)  # past Airflow's leeway
    revoked = airflow_token(auth_manager, "olga", "op")
    auth_manager.revoke_token(revoked)
    claims = jwt.decode(airflow_token(auth_manager, "olga", "op"), options={"verify_signature": False})
    foreign = jwt.encode({**claims, "aud": "another-deployment"}, "not-our-key", algorithm="HS512")
    own_key_other_audience = auth_manager._get_token_signer()
    other_audience = jwt.encode(
        {**claims, "aud": "another-deployment"},
        own_key_other_audience._secret_key,
        algorithm=own_key_other_audience.algorithm,
    )
    for name, token in (("expired", expired), ("revoked", revoked), ("foreign", foreign), ("audience", other_audience)):
        for method in ("get", "post"):
            extra = {"data": _form()} if method == "post" else {}
            answer = getattr(console, method)(path, cookies={"_token": token}, follow_redirects=False, **extra)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/auth/login"), (name, method)
            bearer = getattr(console, method)(
                path, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False
            )
            assert bearer.status_code == 303, (name, method)
    assert _held(signed_in(console, auth_manager), ids["held"])


# Errors, PHI and resources -------------------------------------------------------------------------


@pytest.fixture
def lenient(console: TestClient) -> TestClient:
    """The same client, answering a server error with its page instead of raising it in the test."""
    console._transport.raise_server_exceptions = False  # type: ignore[attr-defined]
    return console


def test_malformed_ids_and_filters_are_refused_by_name_never_a_500(db_url, lenient, auth_manager):
    seed(db_url)
    client = signed_in(lenient, auth_manager)
    huge = "9" * 25
    for path in (
        f"/quarantine/{huge}",
        "/quarantine/-1",
        f"/actions/retry_quarantine/{huge}",
        f"/actions/resolve_alert/{huge}",
        "/actions/resolve_alert/²",  # str.isdigit() says yes, int() says no
        "/actions/retry_quarantine/¹²",
        f"/actions/replay_dead_letters/crm?message={huge}",
        "/actions/replay_dead_letters/crm?message=-5",
        "/quarantine?stage=nonsense",
        "/quarantine?status=nonsense",
        "/actions/discard_quarantine/bulk?stage=nonsense",
        f"/orders/{'x' * 5000}",
        "/orders?held=maybe",
        f"/orders?q={'x' * 20_000}",
    ):
        answer = client.get(CONSOLE + path)
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text and "sqlalchemy" not in answer.text.lower(), path
    add_operator(db_url)
    from cgthub.outbox import Destination, OutboxMessage, enqueue

    with session_scope(db_url) as session:
        dead = [enqueue(session, Destination("crm", "crm"), f"k{n}", {"order": "x"}) for n in (1, 2)]
        for message in dead:
            message.status = "dead"
    for ids in (["x"], ["²"], [huge], [str(dead[0].id), "¹"]):  # never widened to every dead letter of crm
        data = {**_form(code="RECEIVER-FIXED"), "message": ids}
        posted = client.post(f"{CONSOLE}/actions/replay_dead_letters/crm", data=data, follow_redirects=False)
        assert posted.status_code == 422 and "message id" in posted.text, (ids, posted.status_code)
    with session_scope(db_url) as session:
        assert {session.get(OutboxMessage, m.id).status for m in dead} == {"dead"}


def test_an_error_page_carries_no_traceback_payload_or_patient_data(db_url, lenient, auth_manager, monkeypatch):
    from cgthub.console import ops

    message, entry_id = _quarantined_hl7(db_url, "C1")

    def broken(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError(f"could not mask {message.decode()}")

    monkeypatch.setattr(ops, "masked_payload", broken)
    answer = signed_in(lenient, auth_manager).get(f"{CONSOLE}/quarantine/{entry_id}")
    assert answer.status_code == 500
    assert "Traceback" not in answer.text and "RuntimeError" not in answer.text
    for phi in PHI:
        assert phi not in answer.text and phi not in str(answer.headers)


def test_masked_fields_stay_masked_in_the_sign_form_and_refusals(db_url, console, auth_manager):
    details = {"patient_name": "Smithson^Jane", "mrn": "MRN48213377", "birth_date": "19710412"}
    _, entry_id = _quarantined_hl7(db_url, "C2", details)
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    path = f"{CONSOLE}/actions/retry_quarantine/{entry_id}"
    for answer in (
        client.get(f"{CONSOLE}/quarantine/{entry_id}"),
        client.get(path),
        client.post(path, data={**_form("wrong", "MAPPING-FIXED"), "shown_hash": "0" * 64}),
        client.post(path, data={"meaning": "nonsense"}),
        client.get(f"{CONSOLE}/quarantine"),
    ):
        for phi in PHI:
            assert phi not in answer.text, (answer.request.url, phi)


def test_a_10_mb_quarantined_payload_opens_quickly_and_is_shown_cut(db_url, console, auth_manager):
    record = '{"orderId": "CRM-1", "note": "%s"}' % ("x" * 200)
    payload = ("[" + ",".join([record] * 45_000) + "]").encode()
    assert len(payload) > 10_000_000
    entry_id = 0
    with session_scope(db_url) as session:
        raw = archive.store(session, system="crm", kind="enrollment", channel="poll", payload=payload)
        entry_id = quarantine.put(
            session, stage=quarantine.Stage.MAP, system="crm", kind="enrollment", reason="big", raw_id=raw.raw_id
        ).id
    client = signed_in(console, auth_manager)
    started = time.perf_counter()
    answer = client.get(f"{CONSOLE}/quarantine/{entry_id}")
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200
    assert len(answer.content) < 2_000_000, len(answer.content)
    assert 'id="payload-cut"' in answer.text and "cgthub quarantine show" in answer.text
    assert elapsed < 10, elapsed  # generous for a loaded machine; it took seconds uncut
