"""Held payloads, as an operator and Prometheus meet them: a hospital's HL7 message that the MLLP
listener archived and ACKed (`--archive-only`) and nothing applied yet.

The console's partner page shows it on the sender's row with the oldest one's age, flagged `behind`
once it has waited over 15 minutes, as /health/ready's `held` says; the series that
docs/alert-rules.yml's CgthubHeldPayloadsWaiting reads is on the API's /metrics, under its threshold
while the message is fresh and over it after 20 minutes. Real loopback MLLP, the console mounted as
Airflow's API server mounts the plugin, the API over HTTP; SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from cgthub.api import create_app
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import RawMessage
from tests import test_console
from tests.test_console import signed_in
from tests.test_hl7_listener import ORM, Running, exchange
from tests.test_metrics import _samples

auth_manager = test_console.auth_manager
console = test_console.console

RULES = Path(__file__).resolve().parent.parent / "docs" / "alert-rules.yml"


def _held_rule() -> tuple[str, float]:
    """The series CgthubHeldPayloadsWaiting reads and the age (seconds) over which it fires."""
    rules = yaml.safe_load(RULES.read_text())
    (expr,) = [r["expr"] for g in rules["groups"] for r in g["rules"] if r["alert"] == "CgthubHeldPayloadsWaiting"]
    (series,) = re.findall(r"\bcgthub_\w+", expr)
    threshold = re.fullmatch(r"max by \(partner\) \(\w+\) > (\d+)", expr)
    assert threshold, f"the held-payload rule is no longer one partner's age over a threshold: {expr}"
    return series, float(threshold.group(1))


def _hl7_row(page: str) -> str:
    return page[page.index('data-partner="hl7"') :].split("</tr>")[0]


def _api(url: str) -> tuple[dict[Any, float], dict[str, Any]]:
    """/metrics as Prometheus scrapes it and /health/ready as a probe reads it."""
    with TestClient(create_app(url)) as api:
        return _samples(api.get("/metrics").text), api.get("/health/ready").json()


def test_the_partner_page_shows_a_held_hl7_message_and_flags_it_behind_after_15_minutes(db_url, console, auth_manager):
    client = signed_in(console, auth_manager)
    assert 'data-held="0"' in _hl7_row(client.get("/cgthub/console/partners").text)

    with Running(db_url, apply=False) as listener:  # `cgthub hl7 listen --archive-only`
        (ack,) = exchange(listener.port, frame(ORM), 1)
    assert ack_code(ack) == "AA"

    series, threshold = _held_rule()
    page = client.get("/cgthub/console/partners").text
    row = _hl7_row(page)
    assert 'data-held="1"' in row and re.search(r"<span>1 \([01] min\)</span>", row) and "behind" not in row
    scraped, ready = _api(db_url)
    assert ready["held"]["status"] == "ok" and ready["held"]["waiting"] == {"hl7": 1}
    assert scraped[(series, (("partner", "hl7"),))] < threshold  # the alert would not fire

    with session_scope(db_url) as session:  # the inbox DAG has not run for 20 minutes
        for raw in session.scalars(select(RawMessage).where(RawMessage.status == "received")):
            raw.received_at = raw.received_at - timedelta(minutes=20)
    page = client.get("/cgthub/console/partners").text
    row = _hl7_row(page)
    assert 'data-held="1"' in row and '<span class="bad">1 (20 min)</span>' in row
    assert '<span class="tag alert">behind</span>' in row
    assert "behind" not in page[page.index('data-partner="courier"') :].split("</tr>")[0]  # per partner
    scraped, ready = _api(db_url)
    assert ready["status"] == "degraded" and ready["held"]["status"] == "behind"
    assert threshold < scraped[(series, (("partner", "hl7"),))] < 20 * 60 + 120  # the alert would fire
    assert "Smithson" not in page and "MRN48213377" not in page and "19710412" not in page
