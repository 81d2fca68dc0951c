"""A partner added the way the README says: one folder declaring it plus one mapping directory.

The toy partner lives in a package outside the repository (on sys.path, named in
CGTHUB_PARTNER_PACKAGES), serves JSON pages from a tiny HTTP sandbox on loopback, and is run
through the function the ingest DAG calls; nothing in cgthub/, connectors/ or mappings/ is edited.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from cgthub import ledger, partner_sync, partners, settings, sync_state
from cgthub.mapping import spec
from cgthub.model import CanonicalEvent, SourceSystem
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests.factories import happy_path

EVENTS = [
    {
        "eventId": "TOY-1",
        "shipmentId": "SHP-1-OUT",
        "status": "PICKED_UP",
        "timestamp": "2026-03-09T14:00:00-05:00",
        "recordedAt": "2026-03-09T19:00:01+00:00",
        "direction": "TO_MANUFACTURER",
        "reference": {"crmOrderId": "CRM-00001"},
    },
    {
        "eventId": "TOY-2",
        "shipmentId": "SHP-1-OUT",
        "status": "IN_TRANSIT",
        "timestamp": "2026-03-09T19:10:00-05:00",
        "recordedAt": "2026-03-10T00:10:01+00:00",
        "direction": "TO_MANUFACTURER",
        "reference": {"crmOrderId": "CRM-00001"},
    },
]

DECLARATION = """
from cgthub.partners import Partner, Pull

PARTNER = Partner(name="toy", describes="a toy courier's JSON pages", pulls=(Pull("events", "toyhub.toy.feed:pages"),))
"""

FEED = """
import json
import os
from datetime import datetime
from urllib.request import urlopen

from cgthub import partners
from cgthub.archive import Inbound
from cgthub.tables import utcnow


def pages(mark):
    since = mark.watermark.isoformat() if mark.watermark else ""
    with urlopen(f"{os.environ['TOY_SANDBOX']}/events?since={since}", timeout=5) as answer:
        raw = answer.read()
    events = json.loads(raw)["events"]
    newest = max((datetime.fromisoformat(e["recordedAt"]) for e in events), default=None)
    page = Inbound("toy", "shipment_event", "rest", raw, utcnow())
    yield partners.Page([page], records=len(events), watermark=newest)
"""


class _Sandbox(BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_GET(self) -> None:
        since = parse_qs(urlsplit(self.path).query).get("since", [""])[0]
        self.asked.append(since)
        events = [e for e in EVENTS if not since or e["recordedAt"] > since]
        body = json.dumps({"events": events}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def _toy_mapping() -> str:
    """The toy's one mapping: the courier's tracking mapping under the toy's system and kind."""
    courier = (PROJECT_ROOT / "mappings" / "courier" / "tracking_event" / "v1.yaml").read_text()
    return courier.replace("system: courier", "system: toy").replace("kind: tracking_event", "kind: shipment_event")


@pytest.fixture
def toy_partner(tmp_path, monkeypatch):
    package = tmp_path / "toyhub" / "toy"
    package.mkdir(parents=True)
    (tmp_path / "toyhub" / "__init__.py").write_text("")
    (package / "__init__.py").write_text(textwrap.dedent(DECLARATION))
    (package / "feed.py").write_text(textwrap.dedent(FEED))
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", mappings)
    (mappings / "toy" / "shipment_event").mkdir(parents=True)
    (mappings / "toy" / "shipment_event" / "v1.yaml").write_text(_toy_mapping())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sandbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Sandbox.asked = []
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(partners.PACKAGES_ENV, "connectors,toyhub")
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(mappings))
    monkeypatch.setenv("TOY_SANDBOX", f"http://127.0.0.1:{server.server_address[1]}")
    settings.get_settings.cache_clear()
    partners.refresh()
    yield
    server.shutdown()
    server.server_close()
    for name in [m for m in sys.modules if m == "toyhub" or m.startswith("toyhub.")]:
        del sys.modules[name]
    partners.refresh()
    settings.get_settings.cache_clear()


def test_a_toy_partner_in_its_own_folder_lands_events_and_moves_its_watermark(db_url, toy_partner):
    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1)[:3])  # enrolled .. collected
    assert "toy" in partners.pulled() and "crm" in partners.pulled()

    first = partner_sync.pull("toy", database_url=db_url)  # what cgthub_ingest_toy's task runs
    again = partner_sync.pull("toy", database_url=db_url)

    assert (first["appended"], first["quarantined"], first["errors"]) == (2, 0, [])
    assert first["via"] == ["toyhub.toy.feed"] and first["watermark_after"] == "2026-03-10T00:10:01+00:00"
    assert again["appended"] == 0 and _Sandbox.asked[-1].startswith("2026-03-10T00:10:01")
    with session_scope(db_url) as s:
        sources = s.scalars(select(LedgerEntry.source_event_id).where(LedgerEntry.source_system == "toy")).all()
        assert sorted(sources) == ["TOY-1", "TOY-2"]
        assert s.scalars(select(Order.status)).one() == "in_transit_to_cmo"
        mark = sync_state.watermark(s, "toy", "events")
        assert mark is not None and mark.isoformat().startswith("2026-03-10T00:10:01")


def test_a_mapping_for_a_system_no_partner_declares_is_refused_naming_the_declared_ones(tmp_path, monkeypatch):
    monkeypatch.delenv(partners.PACKAGES_ENV, raising=False)
    partners.refresh()
    path = tmp_path / "mappings" / "toy" / "shipment_event" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(_toy_mapping())
    system_line = 1 + next(i for i, line in enumerate(path.read_text().splitlines()) if line.startswith("system:"))

    with pytest.raises(spec.MappingError) as refused:
        spec.load(path)

    assert refused.value.line == system_line
    assert "no partner declares the system 'toy'" in str(refused.value)
    assert "declared: cgthub, cmo, courier, crm, erp, hl7" in str(refused.value)


def test_events_of_a_partner_that_left_still_read_and_hash_as_stored():
    stored = happy_path(1)[0].model_dump(mode="json") | {"source_system": "retired_lab"}

    event = CanonicalEvent.model_validate_json(json.dumps(stored))

    assert event.key == ("retired_lab", stored["source_event_id"])
    assert json.loads(event.canonical_body())["source_system"] == "retired_lab"
    assert CanonicalEvent.model_validate(event.to_json_dict()) == event
    assert pickle.loads(pickle.dumps(event)).source_system is event.source_system
    assert SourceSystem("hl7") is SourceSystem.HL7 and SourceSystem.HUB.value == "cgthub"
    with pytest.raises(ValidationError, match="source_system"):
        CanonicalEvent.model_validate(stored | {"source_system": "Retired Lab"})
