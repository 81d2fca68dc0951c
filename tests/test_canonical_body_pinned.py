"""The ledger hashes each event's canonical body: its bytes must never change, or ledgers already
written stop verifying. Pinned here on fixed events, and held to the reference text (pydantic's
dump, written by the standard library) for every event the shipped mapping fixtures produce."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from cgthub import ledger
from cgthub.errors import PayloadRejected
from cgthub.mapping import fixtures, registry
from cgthub.model import (
    CanonicalEvent,
    Custody,
    Direction,
    EventType,
    Material,
    PatientRef,
    Shipment,
    SourceSystem,
    TemperatureExcursion,
    TemperatureSummary,
)
from tests.factories import T0, event, happy_path

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"
TOKEN = "psn:mrn:" + "ab" * 16


def _pinned_events() -> list[CanonicalEvent]:
    """The happy path, and events that take every other branch of the body's writer: attributes
    (floats, big integers), temperatures with excursions, custody, pseudonyms, text beyond ASCII,
    a moment off UTC with microseconds."""
    cold = TemperatureSummary(
        min_c=-190.5,
        max_c=-150.25,
        readings=12,
        excursions=(
            TemperatureExcursion(started_at=T0, ended_at=T0 + timedelta(minutes=7), extreme_c=-120.0, limit_c=-150),
        ),
    )
    return [
        *happy_path(1),
        event(
            EventType.TEMPERATURE_EXCURSION,
            2,
            at=T0,
            system=SourceSystem.COURIER,
            shipment=Shipment(shipment_id="SHP-2", courier="cryo", direction=Direction.TO_SITE, temperature=cold),
            attributes={"extreme_c": -120.0, "duration_min": 7, "tiny": 1.5e-7, "big": 2**70, "note": "Zürich ✓"},
        ),
        event(
            EventType.CUSTODY_SCANNED,
            3,
            at=T0 + timedelta(hours=1),
            system=SourceSystem.CMO,
            patient=PatientRef(pseudonyms={"mrn": TOKEN}),
            custody=Custody(what=("bag-1", "bag-2"), read_point="dock-3", biz_step="receiving"),
            material=Material(bag_ids=("bag-1", "bag-2")),
            reason="label re-read at the dock — ok",
            supersedes="custody.scanned:2",
            scheduled_for=(T0 + timedelta(microseconds=120)).astimezone(timezone(timedelta(hours=-5))),
        ),
    ]


def test_canonical_bodies_and_their_entry_hashes_are_pinned() -> None:
    bodies = [e.canonical_body() for e in _pinned_events()]
    digest = hashlib.sha256("\n".join(bodies).encode()).hexdigest()
    prev = ledger.GENESIS
    for seq, body in enumerate(bodies, start=1):
        prev = ledger.entry_hash(prev_hash=prev, order_id="ORD-PINNED", seq=seq, recorded_at=T0, body=body)
    assert (digest, prev) == (PINNED_BODIES, PINNED_HEAD), "an event's canonical body changed: ledgers would not verify"


def _reference(made: CanonicalEvent) -> str:
    data = made.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _fixture_events() -> list[CanonicalEvent]:
    produced: list[CanonicalEvent] = []
    for path in sorted(MAPPINGS.glob("*/*/v*.yaml")):
        mapper = registry.compile_file(path)
        for fixture in fixtures.inputs(path):
            payload = fixture.read_bytes()
            try:
                mapped = mapper.map_by_rule(
                    payload, raw_id=7, checksum=hashlib.sha256(payload).hexdigest(), received_at=fixtures.RECEIVED_AT
                )
            except PayloadRejected:
                continue
            produced.extend(made for _rule, made in mapped)
    return produced


def test_every_mapping_fixtures_event_has_the_reference_body() -> None:
    produced = _fixture_events()
    assert len(produced) >= 50, "the mapping fixtures produced fewer events than they ship"
    for made in [*produced, *_pinned_events()]:
        assert made.canonical_body() == _reference(made), made.key
        assert made.to_json_dict() == made.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


@pytest.mark.parametrize("made", _pinned_events()[-2:], ids=["excursion", "scan"])
def test_the_pinned_events_hold_what_they_are_meant_to(made: CanonicalEvent) -> None:
    """The pinned digest covers these branches only while the events keep them."""
    body = json.loads(made.canonical_body())
    assert body.get("attributes") or body.get("custody")


PINNED_BODIES = "41a23ad0b3c4353ad77f2016689fdb43d8bf8a47ff100c24be53ed48932fafa1"
PINNED_HEAD = "69c70153451728251de56225fb7249e5c4306f2779f05569eb651510d0bb4bb4"
