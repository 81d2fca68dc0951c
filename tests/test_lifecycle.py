"""The projection is a pure function of the event set: order, duplicates and late arrivals don't matter."""

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgthub.lifecycle import OrderProjection, OrderStatus, advance, can_advance, project
from cgthub.model import EventType, ExternalRefs, Material, Shipment, SourceSystem
from tests.factories import T0, event, happy_path

D = timedelta(days=1)


def _exception_events(n):
    return [
        event(EventType.ORDER_ON_HOLD, n, at=T0 + 3 * D, reason="patient unwell"),
        event(EventType.ORDER_HOLD_RELEASED, n, at=T0 + 4 * D),
        event(
            EventType.ORDER_RESCHEDULED,
            n,
            at=T0 + 4 * D + timedelta(hours=1),
            scheduled_for=T0 + 8 * D,
            attributes={"what": "apheresis"},
        ),
        event(
            EventType.TEMPERATURE_EXCURSION,
            n,
            at=T0 + 7 * D + timedelta(hours=9),
            system=SourceSystem.COURIER,
            shipment=Shipment(shipment_id=f"SHP-{n}-OUT"),
            attributes={"extreme_c": -120.0, "limit_c": -150.0},
        ),
        event(EventType.PRODUCT_OOS, n, at=T0 + 22 * D, system=SourceSystem.CMO, material=Material(lot=f"LOT-{n:05d}")),
        event(EventType.OOS_RELEASED_UNDER_EXCEPTION, n, at=T0 + 23 * D, system=SourceSystem.CMO),
        event(EventType.ORDER_CANCELLED, n, at=T0 + 27 * D, reason="patient deceased"),
    ]


histories = st.builds(
    lambda base, extra: base + extra,
    st.lists(st.sampled_from(happy_path(1)), unique_by=lambda e: e.key, min_size=1).map(
        lambda evs: sorted(evs, key=lambda e: e.occurred_at)
    ),
    st.lists(st.sampled_from(_exception_events(1)), unique_by=lambda e: e.key),
)


@settings(max_examples=150, deadline=None)
@given(history=histories, data=st.data())
def test_any_permutation_with_duplicates_gives_the_same_projection(history, data):
    expected = project("ORD-1", history)
    shuffled = data.draw(st.permutations(history))
    dupes = data.draw(st.lists(st.sampled_from(history), max_size=5))
    assert project("ORD-1", [*shuffled, *dupes]) == expected


@settings(max_examples=100, deadline=None)
@given(history=histories, cut=st.integers(min_value=1, max_value=25))
def test_folding_later_events_onto_a_stored_projection_equals_projecting_all(history, cut):
    ordered = sorted(history, key=lambda e: e.occurred_at)
    head, tail = ordered[:cut], ordered[cut:]
    stored = project("ORD-1", head)
    if tail and can_advance(stored, tail):
        assert advance(stored, tail) == project("ORD-1", ordered)


def test_full_life_cycle_reaches_infused_with_every_milestone():
    state = project("ORD-1", happy_path(1))
    assert state.status is OrderStatus.INFUSED
    assert state.skipped_milestones == []
    assert state.vein_to_vein_days(T0) == 23.0
    assert state.scheduled["infusion"] == T0 + 30 * D


def test_backward_transition_is_flagged_not_applied():
    events = happy_path(1)[:7]  # up to manufacturing started
    late_collection = event(EventType.APHERESIS_COLLECTED, 1, at=T0 + 10 * D, eid="recollect", system=SourceSystem.HL7)
    state = project("ORD-1", [*events, late_collection])
    assert state.status is OrderStatus.MANUFACTURING
    assert [a.source_event_id for a in state.anomalies] == ["recollect"]
    assert "manufacturing -> collected" in state.anomalies[0].message


def test_events_after_cancellation_are_anomalies():
    events = [*happy_path(1)[:3], event(EventType.ORDER_CANCELLED, 1, at=T0 + 7 * D + timedelta(hours=1))]
    pickup = happy_path(1)[3]
    state = project("ORD-1", [*events, pickup])
    assert state.status is OrderStatus.CANCELLED
    assert len(state.anomalies) == 1


def test_hold_shows_on_hold_and_release_resumes_the_stage():
    events = happy_path(1)[:3]
    held = project("ORD-1", [*events, event(EventType.ORDER_ON_HOLD, 1, at=T0 + 8 * D, reason="COI check")])
    assert held.status is OrderStatus.ON_HOLD and held.stage is OrderStatus.COLLECTED
    released = project(
        "ORD-1",
        [
            *events,
            event(EventType.ORDER_ON_HOLD, 1, at=T0 + 8 * D),
            event(EventType.ORDER_HOLD_RELEASED, 1, at=T0 + 9 * D),
        ],
    )
    assert released.status is OrderStatus.COLLECTED


def test_oos_then_release_under_exception():
    events = happy_path(1)[:8]  # through QC started
    state = project(
        "ORD-1",
        [
            *events,
            event(EventType.PRODUCT_OOS, 1, at=T0 + 22 * D, system=SourceSystem.CMO),
            event(EventType.OOS_RELEASED_UNDER_EXCEPTION, 1, at=T0 + 23 * D, system=SourceSystem.CMO),
        ],
    )
    assert state.status is OrderStatus.RELEASED and state.released_under_exception


def test_release_under_exception_without_oos_is_flagged():
    events = happy_path(1)[:8]
    state = project("ORD-1", [*events, event(EventType.OOS_RELEASED_UNDER_EXCEPTION, 1, at=T0 + 23 * D)])
    assert state.status is OrderStatus.QC_TESTING and len(state.anomalies) == 1


def test_superseded_event_is_ignored():
    events = happy_path(1)[:3]
    wrong = event(EventType.APHERESIS_COLLECTED, 1, at=T0 + 7 * D, system=SourceSystem.HL7)
    correction = event(
        EventType.APHERESIS_SCHEDULED,
        1,
        at=T0 + 2 * D,
        system=SourceSystem.HL7,
        eid=f"{wrong.source_event_id}@v2",
        supersedes=wrong.source_event_id,
    )
    state = project("ORD-1", [*events[:2], wrong, correction])
    assert state.status is OrderStatus.APHERESIS_SCHEDULED


def test_missing_milestones_are_listed_until_they_arrive():
    events = happy_path(1)
    gap = [e for e in events if e.event_type is not EventType.SHIPMENT_PICKED_UP]
    state = project("ORD-1", gap[:5])
    assert "in_transit_to_cmo" in state.skipped_milestones
    assert project("ORD-1", events[:6]).skipped_milestones == []


def test_the_folds_field_writes_behave_as_pydantics() -> None:
    """The projection's own assignment (a plain write, for speed) records the field as set and
    refuses a name the model does not declare, as pydantic's does."""
    state = OrderProjection(order_id="ORD-1")
    state.on_hold = True
    assert state.on_hold is True
    assert state.model_fields_set == {"order_id", "on_hold"}
    assert state.model_dump(exclude_unset=True) == {"order_id": "ORD-1", "on_hold": True}
    with pytest.raises(ValueError, match="has no field"):
        state.no_such_field = 1  # type: ignore[attr-defined]


def test_references_merged_onto_none_are_the_events_own() -> None:
    later = ExternalRefs(crm_order_id="CRM-1", courier_shipment_ids=("SHP-1",))
    assert ExternalRefs().merged(later) is later
    repeated = ExternalRefs(courier_shipment_ids=("SHP-1", "SHP-2", "SHP-1"))
    assert ExternalRefs().merged(repeated).courier_shipment_ids == ("SHP-1", "SHP-2")
    assert later.merged(ExternalRefs(erp_sales_order="SO-1")) == ExternalRefs(
        crm_order_id="CRM-1", erp_sales_order="SO-1", courier_shipment_ids=("SHP-1",)
    )
