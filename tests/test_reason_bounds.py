"""A sender's value quoted in a quarantine reason is bounded, with the cut shown (cgthub.quoting).

Red team, 5 December: a sending facility the site registry does not know was quoted at full length,
so a 3,000-character MSH-4 landed whole in the quarantine reason, the ACK's ERR-8 and the log. Sent
to the MLLP listener as a hospital sends it, and pulled from the CRM sandbox as the connector does
(a record naming a site the registry does not know), on both databases.
"""

from __future__ import annotations

import logging

from cgthub import quarantine
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from tests.test_hl7_listener import ORM, Running, exchange
from tests.test_red_team_mllp import _no_phi
from tests.test_residency_live import US_POSTAL, _crm_record

LONG = 3000


def _only_entry(url: str) -> QuarantineEntry:
    with session_scope(url) as s:
        (entry,) = quarantine.list_entries(s)
        s.expunge(entry)
    return entry


class _Lines(logging.Handler):
    """Every record a logger it is attached to handles, formatted as a log file shows it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_a_long_unknown_sending_facility_is_quoted_bounded_in_reason_ack_and_log(db_url, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    # The hub's log lines read at their loggers, whatever logging set-up another test in this worker
    # made (the demo run in-process stops `cgthub` propagating; a fresh-clone run's caplog had none).
    written = _Lines()
    for name in ("cgthub.pipeline", "cgthub.routing", "cgthub.hl7"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "level", logging.INFO)
        monkeypatch.setattr(logger, "handlers", [*logger.handlers, written])  # its own list again afterwards
    facility = "X" * (LONG - 1) + "Y"  # its tail must not appear anywhere
    message = ORM.replace(b"|EPIC|US-BOS-01|", f"|EPIC|{facility}|".encode())
    with Running(db_url, apply=True) as running:
        (ack,) = exchange(running.port, frame(message), 1)
    entry = _only_entry(db_url)
    shown = f"sending facility {'X' * 40!r}… (3,000 characters) (MSH-4) is not registered for any site"
    assert entry.stage == "route" and shown in entry.reason, entry.reason
    assert len(entry.reason) < 200 and "XY" not in entry.reason
    assert ack_code(ack) == "AE"
    err = next(segment for segment in ack.split(b"\r") if segment.startswith(b"ERR|"))
    assert shown.encode() in err and b"X" * 41 not in err, err
    assert shown in written.text and "X" * 41 not in written.text
    assert len(str(entry.details["facility"])) <= 80  # the entry's details: head and a digest of the whole
    _no_phi(ack, entry.reason, written.text + caplog.text)


def test_a_facility_of_forty_characters_is_quoted_whole(db_url):
    facility = "F" * 40
    message = ORM.replace(b"|EPIC|US-BOS-01|", f"|EPIC|{facility}|".encode())
    with Running(db_url, apply=True) as running:
        exchange(running.port, frame(message), 1)
    entry = _only_entry(db_url)
    assert f"sending facility {facility!r} (MSH-4) is not registered" in entry.reason, entry.reason
    assert "characters)" not in entry.reason


def test_a_crm_record_naming_a_long_unknown_site_is_quoted_bounded(db_url, monkeypatch):
    site = "S" * (LONG - 1) + "T"
    app = crm_sandbox.create_app()
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        app.sandbox_state.upsert(_crm_record(1, site, "US", US_POSTAL))
        report = crm_sync.pull(database_url=db_url)
    assert report.quarantined == 1, report
    entry = _only_entry(db_url)
    assert entry.stage == "route", entry.reason
    assert f"record 1 names site {'S' * 40!r}… (3,000 characters), which is not in the site registry" in entry.reason
    assert "ST" not in entry.reason and len(str(entry.details["site"])) <= 80
