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
    (line,) = [line for line in output.splitlines() if f" {crm} " in line]
    return line


def test_demo_table_has_25_orders_in_two_markets(demo_run):
    rows = [line for line in demo_run.output.splitlines() if re.match(r"ORD-\w+ CRM-\d{5} ", line)]
    assert len(rows) == 25
    assert {line.split()[2] for line in rows} == {"US", "DE"}
    assert sum(" infused " in line for line in rows) >= 8  # the early patients completed the whole life cycle


def test_demo_runs_the_crm_sandbox_and_the_mllp_listener_on_loopback(demo_run):
    assert re.search(r"crm +in : connector connectors\.crm\.sync <- sandbox http://127\.0\.0\.1:\d+", demo_run.output)
    updates = int(re.search(r"\((\d+) status updates PATCHed into the CRM sandbox\)", demo_run.output).group(1))
    assert updates > 25
    mllp = r"hl7 +in : HL7 v2 ORU\^R01, SIU\^S12 over MLLP to the listener on 127\.0\.0\.1:\d+"
    assert re.search(mllp, demo_run.output)


def test_demo_table_shows_every_exception_case(demo_run):
    assert "temperature_excursion!" in _row(demo_run.output, "CRM-00003")
    oos = _row(demo_run.output, "CRM-00005")
    assert "(OOS->exc)" in oos and " infused " in oos
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
