"""Deadline monitoring: what is late at a given moment, and alerts that open and clear with the facts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cgthub import deadlines, ledger, ops_config
from cgthub.lifecycle import project
from cgthub.model import EventType, Shipment, SourceSystem
from cgthub.tables import Alert
from tests.factories import T0, enrolment, event, happy_path

CONFIG = ops_config.load()
H = timedelta(hours=1)
D = timedelta(days=1)


def _upto(events, kind):
    """The happy path's events up to and including the first of `kind`."""
    out = []
    for e in events:
        out.append(e)
        if e.event_type is kind:
            return out
    raise AssertionError(kind)


def test_collected_without_cmo_receipt_is_critical_after_the_hold_time():
    events = _upto(happy_path(1), EventType.SHIPMENT_PICKED_UP)  # collected day 7, picked up +6 h
    state = project("ORD-1", events)
    picked_up = events[-1].occurred_at

    assert deadlines.breaches(state, picked_up + 71 * H, CONFIG) == []
    late = deadlines.breaches(state, picked_up + 80 * H, CONFIG)
    assert [(b.kind, b.severity.value) for b in late] == [("milestone_overdue", "critical")]
    assert "received_at_cmo overdue" in late[0].message and "late by 8 h" in late[0].message


def test_apheresis_overdue_counts_from_the_scheduled_date_not_from_the_booking():
    events = _upto(happy_path(1), EventType.APHERESIS_SCHEDULED)  # booked day 1 for day 7
    state = project("ORD-1", events)
    assert deadlines.breaches(state, T0 + 7 * D + 23 * H, CONFIG) == []
    late = deadlines.breaches(state, T0 + 8 * D + 2 * H, CONFIG)
    assert [b.details["expect"] for b in late] == ["collected"]


def test_a_held_or_finished_order_is_not_overdue():
    events = _upto(happy_path(1), EventType.SHIPMENT_PICKED_UP)
    held = [*events, event(EventType.ORDER_ON_HOLD, 1, at=events[-1].occurred_at + H, reason="customs")]
    assert [b.kind for b in deadlines.breaches(project("O", held), T0 + 30 * D, CONFIG)] == ["vein_to_vein_at_risk"]
    done = project("O", happy_path(1))
    assert deadlines.breaches(done, T0 + 90 * D, CONFIG) == []


def test_vein_to_vein_at_risk_when_manufacturing_overruns():
    events = _upto(happy_path(1), EventType.MANUFACTURING_STARTED)  # collected day 7, manufacturing day 9
    us = project("ORD-US", events)
    assert not [b for b in deadlines.breaches(us, T0 + 12 * D, CONFIG) if b.kind == "vein_to_vein_at_risk"]
    late = [b for b in deadlines.breaches(us, T0 + 40 * D, CONFIG) if b.kind == "vein_to_vein_at_risk"]
    assert late and late[0].details["target_days"] == 30  # the US target from config/markets/US.yaml
    assert late[0].details["projected_days"] > 30
    de = project("ORD-DE", [enrolment(1, market="DE"), *events[1:]])
    assert not [b for b in deadlines.breaches(de, T0 + 33 * D, CONFIG) if b.kind == "vein_to_vein_at_risk"]


def test_temperature_excursion_is_reported_with_the_projection_dedupe_key():
    events = _upto(happy_path(1), EventType.SHIPMENT_PICKED_UP)
    excursion = event(
        EventType.TEMPERATURE_EXCURSION,
        1,
        at=events[-1].occurred_at + 3 * H,
        system=SourceSystem.COURIER,
        shipment=Shipment(shipment_id="SHP-1-OUT"),
        attributes={"extreme_c": -120.0, "limit_c": -150.0},
    )
    found = deadlines.breaches(project("ORD-1", [*events, excursion]), events[-1].occurred_at + 4 * H, CONFIG)
    assert [(b.kind, b.dedupe_key) for b in found] == [
        ("temperature_excursion", f"excursion:ORD-1:{excursion.source_event_id}")
    ]


def test_run_opens_alerts_once_and_closes_them_when_the_receipt_arrives(session):
    events = happy_path(1)
    upto_pickup = _upto(events, EventType.SHIPMENT_PICKED_UP)
    ledger.append_many(session, upto_pickup)
    late = upto_pickup[-1].occurred_at + 80 * H

    first = deadlines.run(session, late, CONFIG)
    again = deadlines.run(session, late + H, CONFIG)
    assert len(first.opened) == 1 and again.opened == [] and again.still_open == 1
    alert = session.get(Alert, first.opened[0])
    assert (alert.kind, alert.severity, alert.status) == ("milestone_overdue", "critical", "open")

    ledger.append_many(session, [e for e in events if e.event_type is EventType.SHIPMENT_DELIVERED][:1])
    cleared = deadlines.run(session, late + 2 * H, CONFIG)
    assert cleared.closed == [alert.id]
    assert session.scalars(select(Alert.status).where(Alert.id == alert.id)).one() == "closed"
