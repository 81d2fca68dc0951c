"""A new market like DE is one small file: FR enabled in a copy of config/ (FR.yaml extending DE, one
FR site in sites.yaml) and an FR order run through the live path: the CRM sandbox over HTTP, the
hospital's HL7 over MLLP to the listener, the CMO's event feed over HTTP, and the status back to the
hospital as ORR^O02 over MLLP.

What FR inherits from DE holds (its postal prefix is dropped, its hospital order numbers tokenized,
nowhere in the store or the API), and what FR says itself holds too (a product code only FR's code
map knows, and its hospitals told in French, MSH-19).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import outbound, quarantine
from cgthub.cli import app
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.hl7v2 import parse
from cgthub.lifecycle import OrderProjection
from cgthub.mapping import registry
from cgthub.pseudonym import is_pseudonym
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry
from connectors.cmo import sandbox as cmo_sandbox
from connectors.cmo import sync as cmo_sync
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from connectors.hospital.receiver import HospitalReceiver
from tests import api_server
from tests.test_hl7_listener import Running, exchange
from tests.test_residency_live import _crm_record, _din, _orders, _orm, _oru, _whole_store

api = api_server.api

FR_FILE = """\
# France: like Germany (residency), with the EU product master's code and French for hospitals.
market: FR
extends: DE
code_maps:
  therapy:
    KYM-CD19-EU: CART-19
language: fr
"""
FR_SITE = "  FR-PAR-01: {market: FR, cmo: CMO-LEI, facilities: [FR-PAR-01], therapies: [CART-19]}\n"
FR_POSTAL = "750qj"  # letters no hash or timestamp holds
FR_PLACER = "PLFRQ3003"


@pytest.fixture
def fr_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """config/ copied, FR added as an operator would: one market file, one site line."""
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    (config / "markets" / "FR.yaml").write_text(FR_FILE)
    sites = config / "sites.yaml"
    text = sites.read_text()
    sites.write_text(text.replace("\nsites:\n", "\nsites:\n" + FR_SITE, 1))
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    registry.clear_cache()
    yield config
    registry.clear_cache()


def _markets(*args: str) -> Result:
    return CliRunner().invoke(app, ["markets", *args])


def test_fr_is_one_file_and_checks_clean(fr_config: Path) -> None:
    checked = _markets("check")
    assert checked.exit_code == 0, checked.output
    assert "FR: ok (baseline.yaml -> DE.yaml -> FR.yaml" in checked.output
    shown = _markets("show", "FR").output
    lines = {line.split(" = ")[0].strip(): line for line in shown.splitlines() if " = " in line}
    assert "markets/DE.yaml:" in lines["residency.drop"] and "markets/FR.yaml:7" in lines["language"]
    assert "markets/FR.yaml:6" in lines["code_maps.therapy.KYM-CD19-EU"]
    assert "markets/DE.yaml:" in lines["code_maps.therapy.KYM-CD19"]  # code maps merge: DE's codes hold too
    assert "markets/baseline.yaml:" in lines["mappings.crm/enrollment"]


def _enrol(url: str, monkeypatch: pytest.MonkeyPatch, record: dict) -> list[str]:
    """One CRM record through the CRM sandbox and connector; the sync's errors."""
    app = crm_sandbox.create_app()
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        app.sandbox_state.upsert(record)
        return list(crm_sync.pull(database_url=url).errors)


def _cmo_events(url: str, monkeypatch: pytest.MonkeyPatch, crm: str, coi: str, din: str) -> None:
    app = cmo_sandbox.create_app()
    with SandboxServer(app) as cmo:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        common = {"orderReference": crm, "batchId": "B26-FR-0004", "coiId": coi, "site": "CMO-LEI"}
        app.sandbox_state.add_event(
            {**common, "eventType": "MATERIAL_RECEIVED", "eventTime": "2026-03-10T15:05:00Z", "din": din}
        )
        app.sandbox_state.add_event(
            {**common, "eventType": "MANUFACTURING_STARTED", "eventTime": "2026-03-11T07:00:00Z"}
        )
        report = cmo_sync.pull(database_url=url)
    assert (report.records, report.quarantined, report.errors) == (2, 0, [])


def _tell_the_hospital(url: str, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Route the order changes to the partners and drain the hospital's queue to its MLLP receiver."""
    with HospitalReceiver() as hospital:
        monkeypatch.setenv("AIRFLOW_CONN_HOSPITAL_MLLP", hospital.address)
        deadline = time.monotonic() + 30
        while not hospital.received and time.monotonic() < deadline:  # PostgreSQL's feed may lag a pass
            with session_scope(url) as session:
                outbound.route(session)
            outbound.drain("hl7", database_url=url)
            time.sleep(0.05)
        return list(hospital.received)


def test_an_fr_order_end_to_end_keeps_des_residency_and_frs_own_rules(api, fr_config, monkeypatch) -> None:
    url = api.database_url
    fr = _crm_record(4, "FR-PAR-01", "FR", FR_POSTAL) | {"product": "KYM-CD19-EU"}  # FR's own code map
    assert _enrol(url, monkeypatch, fr) == []
    de = _crm_record(5, "DE-HD-01", "DE", "691zx") | {"product": "KYM-CD19-EU"}  # a code DE's map lacks
    assert _enrol(url, monkeypatch, de) != []
    with session_scope(url) as s:
        (refused,) = quarantine.list_entries(s, stage=quarantine.Stage.MAP)
    assert "not in code map 'therapy'" in refused.reason

    with Running(url) as running:
        acks = exchange(
            running.port,
            frame(_orm(4, "FR-PAR-01", crm="CRM-00004", placer=FR_PLACER, control="FR1"))
            + frame(_oru(4, "FR-PAR-01", placer=FR_PLACER, din=_din(4), control="FR2")),
            2,
        )
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    _cmo_events(url, monkeypatch, "CRM-00004", "CHW123426000004", _din(4))

    order = _orders(url)["CRM-00004"]
    assert (order.market, order.site, order.status) == ("FR", "FR-PAR-01", "manufacturing")
    projection = OrderProjection.model_validate(order.projection)
    assert projection.therapy == "CART-19"
    assert is_pseudonym(projection.refs.hospital_placer_order)  # DE's tokenize rule, inherited
    with session_scope(url) as s:
        enrolled = s.scalar(select(LedgerEntry.body).where(LedgerEntry.source_event_id == "enrol:CRM-00004"))
    assert enrolled is not None and "postal_code" not in enrolled  # DE's drop rule, inherited

    told = _tell_the_hospital(url, monkeypatch)
    assert told  # manufacturing: the CMO's page moved the order in one commit
    for message in told:
        parsed = parse(message)
        assert parsed.get("MSH-19.1") == "fr" and parsed.get("MSH-6") == "FR-PAR-01"

    client = api.client(api.key("admin", "status:read", "timeline:read", "custody:read"))
    paths = ("/orders", f"/orders/{order.id}", f"/orders/{order.id}/timeline", f"/orders/{order.id}/custody")
    answers = [client.get(path) for path in paths]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    seen = "\n".join(a.text for a in answers) + _whole_store(url) + "\n".join(m.decode() for m in told)
    assert FR_POSTAL not in seen and FR_PLACER not in seen
