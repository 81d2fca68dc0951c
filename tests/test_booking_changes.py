"""Rescheduling and cancelling a booked slot chain, signed, over the hub's API and the CLI: the CMO's
reservation moves or is given back over HTTP, the courier's leg to the CMO is cancelled and booked
again over HTTP, the hospital hears SIU^S13 / SIU^S15 over MLLP, the order's ledger and projection
follow; a repeated request answers the same change; on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from cgthub import decisions, ledger, outbound, slots
from cgthub.devtools.samples import event
from cgthub.model import EventType, SourceSystem
from cgthub.scheduling_tables import SlotBooking, SlotBookingChange
from cgthub.settings import PROJECT_ROOT, get_settings
from cgthub.store import session_scope
from cgthub.tables import OperatorDecision
from connectors.cmo import sandbox as cmo_sandbox
from connectors.common import breaker
from connectors.common.sandbox import SandboxServer
from connectors.courier import sandbox as courier_sandbox
from connectors.hospital.receiver import HospitalReceiver
from tests.api_server import api  # noqa: F401 - the fixture
from tests.factories import enrolment

PASSWORD = "correct horse battery"
SCOPES = ["book_slot", "reschedule_slot", "cancel_booking"]


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


@pytest.fixture
def world(db_url, monkeypatch, tmp_path):
    """The CMO (no places but those a test sets), the courier, the hospital's MLLP receiver, one operator."""
    cmo_app, courier_app = cmo_sandbox.create_app(standing_plan=False), courier_sandbox.create_app()
    with SandboxServer(cmo_app) as cmo, SandboxServer(courier_app) as courier, HospitalReceiver() as hospital:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        monkeypatch.setenv("AIRFLOW_CONN_COURIER_API", f"http://cgthub:courier-key@127.0.0.1:{courier.port}")
        monkeypatch.setenv("AIRFLOW_CONN_HOSPITAL_MLLP", hospital.address)
        monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
        get_settings.cache_clear()
        with session_scope(db_url) as s:
            decisions.add_operator(s, "olga", PASSWORD, SCOPES)
        yield cmo, cmo_app.sandbox_state, courier_app.sandbox_state, hospital
    get_settings.cache_clear()


def _order(db_url, n=1) -> str:
    with session_scope(db_url) as s:
        return ledger.append(s, enrolment(n)).order_id


def _days(count):
    """`count` days the test site (Mon-Thu) collects on, in one month, bookable now."""
    first = datetime.now(UTC).date() + timedelta(days=slots.config().min_notice_days)
    days = [first + timedelta(days=i) for i in range(60) if (first + timedelta(days=i)).weekday() < 4]
    for day in days:
        same_month = [d for d in days if d >= day and d.month == day.month]
        if len(same_month) >= count:
            return same_month[:count]
    raise AssertionError("no month with enough collection days")


def _places(cmo, days, cmo_site="CMO-NJ"):
    body = [
        {"cmo": cmo_site, "therapy": "CART-19", "date": (d + timedelta(days=2)).isoformat(), "capacity": 1}
        for d in days
    ]
    assert requests.post(f"{cmo.base_url}/sandbox/capacity", json=body, timeout=5).status_code == 200


def _signed(reason="SLOT-MOVED-WITH-SITE", **fields):
    return {
        "signer": "olga",
        "password": PASSWORD,
        "meaning": "approved",
        "reason_code": reason,
        "reason_text": "agreed with the apheresis unit",
        **fields,
    }


def _courier(db_url) -> dict:
    deadline = time.monotonic() + 30
    while True:  # on PostgreSQL the change feed serves a change once older transactions ended
        with session_scope(db_url) as session:
            routed = outbound.route(session)
        if routed.get("courier") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return outbound.drain("courier", database_url=db_url)


def _segments(message: bytes) -> dict[str, list[str]]:
    return {line.split("|")[0]: line.split("|") for line in message.decode().split("\r") if line}


def test_reschedule_and_cancel_move_the_cmo_place_the_courier_leg_and_tell_the_hospital(db_url, world, api):  # noqa: F811
    cmo, cmo_state, courier_state, hospital = world
    order = _order(db_url)
    first, second = _days(2)
    _places(cmo, [first, second])
    slots.sync(db_url, days=60)
    reader, operator = api.client(api.key("status:read", "timeline:read")), api.client(api.key("operate"))
    booked = operator.post(f"/orders/{order}/booking", json=_signed("SLOT-AGREED-WITH-SITE", apheresis_on=str(first)))
    assert booked.status_code == 201, booked.text
    booking_id = booked.json()["booking_id"]
    assert _courier(db_url)["delivered"] == 1
    (leg,) = courier_state.shipments.values()
    assert leg["status"] == "BOOKED"

    moves = reader.get(f"/orders/{order}/slots", params={"reschedule": "true"}).json()
    assert moves["booking"]["apheresis_on"] == str(first)
    assert [o["apheresis_on"] for o in moves["options"]] == [str(second)]  # its own date is not a move

    refused = operator.post(f"/orders/{order}/booking/reschedule", json=_signed(apheresis_on=str(second), password="x"))
    assert refused.status_code == 401 and len(cmo_state.slots) == 1  # unsigned: the CMO was not asked
    headers = {"Idempotency-Key": "move-1"}
    moved = operator.post(
        f"/orders/{order}/booking/reschedule", json=_signed(apheresis_on=str(second)), headers=headers
    )
    assert moved.status_code == 201, moved.text
    again = operator.post(
        f"/orders/{order}/booking/reschedule", json=_signed(apheresis_on=str(second)), headers=headers
    )
    assert again.status_code == 200 and again.json()["replayed"] is True
    change = moved.json()
    assert again.json()["change_id"] == change["change_id"] and change["kind"] == "rescheduled"
    assert (change["was_apheresis_on"], change["booking"]["apheresis_on"]) == (str(first), str(second))
    assert change["booking"]["booking_id"] == booking_id
    old_slot, new_slot = first + timedelta(days=2), second + timedelta(days=2)
    assert cmo_state.booked[("CMO-NJ", "CART-19", old_slot)] == 0  # given back at the CMO
    assert cmo_state.booked[("CMO-NJ", "CART-19", new_slot)] == 1
    assert change["booking"]["cmo_reservation"] != change["was_cmo_reservation"] and len(cmo_state.slots) == 2

    shown = reader.get(f"/orders/{order}").json()
    assert shown["status"] == "apheresis_scheduled"
    assert datetime.fromisoformat(shown["scheduled"]["apheresis"]).date() == second
    timeline = reader.get(f"/orders/{order}/timeline").json()["entries"]
    assert (timeline[-1]["event_type"], timeline[-1]["source_system"]) == ("order.rescheduled", "cgthub")

    assert outbound.drain("courier", database_url=db_url)["delivered"] == 1
    assert leg["status"] == "CANCELLED"
    (moved_leg,) = [s for s in courier_state.shipments.values() if s["status"] == "BOOKED"]
    apheresis = datetime.fromisoformat(change["booking"]["apheresis_at"])
    assert datetime.fromisoformat(moved_leg["pickup"]["windowStart"]) == apheresis + timedelta(hours=4)

    cancelled = operator.post(
        f"/orders/{order}/booking/cancel", json=_signed("BOOKING-WITHDRAWN"), headers={"Idempotency-Key": "cancel-1"}
    )
    assert cancelled.status_code == 201, cancelled.text
    assert cancelled.json()["booking"] is None and cancelled.json()["was_apheresis_on"] == str(second)
    repeated = operator.post(f"/orders/{order}/booking/cancel", json=_signed("BOOKING-WITHDRAWN"))
    assert repeated.status_code == 200 and repeated.json()["change_id"] == cancelled.json()["change_id"]
    assert cmo_state.booked[("CMO-NJ", "CART-19", new_slot)] == 0
    assert reader.get(f"/orders/{order}").json()["status"] == "enrolled"  # waits to be booked again
    open_again = reader.get(f"/orders/{order}/slots").json()
    assert open_again["booking"] is None and [o["apheresis_on"] for o in open_again["options"]] == [
        str(first),
        str(second),
    ]
    assert outbound.drain("courier", database_url=db_url)["delivered"] == 1
    assert [s["status"] for s in courier_state.shipments.values()] == ["CANCELLED", "CANCELLED"]

    assert outbound.drain("hl7", database_url=db_url)["delivered"] >= 3
    sius = [_segments(m) for m in hospital.received if b"SIU^" in m]
    assert [s["MSH"][8] for s in sius] == ["SIU^S12^SIU_S12", "SIU^S13^SIU_S12", "SIU^S15^SIU_S12"]
    assert {s["SCH"][2] for s in sius} == {f"BKG-{booking_id}^CGTHUB"}  # one appointment, booked, moved, off
    assert sius[1]["TQ1"][7].startswith(f"{second:%Y%m%d}") and sius[2]["SCH"][25].startswith("Cancelled")
    assert sius[2]["AIS"][2] == "D" and sius[2]["PID"][5] == '""'  # no name

    rebooked = operator.post(f"/orders/{order}/booking", json=_signed("SLOT-AGREED-WITH-SITE", apheresis_on=str(first)))
    assert rebooked.status_code == 201, rebooked.text  # a new hold at the CMO, not the released one
    assert rebooked.json()["cmo_reservation"] not in (
        change["was_cmo_reservation"],
        change["booking"]["cmo_reservation"],
    )
    assert cmo_state.booked[("CMO-NJ", "CART-19", old_slot)] == 1
    _courier(db_url)
    assert sorted(s["status"] for s in courier_state.shipments.values()) == ["BOOKED", "CANCELLED", "CANCELLED"]
    with session_scope(db_url, readonly=True) as s:
        kinds = s.scalars(select(SlotBookingChange.kind).order_by(SlotBookingChange.id)).all()
        signed = s.scalars(select(OperatorDecision.action).order_by(OperatorDecision.id)).all()
    assert kinds == ["rescheduled", "cancelled"]
    assert signed == ["book_slot", "reschedule_slot", "cancel_booking", "book_slot"]


def test_a_move_within_a_full_months_quota_and_the_refusals(db_url, world, api, tmp_path, monkeypatch):  # noqa: F811
    cmo, cmo_state, _, _ = world
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    scheduling = config / "scheduling.yaml"
    scheduling.write_text(scheduling.read_text().replace("  sites:\n    US-BOS-01: 8", "  sites:\n    US-SITE-1: 1"))
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    get_settings.cache_clear()
    order, unbooked = _order(db_url, 1), _order(db_url, 2)
    first, second = _days(2)
    _places(cmo, [first, second])
    slots.sync(db_url, days=60)
    operator = api.client(api.key("operate"))

    none = operator.post(f"/orders/{unbooked}/booking/reschedule", json=_signed(apheresis_on=str(second)))
    assert none.status_code == 409 and none.json()["error"]["code"] == "not_booked"
    assert operator.post(f"/orders/{order}/booking", json=_signed("SLOT-AGREED-WITH-SITE", apheresis_on=str(first)))
    same = operator.post(f"/orders/{order}/booking/reschedule", json=_signed(apheresis_on=str(first)))
    assert same.status_code == 409 and same.json()["error"]["code"] == "already_booked"
    wrong_reason = operator.post(
        f"/orders/{order}/booking/reschedule", json=_signed("SLOT-AGREED-WITH-SITE", apheresis_on=str(second))
    )
    assert wrong_reason.status_code == 422 and wrong_reason.json()["error"]["code"] == "invalid_reason"
    (held,) = cmo_state.slots.values()
    reservation, held["reservationId"] = held["reservationId"], "RSV-LOST"  # the CMO mislaid the old hold
    key = {"Idempotency-Key": "move-q"}
    lost = operator.post(f"/orders/{order}/booking/reschedule", json=_signed(apheresis_on=str(second)), headers=key)
    assert lost.status_code == 409 and lost.json()["error"]["code"] == "reservation_unknown"
    old_slot, new_slot = (("CMO-NJ", "CART-19", d + timedelta(days=2)) for d in (first, second))
    assert (cmo_state.booked[old_slot], cmo_state.booked[new_slot]) == (1, 1)  # never without a place
    with session_scope(db_url, readonly=True) as s:
        assert s.scalars(select(SlotBooking.apheresis_on)).one() == first  # nothing changed in the hub
    held["reservationId"] = reservation
    moved = operator.post(f"/orders/{order}/booking/reschedule", json=_signed(apheresis_on=str(second)), headers=key)
    assert moved.status_code == 201, moved.text  # the site's quota of 1 is its own booking, moved
    assert len(cmo_state.slots) == 2 and (cmo_state.booked[old_slot], cmo_state.booked[new_slot]) == (0, 1)

    with session_scope(db_url) as s:  # the apheresis took place: the booking stays as it is
        ledger.append(s, event(EventType.APHERESIS_COLLECTED, 1, at=datetime.now(UTC), system=SourceSystem.HL7))
    late = operator.post(f"/orders/{order}/booking/cancel", json=_signed("BOOKING-WITHDRAWN"))
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_schedulable"
    assert "can no longer be cancelled" in late.json()["error"]["message"]
    assert cmo_state.booked[new_slot] == 1
    with session_scope(db_url, readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(SlotBooking)) == 1


def test_cgthub_slots_reschedule_and_cancel_sign_with_the_password_from_stdin(db_url, world):
    from typer.testing import CliRunner

    from cgthub.cli import app as cli_app

    cmo, cmo_state, _, _ = world
    order = _order(db_url, 4)
    first, second = _days(2)
    _places(cmo, [first, second])
    runner = CliRunner()
    assert runner.invoke(cli_app, ["slots", "sync", "--days", "40"]).exit_code == 0
    sign = ["--signer", "olga", "--meaning", "approved", "--text", "agreed", "--password-stdin"]
    booked = runner.invoke(
        cli_app,
        ["slots", "book", order, "--date", str(first), "--reason", "SLOT-AGREED-WITH-SITE", *sign],
        input=PASSWORD + "\n",
    )
    assert booked.exit_code == 0, booked.output
    offered = runner.invoke(cli_app, ["slots", "show", order, "--reschedule", "--json"])
    assert [o["apheresis_on"] for o in __import__("json").loads(offered.output)] == [str(second)]
    moved = runner.invoke(
        cli_app,
        ["slots", "reschedule", order, "--date", str(second), "--reason", "SLOT-PATIENT-NOT-READY", *sign],
        input=PASSWORD + "\n",
    )
    assert moved.exit_code == 0, moved.output
    assert f"order {order} rescheduled: apheresis {first} at CMO-NJ" in " ".join(moved.output.split())
    cancelled = runner.invoke(
        cli_app, ["slots", "cancel", order, "--reason", "BOOKING-WITHDRAWN", *sign], input=PASSWORD + "\n"
    )
    assert cancelled.exit_code == 0, cancelled.output
    assert f"order {order}'s booking is cancelled: apheresis {second}" in " ".join(cancelled.output.split())
    assert sum(cmo_state.booked.values()) == 0
    nothing = runner.invoke(
        cli_app,
        ["slots", "reschedule", order, "--date", str(first), "--reason", "SLOT-MOVED-WITH-SITE", *sign],
        input=PASSWORD + "\n",
    )
    assert nothing.exit_code != 0 and "has no booking to reschedule" in str(nothing.exception)


def test_cgthub_slots_names_a_bad_date_or_cmo_before_anything_is_signed(db_url):
    from typer.testing import CliRunner

    from cgthub.cli import app as cli_app

    sign = ["--signer", "olga", "--meaning", "approved", "--reason", "X", "--text", "t", "--password-stdin"]
    runner = CliRunner()
    for command, option, told in (
        (["slots", "book", "ORD-1", "--date", "2026-02-30"], [], "--date '2026-02-30' is not a date (YYYY-MM-DD)"),
        (["slots", "reschedule", "ORD-1", "--date", "2026-12-20"], ["--cmo", "CMO NJ;"], "--cmo 'CMO NJ;' is not"),
    ):
        refused = runner.invoke(cli_app, [*command, *option, *sign], input=PASSWORD + "\n")
        assert refused.exit_code == 1 and told in str(refused.exception), (refused.output, refused.exception)
        assert "Traceback" not in refused.output
