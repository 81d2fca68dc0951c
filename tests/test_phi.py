"""No names, birth dates or MRNs in clear: not in the database, the logs or the CLI output."""

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import inspect, select, text

from cgthub import pipeline, quarantine
from cgthub.model import CanonicalEvent, EventType, ExternalRefs, OrderDetails, PatientRef, Provenance, SourceSystem
from cgthub.pseudonym import mask, pseudonymize
from cgthub.store import get_engine, session_scope
from cgthub.tables import Order
from tests.factories import PATIENTS, coi
from tests.hub_log import hub_log


class AdtLikeMapper:
    """Reads PID-3 (MRN), PID-5 (name), PID-7 (birth date) the way a hospital mapping does."""

    mapping_id, version = "test/adt", "1"

    def map(self, payload, *, raw_id, checksum, received_at):
        pid = next(seg for seg in payload.decode().split("\r") if seg.startswith("PID"))
        fields = pid.split("|")
        mrn, _name, birth = fields[3].split("^")[0], fields[5], fields[7]
        if len(birth) != 8 or not birth.isdigit():
            raise pipeline.PayloadRejected(
                quarantine.Stage.VALIDATE, f"rule birth_date: PID-7 is not a date (value {mask(birth)})"
            )
        n = int(fields[1])
        return [
            CanonicalEvent(
                source_system=SourceSystem.HL7,
                source_event_id=f"adt-{n}",
                event_type=EventType.ORDER_ENROLLED,
                occurred_at=received_at,
                received_at=received_at,
                refs=ExternalRefs(hospital_placer_order=f"PL-{n}"),
                patient=PatientRef(coi_id=coi(n), pseudonyms={"mrn": pseudonymize("mrn", mrn)}),
                order=OrderDetails(therapy="CART-19", market="DE", site="DE-SITE-1"),
                provenance=Provenance(mapping_id=self.mapping_id, mapping_version=self.version, raw_id=raw_id),
            )
        ]


def _adt(n, patient, birth=None):
    return (
        f"MSH|^~\\&|HIS|DE-SITE-1|CGTHUB|HUB|20260302080000||ADT^A04|MSG{n}|P|2.5.1\r"
        f"PID|{n}||{patient['mrn']}^^^DE-SITE-1^MR||{patient['name']}||{birth or patient['birth_date']}|F"
    ).encode()


def _phi_strings():
    out = []
    for p in PATIENTS:
        family, given = p["name"].split("^")
        out += [p["mrn"], family, given, p["birth_date"]]
    return out


def _database_text(url):
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        get_engine(url).dispose()
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*")).decode("latin-1")
    chunks = []
    with get_engine(url).connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                chunks.append(repr(tuple(row)))
    return "\n".join(chunks)


def test_no_phi_in_database_logs_or_cli(db_url, caplog):
    caplog.set_level(logging.DEBUG)
    now = datetime.now(UTC)
    # The hub's and SQLAlchemy's records at DEBUG, read at their loggers (tests/hub_log.py): caplog
    # alone saw none of them in a worker where an earlier test had quieted them, and passed.
    with hub_log("cgthub", "sqlalchemy") as logged, session_scope(db_url) as s:
        for n, patient in enumerate(PATIENTS, start=1):
            pipeline.ingest(
                s,
                system="hl7",
                kind="ADT^A04",
                channel="mllp",
                payload=_adt(n, patient),
                mapper=AdtLikeMapper(),
                received_at=now,
            )
        # A bad birth date: quarantined, and the reason masks the value.
        bad = pipeline.ingest(
            s,
            system="hl7",
            kind="ADT^A04",
            channel="mllp",
            payload=_adt(3, PATIENTS[0], birth="1971-04-12"),
            mapper=AdtLikeMapper(),
        )
        assert bad.quarantined == 1
        order_ids = s.scalars(select(Order.id)).all()
    assert len(order_ids) == 2

    env = {**os.environ, "CGTHUB_DATABASE_URL": db_url}
    outputs = []
    for args in (
        ["orders", "list"],
        ["orders", "show", order_ids[0]],
        ["quarantine", "list"],
        ["quarantine", "show", "1"],
        ["ledger", "verify"],
    ):
        run = subprocess.run([sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout + run.stderr)
    cli_text = "\n".join(outputs)
    assert "psn:mrn:" in cli_text  # the pseudonym is what operators see
    assert "PID-7 is not a date" in cli_text

    # The capture is not empty: the quarantine of the bad birth date is logged, masked, and so is the
    # statement that stored it (its parameters hidden).
    assert "quarantined raw #" in logged.text and "PID-7 is not a date (value " in logged.text, logged.text[-2000:]
    assert "INSERT INTO quarantine" in logged.text and "[SQL parameters hidden" in logged.text
    log_text = logged.text + caplog.text

    db_text = _database_text(db_url)
    assert "CHW123426000001" in db_text  # sanity: the dump does contain the order data
    for phi in _phi_strings():
        assert phi not in db_text, "PHI in the database"
        assert phi not in log_text, "PHI in the logs"
        assert phi not in cli_text, "PHI in CLI output"
        assert phi.lower() not in db_text.lower()


def test_a_failed_statement_quotes_no_value(db_url, caplog):
    """Every engine the hub makes hides a statement's parameters: an error that reaches a log or an
    operator (a constraint refused, a value the store cannot hold) names the statement, not the
    patient in its values."""
    name = PATIENTS[0]["name"]
    with get_engine(db_url).connect() as conn:
        try:
            conn.execute(text("INSERT INTO orders (order_id) VALUES (:name), (:name)"), {"name": name})
        except Exception as exc:  # whichever error the backend raises
            refused = str(exc)
        else:
            raise AssertionError("the database took two rows with one primary key")
    assert "INSERT INTO orders" in refused  # the statement is still named
    assert name not in refused and "parameters hidden" in refused
