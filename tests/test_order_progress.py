"""An order's progress is its life cycle, not any event: a courier booked or an alert resolved today
does not hide an order stalled for days; a leg the hub learns of late is still booked (for the next
pickup the courier can make) and the order still shows late and stuck. Pickup windows come from
config/scheduling.yaml, per site or market.

Driven as production runs it: the outbound path books over HTTP with the courier sandbox, the alert
is resolved with a signed decision, reconciliation and deadline monitoring judge the stored orders.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from cgthub import alerts, deadlines, decisions, ops_config, reconciliation, slots
from cgthub.devtools.samples import happy_path
from cgthub.lifecycle import OrderProjection
from cgthub.settings import PROJECT_ROOT, get_settings
from cgthub.store import session_scope
from cgthub.tables import Order
from tests.test_courier_booking import _apply, _fresh_breakers, _route_and_book, courier  # noqa: F401

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
PASSWORD = "correct horse battery"


def _projection(url) -> OrderProjection:
    with session_scope(url, readonly=True) as session:
        return OrderProjection.model_validate(session.scalars(select(Order.projection)).one())


def test_a_late_leg_is_booked_and_the_order_still_shows_late_and_stuck(db_url, courier):  # noqa: F811
    now = datetime.now(UTC).replace(microsecond=0)
    story = happy_path(1, start=now - 11 * DAY)  # scheduled ten days ago for an apheresis four days ago
    _apply(db_url, story[:2])
    scheduled_at, apheresis = story[1].occurred_at, story[1].scheduled_for
    assert apheresis is not None and apheresis + 12 * HOUR < now  # its pickup window closed days ago

    assert _route_and_book(db_url)["delivered"] == 1
    (shipment,) = courier.state.shipments.values()  # booked all the same, for the next pickup
    start = datetime.fromisoformat(shipment["pickup"]["windowStart"])
    end = datetime.fromisoformat(shipment["pickup"]["windowEnd"])
    assert now - HOUR < start <= datetime.now(UTC) and end - start == 8 * HOUR  # the window's length, from now

    with session_scope(db_url) as session:  # an alert on the order resolved today: a hub event in its ledger
        decisions.add_operator(session, "olga", PASSWORD, ["resolve_alert"])
        order_id = session.scalars(select(Order.id)).one()
        alert = alerts.raise_alert(session, kind="test_alert", message="look", dedupe_key="t:1", order_id=order_id)
        session.flush()
        signature = decisions.Signature(
            signer="olga", password=PASSWORD, meaning="reviewed", reason_code="FALSE-ALARM", reason_text="checked"
        )
        decisions.resolve_alert(session, alert.id, signature)

    state = _projection(db_url)
    assert shipment["shipmentId"] in state.refs.courier_shipment_ids  # the booking is in the order
    assert state.last_event_at is not None and state.last_event_at > now - HOUR  # events today...
    assert state.last_progress_at == scheduled_at  # ...but no progress since it was scheduled

    config = ops_config.get()
    with session_scope(db_url) as session:
        run = reconciliation.run(session, [], datetime.now(UTC), config)
        late = deadlines.run(session, datetime.now(UTC), config)
    assert run.counts().get("stuck_order") == 1
    with session_scope(db_url, readonly=True) as session:
        stuck = session.scalars(select(Order.id)).one()
        found = {a.kind: a for a in session.scalars(select(alerts.Alert).where(alerts.Alert.status == "open"))}
    assert found["reconciliation.stuck_order"].message == (
        f"order {stuck} has not moved for 10 days (status apheresis_scheduled)"
    )
    assert late.opened and found[deadlines.MILESTONE_OVERDUE].message.startswith("collected overdue")


def test_a_leg_the_order_is_already_past_is_not_booked(db_url, courier):  # noqa: F811
    now = datetime.now(UTC).replace(microsecond=0)
    collected = happy_path(2, start=now - 10 * DAY)
    _apply(db_url, collected[:3] + collected[5:6])  # collected and received at the CMO, no courier heard of
    _route_and_book(db_url)
    assert courier.state.shipments == {}

    waiting = happy_path(3, start=now - 8 * DAY)
    _apply(db_url, waiting[:3])  # collected yesterday, still at the site: its leg is late, not past
    _route_and_book(db_url)
    (shipment,) = courier.state.shipments.values()
    assert shipment["reference"]["crmOrderId"] == "CRM-00003"


def test_pickup_windows_come_from_the_scheduling_file_per_site_and_a_bad_one_names_its_line(
    db_url,
    courier,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    scheduling = config / "scheduling.yaml"
    site_window = "  sites:\n    US-SITE-1:\n      to_manufacturer: {after_hours: 2, until_hours: 6}\n"
    scheduling.write_text(scheduling.read_text() + site_window)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    get_settings.cache_clear()

    now = datetime.now(UTC).replace(microsecond=0)
    story = happy_path(4, start=now - DAY)  # apheresis in six days
    _apply(db_url, story[:2])
    assert _route_and_book(db_url)["delivered"] == 1
    (shipment,) = courier.state.shipments.values()
    assert story[1].scheduled_for is not None
    assert datetime.fromisoformat(shipment["pickup"]["windowStart"]) == story[1].scheduled_for + 2 * HOUR
    assert datetime.fromisoformat(shipment["pickup"]["windowEnd"]) == story[1].scheduled_for + 6 * HOUR

    text = scheduling.read_text().replace("{after_hours: 2, until_hours: 6}", "{after_hours: 6, until_hours: 2}")
    scheduling.write_text(text)
    line = text.splitlines().index("      to_manufacturer: {after_hours: 6, until_hours: 2}") + 1
    with pytest.raises(slots.SchedulingConfigError) as refused:
        slots.config()
    assert str(refused.value).startswith(f"{scheduling}:{line}: pickup_windows.sites.US-SITE-1.to_manufacturer")
    assert "a pickup window closes after it opens" in str(refused.value)


def test_the_life_cycle_counts_steps_as_progress_and_a_cancelled_booking_returns_the_order_to_enrolled():
    from itertools import permutations

    from cgthub.devtools.samples import T0, event
    from cgthub.lifecycle import OrderStatus, project
    from cgthub.model import EventType, Shipment, SourceSystem

    story = happy_path(5)[:2]  # enrolled, apheresis scheduled on day 1 for day 7
    booked = event(
        EventType.SHIPMENT_BOOKED, 5, at=T0 + 3 * DAY, system=SourceSystem.COURIER, shipment=Shipment(shipment_id="S-1")
    )
    noted = event(EventType.ORDER_UPDATED, 5, at=T0 + 4 * DAY, system=SourceSystem.HUB, eid="decision:1")
    moved = event(EventType.ORDER_RESCHEDULED, 5, at=T0 + 5 * DAY, system=SourceSystem.HUB, eid="change:1",
                  scheduled_for=T0 + 9 * DAY, attributes={"what": "apheresis"})  # fmt: skip
    called_off = event(EventType.ORDER_RESCHEDULED, 5, at=T0 + 6 * DAY, system=SourceSystem.HUB, eid="change:2",
                       attributes={"what": "apheresis", "cancelled": True})  # fmt: skip

    idle = project("X", [*story, booked, noted])
    assert (idle.last_event_at, idle.last_progress_at) == (T0 + 4 * DAY, T0 + DAY)
    assert project("X", [*story, booked, noted, moved]).last_progress_at == T0 + 5 * DAY  # a date moved
    for order in permutations([*story, booked, noted, moved, called_off]):
        state = project("X", order)
        assert (state.status, state.status_since, state.last_progress_at) == (
            OrderStatus.ENROLLED,
            T0 + 6 * DAY,
            T0 + 6 * DAY,
        )
        assert "apheresis" not in state.scheduled and state.reschedules == 1 and not state.anomalies
