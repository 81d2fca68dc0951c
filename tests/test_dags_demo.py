"""`make demo` end to end: the real DAGs over 25 patients, and a table that shows every exception case."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cgthub.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow


@dataclass
class DemoRun:
    output: str
    database: Path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> DemoRun:
    tmp = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "CGTHUB_DEMO_DIR": str(tmp / "demo"), "AIRFLOW_HOME": str(tmp / "airflow")}
    for name in ("CGTHUB_DATABASE_URL", "CGTHUB_VAR_DIR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "cgthub.demo"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return DemoRun(done.stdout, tmp / "demo" / "cgthub.db")


def _row(output: str, crm: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("ORD-") and f" {crm} " in line]
    return line


def test_demo_table_has_25_orders_in_two_markets(demo_run):
    rows = [line for line in demo_run.output.splitlines() if re.match(r"ORD-\w+ CRM-\d{5} ", line)]
    assert len(rows) == 27  # the story's 25 and the two the scheduling desk booked today (the third was refused)
    assert {line.split()[2] for line in rows} == {"US", "DE"}
    assert sum(" infused " in line for line in rows) >= 8  # the early patients completed the whole life cycle


def test_demo_runs_every_partner_through_its_connector_and_sandbox_on_loopback(demo_run):
    out = demo_run.output
    for partner, module in [
        ("crm", "connectors.crm.sync"),
        ("erp", "connectors.erp.sync"),
        ("courier", "connectors.courier.sync"),
        ("cmo", "connectors.cmo.sync"),
    ]:
        assert re.search(rf"{partner} +in : {module} \(.+\) <- http://127\.0\.0\.1:\d+", out), partner
        assert re.search(rf"{partner} +out: {module} \(push\) -> http://127\.0\.0\.1:\d+", out), partner
    assert re.search(r"cmo_batch +in : connectors\.cmo\.batch \(the CMO's nightly CSV export\)", out)
    assert re.search(r"hl7 +in : HL7 v2 ORU\^R01, SIU\^S12 over MLLP to the hub's listener on 127\.0\.0\.1:\d+", out)
    assert re.search(r"hl7 +out: cgthub\.hl7\.outbound \(HL7 v2 ORR\^O02 over MLLP\) -> mllp://127\.0\.0\.1:\d+", out)
    assert "canonical JSON" not in out and "inbox/" not in out  # nobody takes a shortcut past a protocol
    recorded = re.findall(r"partners recorded (.+); 9 DAG runs done", out)
    assert len(recorded) == 3 and all("erp/sales_order" in wave and "cmo/batch_event" in wave for wave in recorded)
    assert sum("cmo/batch_record" in wave for wave in recorded) >= 2
    updates = int(re.search(r"(\d+) status updates PATCHed into the CRM sandbox", out).group(1))
    hospital = int(re.search(r"(\d+) ORR\^O02 ACKed by the hospital's receiver", out).group(1))
    delivered = dict(re.findall(r"(cmo|crm|erp|hl7) (\d+)", re.search(r"delivered \(([^)]*)\)", out).group(1)))
    assert updates > 25 and hospital > 10
    assert int(delivered["crm"]) == updates and int(delivered["hl7"]) == hospital and int(delivered["erp"]) > 0


def test_demo_maps_every_partner_format_into_the_ledger(demo_run):
    import sqlite3

    with sqlite3.connect(demo_run.database) as conn:
        rows = conn.execute(
            "select json_extract(body, '$.provenance.mapping_id'), json_extract(body, '$.provenance.mapping_version'),"
            " event_type from ledger_entries"
        ).fetchall()
    mapped = {(mapping, event_type) for mapping, _version, event_type in rows}
    assert {v for m, v, e in rows if e == "cmo.released_under_exception"} == {"v2"}
    assert ("erp/sales_order", "erp.sales_order_created") in mapped  # SOAP GetSalesOrders
    assert ("cmo/batch_record", "cmo.released_under_exception") in mapped  # the CSV export, mapping v2
    assert ("cmo/batch_record", "cmo.released") in mapped
    assert ("hl7/ORU^R01", "infusion.completed") in mapped  # the infusion record over MLLP
    assert not any(mapping.startswith("canonical") for mapping, _ in mapped)


def test_demo_table_shows_every_exception_case(demo_run):
    assert "temperature_excursion!" in _row(demo_run.output, "CRM-00003")
    oos = _row(demo_run.output, "CRM-00005")
    assert re.search(r"infused \d\d-\d\d \*", oos) and " infused " in oos  # *: OOS, released under exception
    assert "* = the batch failed a QC specification (OOS)" in demo_run.output
    mismatch = _row(demo_run.output, "CRM-00007")
    assert " on_hold " in mismatch and "coi_discrepancy!" in mismatch
    assert " cancelled " in _row(demo_run.output, "CRM-00011")
    assert "received twice and applied once: 1 HL7 message(s) of CRM-00002" in demo_run.output
    assert "milestone_overdue!" in _row(demo_run.output, "CRM-00013")  # collected, never received at the CMO
    assert "vein_to_vein_at_risk" in _row(demo_run.output, "CRM-00018")
    assert "status_disagreement!" in _row(demo_run.output, "CRM-00022")  # the CRM says cancelled
    assert "orphan_shipment 1" in demo_run.output and "Where to look next" in demo_run.output


def test_demo_output_and_database_carry_no_patient_identifiers(demo_run):
    import sqlite3

    assert not re.search(r"MRN\d|Demo\^Patient", demo_run.output)
    with sqlite3.connect(demo_run.database) as conn:
        bodies = " ".join(body for (body,) in conn.execute("select body from ledger_entries"))
        hl7 = conn.execute("select count(*) from ledger_entries where source_system = 'hl7'").fetchone()[0]
    assert hl7 > 40  # the hospital's HL7 v2 went through mappings/hl7
    assert "psn:mrn:" in bodies and not re.search(r"MRN\d|Patient\d|19700101", bodies)


def test_demo_tells_the_scheduling_story(demo_run):
    """Today at the desk: an unqualified site refused, a slot booked with its lead times, a conflict
    for the last place resolved, couriers booked by the outbound DAG, a bedside scan mismatch caught."""
    import sqlite3

    out = demo_run.output
    assert re.search(r"qualification: CRM-00026 enrolled at US-NYC-04: refused, quarantined at qualify: .*CART-19", out)
    booked = re.search(
        r"slot booked: +CRM-00027 apheresis (\d\d-\d\d) at US-BOS-01 -> (CMO-\w+) slot (\d\d-\d\d) -> released "
        r"\d\d-\d\d -> at site \d\d-\d\d -> infusion \d\d-\d\d \((\d+) d vein to vein\)",
        out,
    )
    assert booked and 20 <= int(booked.group(4)) <= 40, out[-4000:]
    assert re.search(r"slot conflict: CRM-00028 asked for the same last place: refused \(slot_full: ", out)
    assert re.search(r"resolved with the next feasible slot: apheresis \d\d-\d\d at US-BOS-01 -> CMO-", out)
    for crm in ("CRM-00027", "CRM-00028"):
        pickup = rf"courier: +{crm} booked SHP-\d+ \(air waybill CRY\d+\), pickup \d\d-\d\d \d\d:\d\d to "
        assert re.search(pickup, out)
    assert "bedside scan:  CRM-00012's infusion, the bag scanned carries CRM-00008's DIN: no match" in out
    assert "scan_mismatch!" in _row(out, "CRM-00012") and " on_hold " in _row(out, "CRM-00012")
    first = _row(out, "CRM-00027")
    assert f"{booked.group(1)} / {booked.group(3)}" in first  # the table shows the booked dates
    assert re.search(r" \d\d-\d\d / - ", _row(out, "CRM-00020"))  # the CRM's date, no slot booked by the hub
    with sqlite3.connect(demo_run.database) as conn:
        booked_legs = conn.execute(
            "select count(*) from ledger_entries where event_type = 'shipment.booked'"
            " and json_extract(body, '$.shipment.direction') = 'to_cmo'"
            " and order_id in (select order_id from order_keys where value in ('CRM-00027', 'CRM-00028'))"
        ).fetchone()[0]
    assert booked_legs == 2  # the courier's answers, mapped into the two orders booked today


def test_demo_keeps_its_database_dev_keys_and_log_in_its_folder(demo_run):
    """README: "Its data stays in `var/demo/` (database, dev keys, `demo.log`)"."""
    folder = demo_run.database.parent
    assert demo_run.database.stat().st_size > 0
    assert {"archive.key", "ledger.key", "pseudonym.key"} <= {p.name for p in folder.glob("*.key")}
    log = (folder / "demo.log").read_text()
    assert log.strip() and not re.search(r"MRN\d|Demo\^Patient", log)
