"""The console as a coordinator uses it: Debian's Chromium against a real `airflow api-server` with the plugin.

Sign in on Airflow's own login page, find the held order, open it, see its timeline, release its
hold with a signed reason and watch it leave the held filter, replay a dead letter, retry a message
the CRM's new product code had quarantined once the market's code map knows the code; a viewer
sees no button and the API refuses the action. Every request to anything but the server is
aborted, so a page that needs a CDN breaks here. Each page's screenshot is written to $CGTHUB_SCREENSHOTS
(`make screenshots` sets var/screenshots) or the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cgthub import pipeline, quarantine, routing
from cgthub.api.auth import create_key
from cgthub.mapping import registry
from cgthub.outbox import Destination, OutboxMessage, enqueue
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry
from tests.test_console import OPERATOR_PASSWORD, add_operator, seed

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
AIRFLOW_PASSWORDS = {"olga": "olga-airflow-pw", "vera": "vera-airflow-pw"}


def _unavailable(reason: str) -> None:
    """Skip with the reason on a workstation; under CI=true a missing browser fails the run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests need it under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get where missing and allowed (root, or CI=true)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "chromium"],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing: `sudo apt-get install -y chromium`")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is missing: `make install` (it is in the test extras)")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of config/ that this test and its server read (CGTHUB_CONFIG_DIR), so a fix can land in it."""
    copy = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", copy)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(copy))
    registry.clear_cache()
    yield copy
    registry.clear_cache()


def _crm_enrolment(crm_id: str, product: str) -> bytes:
    """A CRM therapy-order record as the CRM's REST API pages it (tests.test_mapping_engine's shape)."""
    return json.dumps(
        {
            "id": crm_id,
            "status": "ENROLLED",
            "enrolledAt": "2026-03-02T09:00:00",
            "product": product,
            "site": {"id": "US-SITE-1", "country": "US"},
            "patient": {"coiId": "CHW123426000044", "mrn": "MRN00000044", "postalPrefix": "021"},
        }
    ).encode()


def _add_code(config: Path, market: str, code_map: str, source: str, canonical: str) -> None:
    """The fix as an operator lands it: one entry in the market file's code map."""
    path = config / "markets" / f"{market}.yaml"
    document = yaml.safe_load(path.read_text())
    maps = document.get("code_maps") or {}
    maps.setdefault(code_map, {})[source] = canonical
    document["code_maps"] = maps
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture
def airflow_server(db_url: str, tmp_path: Path, config_dir: Path) -> Iterator[str]:
    """`airflow api-server` in its own process, the plugin serving the hub on this test's database."""
    from cgthub.airflow_env import migrate_metadata_db

    migrate_metadata_db()
    passwords = tmp_path / "airflow-passwords.json"
    passwords.write_text(json.dumps(AIRFLOW_PASSWORDS))
    port = _free_port()
    env = {
        **os.environ,
        "CGTHUB_DATABASE_URL": db_url,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "olga:op,vera:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    log = (tmp_path / "api-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--port", str(port), "--apps", "core", "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/cgthub/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"airflow api-server did not start: {(tmp_path / 'api-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CGTHUB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _offline(context: Any, base: str) -> None:
    """Abort every request that leaves the server: the console and /docs must need nothing else."""
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())


def _sign_in(browser: Any, base: str, user: str, where: str) -> Any:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    _offline(context, base)
    page = context.new_page()
    page.goto(f"{base}{where}")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(AIRFLOW_PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}{where}", timeout=30_000)
    return page


def test_a_coordinator_releases_a_hold_replays_a_dead_letter_and_retries_after_a_mapping_fix(
    db_url, chromium, airflow_server, config_dir, shots
):
    from playwright.sync_api import expect, sync_playwright

    ids = seed(db_url)
    add_operator(db_url, "olga")
    with session_scope(db_url) as session:
        letter = enqueue(session, Destination("crm", "crm"), "crm:status:1", {"order": ids["done"]})
        letter.status, letter.attempts, letter.last_error = "dead", 8, "crm answered 503 eight times"
        _, reader = create_key(session, name="reader", scopes=["status:read"], all_data=True)
        # The CRM starts sending a product code the US code map does not know yet: quarantined at map.
        renamed = _crm_enrolment("CRM-00044", "KYM-BCMA-2")
        mapper = routing.mapper(session, "crm", "enrollment")
        pipeline.ingest(session, system="crm", kind="enrollment", channel="poll", payload=renamed, mapper=mapper)
        [unmapped] = [e for e in quarantine.list_entries(session) if e.stage == quarantine.Stage.MAP.value]
        unmapped_id = unmapped.id
        seeded_entry = next(e.id for e in quarantine.list_entries(session) if e.id != unmapped_id)
    base = airflow_server

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = _sign_in(browser, base, "olga", "/cgthub/console/orders")
        expect(page.locator("header .who")).to_contain_text("olga")
        page.screenshot(path=shots / "orders-board.png", full_page=True)

        page.get_by_label("held").check()
        page.get_by_role("button", name="Filter").click()
        held_row = page.locator(f'tr[data-order="{ids["held"]}"]')
        expect(held_row).to_contain_text("coi discrepancy")
        expect(page.locator(f'tr[data-order="{ids["done"]}"]')).to_have_count(0)

        held_row.get_by_role("link", name=ids["held"]).click()
        expect(page.locator("svg.v2v")).to_be_visible()
        expect(page.locator('svg.v2v circle[data-kind="actual"][data-milestone="collected"]')).to_have_count(1)
        expect(page.locator('svg.v2v rect.hold[data-hold="open"]')).to_have_count(1)
        page.screenshot(path=shots / "order-detail-held.png", full_page=True)

        page.locator("#release-hold").click()
        expect(page.locator("#shown")).to_contain_text("on hold")
        page.get_by_label("reason code").select_option("COI-VERIFIED")
        page.get_by_label("why, in words").fill("DIN checked with the CMO: a label swap at receipt, corrected")
        page.get_by_label("password").fill("a wrong password!")
        page.screenshot(path=shots / "sign-release-hold.png", full_page=True)
        page.locator("#sign").click()
        expect(page.locator("#sign-error")).to_contain_text("re-authentication failed")
        page.get_by_label("reason code").select_option("COI-VERIFIED")
        page.get_by_label("why, in words").fill("DIN checked with the CMO: a label swap at receipt, corrected")
        page.get_by_label("password").fill(OPERATOR_PASSWORD)
        page.locator("#sign").click()
        expect(page.locator("#signed")).to_be_visible()
        expect(page.locator("#held")).to_have_count(0)
        page.screenshot(path=shots / "order-detail-released.png", full_page=True)

        page.goto(f"{base}/cgthub/console/orders?held=true")
        expect(page.locator(f'tr[data-order="{ids["held"]}"]')).to_have_count(0)
        expect(page.locator(f'tr[data-order="{ids["other_held"]}"]')).to_have_count(1)

        page.goto(f"{base}/cgthub/console/quarantine")
        page.screenshot(path=shots / "quarantine.png", full_page=True)
        page.locator("tr[data-entry] a").first.click()
        expect(page.locator("h1")).to_contain_text("Quarantine #")
        page.screenshot(path=shots / "quarantine-entry.png", full_page=True)

        page.goto(f"{base}/cgthub/console/partners?partner=crm")
        page.screenshot(path=shots / "partner-health.png", full_page=True)
        page.locator(f'tr[data-dead-letter="{letter.id}"]').get_by_role("link", name="Replay…").click()
        page.get_by_label("reason code").select_option("RECEIVER-FIXED")
        page.get_by_label("why, in words").fill("the CRM's receiving endpoint is back since 09:10")
        page.get_by_label("password").fill(OPERATOR_PASSWORD)
        page.locator("#sign").click()
        expect(page.locator("#signed")).to_be_visible()
        expect(page.locator(f'tr[data-dead-letter="{letter.id}"]')).to_have_count(0)

        # Retry after a mapping fix: the entry names the unknown code; the code map learns it; retry, signed.
        page.goto(f"{base}/cgthub/console/quarantine?stage=map")
        unmapped_row = page.locator(f'tr[data-entry="{unmapped_id}"]')
        expect(unmapped_row).to_contain_text("'KYM-BCMA-2' is not in code map 'therapy'")
        page.screenshot(path=shots / "quarantine-mapping-failure.png", full_page=True)
        _add_code(config_dir, "US", "therapy", "KYM-BCMA-2", "CART-BCMA")  # the fix lands on disk
        unmapped_row.get_by_role("link", name="Retry…").click()
        expect(page.locator("#shown")).to_contain_text("'KYM-BCMA-2' is not in code map 'therapy'")
        page.get_by_label("reason code").select_option("MAPPING-FIXED")
        page.get_by_label("why, in words").fill("the CRM renamed KYM-BCMA; the US code map now knows KYM-BCMA-2")
        page.get_by_label("password").fill(OPERATOR_PASSWORD)
        page.screenshot(path=shots / "sign-retry-quarantine.png", full_page=True)
        page.locator("#sign").click()
        expect(page.locator("#signed")).to_be_visible()
        expect(page.locator("h1")).to_contain_text("replayed")
        expect(page.locator("main")).to_contain_text("1 event(s) appended")
        page.screenshot(path=shots / "quarantine-retried.png", full_page=True)
        page.goto(f"{base}/cgthub/console/quarantine")
        expect(page.locator(f'tr[data-entry="{seeded_entry}"]')).to_have_count(1)
        expect(page.locator(f'tr[data-entry="{unmapped_id}"]')).to_have_count(0)
        page.goto(f"{base}/cgthub/console/orders?q=CRM-00044")
        page.locator("tr[data-order] a").first.click()
        expect(page.locator("h1")).to_contain_text("enrolled")
        expect(page.locator("p.facts")).to_contain_text("CART-BCMA")
        expect(page.locator('#ledger[data-verified="yes"]')).to_contain_text("1 entries")
        page.screenshot(path=shots / "order-detail-after-retry.png", full_page=True)

        page.goto(f"{base}/cgthub/console/mappings")
        expect(page.locator('tr[data-mapping="US/crm/enrollment"]')).to_contain_text("v1")
        page.screenshot(path=shots / "mappings.png", full_page=True)

        page.goto(f"{base}/cgthub/api/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("cgthub order transparency API")
        page.screenshot(path=shots / "api-docs-offline.png")

        viewer = _sign_in(browser, base, "vera", f"/cgthub/console/orders/{ids['other_held']}")
        expect(viewer.locator("h1")).to_contain_text(ids["other_held"])
        expect(viewer.locator("#release-hold")).to_have_count(0)
        expect(viewer.locator("a.resolve")).to_have_count(0)
        viewer.screenshot(path=shots / "order-detail-viewer.png", full_page=True)
        viewer.goto(f"{base}/cgthub/console/quarantine")
        expect(viewer.locator(f'tr[data-entry="{seeded_entry}"]')).to_have_count(1)
        expect(viewer.locator("a.retry, a.discard")).to_have_count(0)
        refused_form = viewer.goto(f"{base}/cgthub/console/actions/retry_quarantine/{seeded_entry}")
        assert refused_form is not None and refused_form.status == 403
        expect(viewer.locator("main")).to_contain_text("does not grant quarantine:act")
        browser.close()

    refused = httpx.post(
        f"{base}/cgthub/api/orders/{ids['other_held']}/release-hold",
        headers={"Authorization": f"Bearer {reader}"},
        json={
            "signer": "olga",
            "password": OPERATOR_PASSWORD,
            "meaning": "approved",
            "reason_code": "COI-VERIFIED",
            "reason_text": "a key without the operate scope",
        },
    )
    assert refused.status_code == 403
    retry_refused = httpx.post(
        f"{base}/cgthub/api/quarantine/{seeded_entry}/retry",
        headers={"Authorization": f"Bearer {reader}"},
        json={
            "signer": "olga",
            "password": OPERATOR_PASSWORD,
            "meaning": "approved",
            "reason_code": "MAPPING-FIXED",
            "reason_text": "a key without the operate scope",
        },
    )
    assert retry_refused.status_code == 403
    with session_scope(db_url) as session:
        assert session.get(OutboxMessage, letter.id).status == "pending"
        assert session.get(QuarantineEntry, seeded_entry).status == "open"
