"""The site registry: errors that name file and line, an unknown sender quarantined at stage `route`
on the archive-only path and released once the registry knows it, and JSON partners routed by the
market of the order they name (the courier webhook over HTTP, one page of two markets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import partner_sync, quarantine, sites
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.mapping import registry
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, RawMessage
from connectors.common.sandbox import SandboxServer
from connectors.courier import webhook
from connectors.courier.signature import HEADER, sign
from tests.test_hl7_listener import Running, exchange
from tests.test_residency_live import _crm_record, _enrol_through_crm, _orders, _orm

SECRET = "courier-shared-secret"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of config/ the test may edit; the hub reads it instead of the repo's."""
    copy = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", copy)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(copy))
    registry.clear_cache()
    sites.clear_cache()
    yield copy
    monkeypatch.undo()
    registry.clear_cache()
    sites.clear_cache()


def test_registry_errors_name_the_file_and_line(config_dir: Path):
    path = config_dir / "sites.yaml"
    path.write_text("sites:\n  US-BOS-01: {market: US, facilities: [BOS]}\n  DE-HD-01: {market: Germany}\n")
    with pytest.raises(sites.SiteRegistryError, match=r"sites\.yaml:3: sites\.DE-HD-01\.market: .*two-letter"):
        sites.registry()
    path.write_text("sites:\n  A: {market: US, facilities: [HIS]}\n  B: {market: DE, facilities: [HIS]}\n")
    with pytest.raises(sites.SiteRegistryError, match=r"sites\.yaml:1: .*facility HIS speaks for sites in several"):
        sites.registry()
    path.write_text("sites: {}\nsources:\n  crm/enrollment: {}\n")
    with pytest.raises(sites.SiteRegistryError, match=r"sites\.yaml:3: sources\.crm/enrollment: .*where the site"):
        sites.registry()


def test_an_unknown_sender_waits_at_route_until_the_registry_knows_it(db_url, monkeypatch, config_dir: Path):
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(2, "DE-HD-01", "DE", "691zx")])
    message = _orm(2, "DE-HD-02", crm="CRM-00002", placer="PL-NEW-1", control="N1")
    with Running(db_url, apply=False) as running:  # archive-only, as `make up` and compose run it
        (ack,) = exchange(running.port, frame(message), 1)
    assert ack_code(ack) == "AA"
    summary = partner_sync.apply_hl7_inbox(database_url=db_url)  # the HL7 inbox DAG's step
    assert (summary["appended"], summary["quarantined"]) == (0, 1)
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s, stage=quarantine.Stage.ROUTE)
        assert "'DE-HD-02' (MSH-4) is not registered for any site" in entry.reason
        assert "cgthub sites replay" in entry.reason

    # The new interface engine is registered for the Heidelberg site; the waiting message goes through.
    text = (config_dir / "sites.yaml").read_text()
    (config_dir / "sites.yaml").write_text(text.replace("facilities: [DE-HD-01]", "facilities: [DE-HD-01, DE-HD-02]"))
    sites.clear_cache()  # as the `cgthub` process starting now reads it
    result = CliRunner().invoke(cli, ["sites", "replay"], catch_exceptions=False)
    assert result.exit_code == 0 and "1 payload(s) routed and applied, 0 still waiting" in result.output
    order = _orders(db_url)["CRM-00002"]
    assert (order.status, order.site) == ("apheresis_scheduled", "DE-HD-01")
    assert order.projection["refs"]["hospital_placer_order"].startswith("psn:")  # DE's residency held on replay
    with session_scope(db_url) as s:
        assert quarantine.list_entries(s, stage=quarantine.Stage.ROUTE) == []
        assert s.scalar(select(RawMessage.status).where(RawMessage.system == "hl7")) == "processed"


def test_a_courier_page_of_two_markets_maps_each_event_under_its_orders_market(db_url, monkeypatch, config_dir: Path):
    # A market rule only the DE file has: its shippers' ids stay in the country.
    de = config_dir / "markets" / "DE.yaml"
    de.write_text(
        de.read_text().replace("drop: [attributes.postal_code]", "drop: [attributes.postal_code, shipment.shipper_id]")
    )
    _enrol_through_crm(
        db_url, monkeypatch, [_crm_record(1, "US-BOS-01", "US", "021zx"), _crm_record(2, "DE-HD-01", "DE", "691zx")]
    )

    def picked_up(n: int) -> dict:
        return {
            "eventId": f"EVT-{n}",
            "shipmentId": f"SHP-{n}-OUT",
            "status": "PICKED_UP",
            "timestamp": "2026-03-09T14:00:00-05:00",
            "direction": "TO_MANUFACTURER",
            "reference": {"crmOrderId": f"CRM-{n:05d}"},
            "shipper": {"id": f"DS-SHIPPER-{n}"},
        }

    body = json.dumps({"events": [picked_up(1), picked_up(2)]}).encode()
    with SandboxServer(webhook.create_app(secret=SECRET, database_url=db_url)) as receiver:
        answer = requests.post(
            f"{receiver.base_url}/webhooks/courier", data=body, headers={HEADER: sign(SECRET, body)}, timeout=10
        )
    assert answer.status_code == 202 and answer.json()["appended"] == 2
    with session_scope(db_url) as s:
        bodies = {e.source_event_id: e.body for e in s.scalars(select(LedgerEntry))}
    assert "DS-SHIPPER-1" in bodies["EVT-1"]  # the US order's event keeps it
    assert "DS-SHIPPER-2" not in bodies["EVT-2"] and "SHP-2-OUT" in bodies["EVT-2"]
