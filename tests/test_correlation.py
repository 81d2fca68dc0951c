"""Correlation: any partner's reference finds the order; identity keys that contradict it are named, not applied."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cgthub import ledger
from cgthub.correlation import KeyIndex, correlate
from cgthub.model import EventType, ExternalRefs, Material, PatientRef, Shipment, SourceSystem
from cgthub.store import session_scope
from tests.factories import PATIENTS, T0, coi, din, enrolment, event

D = timedelta(days=1)


def _enrol(url: str, *patients: int) -> dict[int, str]:
    """Orders enrolled by the CRM, each then known to the ERP, the hospital and the CMO by their own ids."""
    orders = {}
    with session_scope(url) as session:
        for n in patients:
            orders[n] = ledger.append(session, enrolment(n)).order_id
            refs = ExternalRefs(
                crm_order_id=f"CRM-{n:05d}",
                erp_sales_order=f"SO-{n}",
                hospital_placer_order=f"PL-{n}",
                cmo_batch_id=f"B-{n}",
            )
            scheduled = event(EventType.APHERESIS_SCHEDULED, n, at=T0 + D, scheduled_for=T0 + 7 * D)
            ledger.append(session, scheduled.model_copy(update={"refs": refs}))
    return orders


def _partner_event(n: int, *, refs: ExternalRefs, **fields):
    """An event as a partner other than the CRM sends it: its own reference, no CRM id."""
    base = event(EventType.APHERESIS_COLLECTED, n, at=T0 + 7 * D, system=SourceSystem.HL7, **fields)
    return base.model_copy(update={"refs": refs})


@pytest.mark.parametrize(
    "refs",
    [
        ExternalRefs(erp_sales_order="SO-2"),
        ExternalRefs(hospital_placer_order="PL-2"),
        ExternalRefs(cmo_batch_id="B-2"),
        ExternalRefs(crm_order_id="CRM-00002"),
    ],
    ids=["erp", "hospital", "cmo", "crm"],
)
def test_each_partners_own_reference_finds_the_order(db_url, refs):
    orders = _enrol(db_url, 1, 2)
    with session_scope(db_url) as session:
        found = correlate(session, _partner_event(2, refs=refs, material=Material(din=din(2))))
    assert found.ok and found.order_id == orders[2]
    assert found.new_keys == [("din", din(2))]  # what the event teaches the index, and nothing it knew


def test_a_shipment_the_courier_reports_finds_its_order_once_known(db_url):
    orders = _enrol(db_url, 1)
    with session_scope(db_url) as session:
        unknown = event(EventType.SHIPMENT_PICKED_UP, 1, at=T0 + 7 * D, shipment=Shipment(shipment_id="SHP-1"))
        unknown = unknown.model_copy(update={"refs": ExternalRefs()})
        assert correlate(session, unknown).order_id is None  # nothing names the order yet
        ledger.append(
            session,
            event(EventType.SHIPMENT_PICKED_UP, 1, at=T0 + 7 * D, shipment=Shipment(shipment_id="SHP-1")),
        )
        again = unknown.model_copy(update={"source_event_id": "pickup-again"})
        assert correlate(session, again).order_id == orders[1]


def test_an_identity_key_alone_finds_the_order_when_no_reference_is_given(db_url):
    orders = _enrol(db_url, 1)
    with session_scope(db_url) as session:
        found = correlate(session, _partner_event(1, refs=ExternalRefs(), patient=PatientRef(coi_id=coi(1))))
    assert found.ok and found.order_id == orders[1] and found.new_keys == []


def test_references_to_two_orders_are_a_conflict_naming_both(db_url):
    orders = _enrol(db_url, 1, 2)
    with session_scope(db_url) as session:
        found = correlate(session, _partner_event(1, refs=ExternalRefs(erp_sales_order="SO-1", cmo_batch_id="B-2")))
    assert not found.ok and found.order_id is None
    assert [c.kind for c in found.conflicts] == ["references"] and found.conflicting_orders == set(orders.values())


def test_another_patients_din_on_an_order_is_a_conflict_of_kind_din(db_url):
    orders = _enrol(db_url, 1, 2)
    with session_scope(db_url) as session:
        ledger.append(
            session, _partner_event(2, refs=ExternalRefs(erp_sales_order="SO-2"), material=Material(din=din(2)))
        )
    with session_scope(db_url) as session:
        found = correlate(
            session, _partner_event(1, refs=ExternalRefs(erp_sales_order="SO-1"), material=Material(din=din(2)))
        )
    assert found.order_id == orders[1] and [c.kind for c in found.conflicts] == ["din"]
    assert found.conflicting_orders == {orders[2]}


def test_a_second_coi_for_one_order_is_a_conflict_of_kind_coi(db_url):
    orders = _enrol(db_url, 1)
    with session_scope(db_url) as session:
        found = correlate(
            session, _partner_event(1, refs=ExternalRefs(cmo_batch_id="B-1"), patient=PatientRef(coi_id=coi(77)))
        )
    assert found.order_id == orders[1] and [c.kind for c in found.conflicts] == ["coi_id"]


def test_an_order_id_the_hub_never_issued_is_a_conflict(db_url):
    _enrol(db_url, 1)
    with session_scope(db_url) as session:
        ghost = _partner_event(1, refs=ExternalRefs()).model_copy(update={"order_id": "ORD-NOSUCHORDER"})
        found = correlate(session, ghost)
    assert not found.ok and [c.kind for c in found.conflicts] == ["order_id"]


def test_conflict_texts_name_no_patient(db_url):
    _enrol(db_url, 1, 2)
    with session_scope(db_url) as session:
        found = correlate(
            session,
            _partner_event(1, refs=ExternalRefs(erp_sales_order="SO-1"), patient=PatientRef(coi_id=coi(77))),
        )
    text = " ".join(found.conflicts)
    assert found.conflicts and not any(v in text for p in PATIENTS for v in p.values())


def test_a_batch_index_answers_as_the_database_does(db_url):
    """The batch path preloads keys and records what it registers; its answers must be the plain path's."""
    orders = _enrol(db_url, 1, 2, 3)
    events = [
        _partner_event(1, refs=ExternalRefs(erp_sales_order="SO-1"), material=Material(din=din(1))),
        _partner_event(2, refs=ExternalRefs(hospital_placer_order="PL-2"), patient=PatientRef(coi_id=coi(3))),
        _partner_event(3, refs=ExternalRefs(erp_sales_order="SO-3", cmo_batch_id="B-1")),
        _partner_event(9, refs=ExternalRefs(erp_sales_order="SO-9")),
    ]
    with session_scope(db_url) as session:
        plain = [correlate(session, e) for e in events]
        index = KeyIndex(session)
        index.preload(k for e in events for k in e.all_keys())
        batched = [correlate(session, e, index) for e in events]
    assert [(c.order_id, c.conflicts, c.new_keys) for c in batched] == [
        (c.order_id, c.conflicts, c.new_keys) for c in plain
    ]
    assert [c.order_id for c in plain] == [orders[1], orders[2], None, None]
    assert [[k.kind for k in c.conflicts] for c in plain] == [[], ["coi_id"], ["references"], []]


def test_a_key_registered_earlier_in_a_batch_finds_its_order_for_the_next_event(db_url):
    orders = _enrol(db_url, 1)
    with session_scope(db_url) as session:
        index = KeyIndex(session)
        first = correlate(
            session, _partner_event(1, refs=ExternalRefs(erp_sales_order="SO-1", cmo_batch_id="B-NEW")), index
        )
        index.register(first.order_id, first.new_keys)
        later = correlate(session, _partner_event(1, refs=ExternalRefs(cmo_batch_id="B-NEW")), index)
    assert first.new_keys == [("cmo_batch_id", "B-NEW")] and later.order_id == orders[1] and later.new_keys == []
