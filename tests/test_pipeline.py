"""The inbound path: archive first, then map, then ledger; bad input is quarantined, never lost."""

import json
from datetime import UTC, datetime

from sqlalchemy import func, select

from cgthub import archive, pipeline, quarantine
from cgthub.archive import Inbound
from cgthub.model import CanonicalEvent
from cgthub.tables import Order, RawMessage
from tests.factories import happy_path


class JsonEventMapper:
    """Test double of a compiled mapping: the payload is a canonical event in JSON."""

    mapping_id, version = "test/json", "1"

    def map(self, payload, *, raw_id, checksum, received_at):
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise pipeline.PayloadRejected(quarantine.Stage.PARSE, f"not JSON: {exc.msg} at char {exc.pos}") from exc
        data["provenance"] = {
            "mapping_id": self.mapping_id,
            "mapping_version": self.version,
            "raw_id": raw_id,
            "raw_checksum": checksum,
        }
        return [CanonicalEvent.model_validate(data)]


def _payload(event):
    return json.dumps(event.to_json_dict()).encode()


def test_payloads_are_archived_encrypted_then_applied(session):
    events = happy_path(1)
    results = [
        pipeline.ingest(
            session, system="crm", kind="event", channel="test", payload=_payload(e), mapper=JsonEventMapper()
        )
        for e in events
    ]
    assert all(r.appended == 1 for r in results)
    assert session.scalar(select(Order.status)) == "infused"
    row = session.get(RawMessage, results[0].raw_id)
    assert row.status == "processed" and row.checksum == archive.checksum(_payload(events[0]))
    assert b"CRM-00001" not in row.payload  # encrypted at rest
    assert archive.read(session, row.id) == _payload(events[0])


def test_bad_payload_is_quarantined_with_a_reason_and_the_batch_goes_on(session):
    good, bad = happy_path(1)[0], b'{"source_system": "crm", oops'
    now = datetime.now(UTC)
    items = [Inbound("crm", "event", "test", p, now) for p in (bad, _payload(good))]
    results = pipeline.ingest_batch(session, items, lambda _i: JsonEventMapper())
    assert results[0].quarantined == 1 and results[1].appended == 1
    entry = quarantine.list_entries(session)[0]
    assert entry.stage == "parse" and entry.reason.startswith("not JSON") and entry.raw_id == results[0].raw_id
    assert session.get(RawMessage, results[0].raw_id).status == "quarantined"


def test_redelivered_payload_is_counted_not_applied_twice(session):
    payload = _payload(happy_path(1)[0])
    now = datetime.now(UTC)
    first = pipeline.ingest_batch(
        session, [Inbound("crm", "event", "t", payload, now)] * 2, lambda _i: JsonEventMapper()
    )
    again = pipeline.ingest(session, system="crm", kind="event", channel="t", payload=payload, mapper=JsonEventMapper())
    assert first[0].appended == 1 and first[1].duplicate_payload and again.duplicate_payload
    assert session.scalar(select(func.count()).select_from(RawMessage)) == 1
    assert session.scalar(select(RawMessage.receive_count)) == 3


def test_missing_mapping_is_quarantined_and_replayable_after_the_fix(session):
    payload = _payload(happy_path(1)[0])
    result = pipeline.ingest(session, system="crm", kind="event", channel="t", payload=payload, mapper=None)
    entry = quarantine.list_entries(session)[0]
    assert "no mapping is configured for crm/event" in entry.reason
    replayed = pipeline.process(session, result.raw_id, JsonEventMapper())
    assert replayed.appended == 1


def test_archived_but_unapplied_payloads_are_applied_by_process_pending(session):
    now = datetime.now(UTC)
    stored = archive.store_many(session, [Inbound("hl7", "event", "mllp", _payload(e), now) for e in happy_path(3)])
    assert {s.status for s in stored} == {"received"}
    results = pipeline.process_pending(session, "hl7", lambda _i: JsonEventMapper())
    assert sum(r.appended for r in results) == 13
    assert pipeline.process_pending(session, "hl7", lambda _i: JsonEventMapper()) == []
