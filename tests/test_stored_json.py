"""JSON documents the batch path writes are stored as their canonical text, whichever way the
writer produced it (orjson straight, or the serializer for documents with floats)."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import text

from cgthub import ledger
from cgthub.jsontext import canonical_json
from cgthub.model import EventType, Shipment, SourceSystem
from cgthub.store import session_scope
from tests.factories import T0, event, happy_path


def _stored(url: str, sql: str) -> list[str]:
    with session_scope(url) as session:
        return [row[0] for row in session.execute(text(sql))]


def test_projections_and_change_rows_are_stored_as_canonical_text(db_url: str) -> None:
    excursion = event(
        EventType.TEMPERATURE_EXCURSION,
        2,
        at=T0 + timedelta(days=7),
        system=SourceSystem.COURIER,
        shipment=Shipment(shipment_id="SHP-2-OUT"),
        attributes={"extreme_c": -120.25, "duration_min": 1.5e-05},  # orjson writes 1.5e-5
    )
    with session_scope(db_url) as session:
        ledger.append_many(session, [*happy_path(1)[:4], *happy_path(2)[:4]])
    with session_scope(db_url) as session:
        ledger.append_many(session, [*happy_path(1)[4:6], excursion])
    projections = _stored(db_url, "SELECT CAST(projection AS TEXT) FROM orders ORDER BY id")
    assert len(projections) == 2
    assert any("1.5e-05" in stored for stored in projections)  # the float kept as the canonical text writes it
    changes = _stored(db_url, "SELECT CAST(milestones AS TEXT) FROM order_changes") + _stored(
        db_url, "SELECT CAST(changed AS TEXT) FROM order_changes"
    )
    assert len(changes) >= 4
    for stored in projections + changes:
        assert stored == canonical_json(json.loads(stored))
