"""`cgthub mappings replay` maps each record under the market live ingest chose for it.

A replay maps archived payloads again with the version it is given, but under each record's own
market (its site, or its HL7 sending facility), as routing does on live ingest: a DE enrolment's
postal prefix is dropped and a DE hospital's order numbers are tokenized on replay too, so a replay
writes into the ledger and the projection nothing the live path would not keep for that market.
Checked as tests/test_residency_live.py checks the live path: in no table and in no API answer.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import quarantine
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from tests import api_server
from tests.test_hl7_listener import Running, exchange
from tests.test_qualification import _edit
from tests.test_residency_live import (
    DE_PLACER,
    DE_POSTAL,
    US_POSTAL,
    _crm_record,
    _enrol_through_crm,
    _orders,
    _orm,
    _whole_store,
)
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)

api = api_server.api  # fixture: the API on a real HTTP server, on each database

DE_HD_01 = '"sponsor site qualification audit QA-DE-0101; staff training 2025-12"}\n'
CRM_REPLAY = ["mappings", "replay", "--system", "crm", "--kind", "enrollment"]


def _replay(*args: str) -> str:
    run = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert run.exit_code == 0, run.output
    return " ".join(run.output.split())


def _answers(api, order_ids: list[str]) -> str:
    """What the API answers about these orders and the event feed, as one text."""
    client = api.client(api.key("admin", "status:read", "timeline:read", "custody:read"))
    paths = ["/orders", "/events"]
    for order_id in order_ids:
        paths += [f"/orders/{order_id}{tail}" for tail in ("", "/timeline", "/custody", "/fhir")]
    answers = [client.get(path) for path in paths]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    return "\n".join(a.text for a in answers)


def _bodies(url: str) -> dict[str, str]:
    with session_scope(url) as s:
        return {e.source_event_id: e.body for e in s.scalars(select(LedgerEntry))}


def test_a_replay_keeps_each_records_market_rules_so_de_data_stays_out(
    api,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    url = api.database_url
    # DE-HD-01 may order CART-22 (KYM-CD22, which only v2 maps): the v2 replay can add its enrolment.
    _edit(config_dir, DE_HD_01, DE_HD_01 + "      - {therapy: CART-22, from: 2026-01-01, basis: test}\n", version=2)
    # One CRM page, two markets (US-SITE-1 may order v2's CART-19-KYM); then a DE enrolment v1 cannot map.
    _enrol_through_crm(
        url,
        monkeypatch,
        [_crm_record(1, "US-SITE-1", "US", US_POSTAL), _crm_record(2, "DE-HD-01", "DE", DE_POSTAL)],
    )
    app = crm_sandbox.create_app()
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        app.sandbox_state.upsert(
            _crm_record(3, "DE-HD-01", "DE", DE_POSTAL) | {"product": "KYM-CD22", "modifiedAt": "2026-03-02T10:00:00"}
        )
        assert crm_sync.pull(database_url=url).quarantined == 1
    with session_scope(url) as s:
        (unmapped,) = quarantine.list_entries(s, stage=quarantine.Stage.MAP)
    with Running(url) as running:
        (ack,) = exchange(running.port, frame(_orm(2, "DE-HD-01", crm="CRM-00002", placer=DE_PLACER, control="R1")), 1)
    assert ack_code(ack) == "AA"
    before = _bodies(url)

    # The pinned version again (a routine re-run): each record maps as it came in, nothing is corrected.
    crm = _replay(*CRM_REPLAY, "--version", "v1")
    assert "2 events unchanged, 0 corrected, 0 added" in crm
    hl7 = _replay("mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v2")
    assert "1 events unchanged, 0 corrected, 0 added" in hl7
    assert _bodies(url) == before

    # v2, forced (not yet effective): the US record is corrected under US rules, the DE record is
    # unchanged (DE's own code map, its prefix dropped), and the DE enrolment v1 could not map is added.
    v2 = _replay(*CRM_REPLAY, "--version", "v2", "--force")
    assert "1 events unchanged, 1 corrected, 1 added" in v2 and "1 quarantined payloads released" in v2
    bodies = _bodies(url)
    assert '"therapy":"CART-19-KYM"' in bodies["enrol:CRM-00001@v2"] and US_POSTAL in bodies["enrol:CRM-00001@v2"]
    assert "enrol:CRM-00002@v2" not in bodies
    assert '"therapy":"CART-22"' in bodies["enrol:CRM-00003"] and "postal_code" not in bodies["enrol:CRM-00003"]
    with session_scope(url) as s:
        assert quarantine.list_entries(s, stage=quarantine.Stage.MAP) == []
        assert s.get(type(unmapped), unmapped.id).status != "open"

    orders = _orders(url)
    assert (orders["CRM-00002"].market, orders["CRM-00003"].market) == ("DE", "DE")
    assert orders["CRM-00002"].status == "apheresis_scheduled" and orders["CRM-00003"].therapy == "CART-22"
    seen = _answers(api, [orders[n].id for n in ("CRM-00001", "CRM-00002", "CRM-00003")]) + _whole_store(url)
    assert US_POSTAL in seen  # the US market keeps it: the rule is DE's
    for clear in (DE_POSTAL, DE_PLACER):
        assert clear not in seen


def test_market_forces_one_markets_rules_on_every_record(db_url, monkeypatch):
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(1, "US-SITE-1", "US", US_POSTAL)])
    # Without --market the US record maps as it came in; --market DE maps it under DE's rules.
    assert "would leave 1 events unchanged, correct 0" in _replay(*CRM_REPLAY, "--version", "v1", "--dry-run")
    forced = _replay(*CRM_REPLAY, "--version", "v1", "--market", "DE", "--dry-run")
    assert "would leave 0 events unchanged, correct 1" in forced
    assert US_POSTAL in _bodies(db_url)["enrol:CRM-00001"]  # a dry run: nothing written
