"""Booking a slot chain over the hub's API: the CMO's place reserved over HTTP, the apheresis in the
order's ledger and projection, the hospital told with SIU^S12 over MLLP; idempotent, signed,
quota-bound, and no double booking when two bookers race for the last place."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from cgthub import decisions, ledger, outbound, slots
from cgthub.scheduling_tables import SlotBooking
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import OperatorDecision
from connectors.cmo import sandbox as cmo_sandbox
from connectors.common import breaker
from connectors.common.sandbox import FaultConfig, SandboxServer
from connectors.hospital.receiver import HospitalReceiver
from tests.api_server import api  # noqa: F401 - the fixture
from tests.factories import enrolment

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


@pytest.fixture
def world(db_url, monkeypatch):
    """A CMO with no places but those a test sets, the hospital's MLLP receiver, one operator."""
    app = cmo_sandbox.create_app(standing_plan=False, faults=FaultConfig(latency_ms=150))
    with SandboxServer(app) as cmo, HospitalReceiver() as hospital:
        monkeypatch.setenv("AIRFLOW_CONN_CMO_API", f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}")
        monkeypatch.setenv("AIRFLOW_CONN_HOSPITAL_MLLP", hospital.address)
        with session_scope(db_url) as s:
            decisions.add_operator(s, "olga", PASSWORD, ["book_slot"])
        yield cmo, app.sandbox_state, hospital


def _orders(db_url, *numbers):
    with session_scope(db_url) as s:
        return [ledger.append(s, enrolment(n)).order_id for n in numbers]


def _collection_days(count=1):
    """`count` dates the test site (default calendar: Mon-Thu) collects on, in one month, bookable now."""
    first = datetime.now(UTC).date() + timedelta(days=slots.config().min_notice_days)
    days = [first + timedelta(days=i) for i in range(60) if (first + timedelta(days=i)).weekday() < 4]
    for day in days:
        same_month = [d for d in days if d >= day and d.month == day.month]
        if len(same_month) >= count:
            return same_month[:count]
    raise AssertionError("no month with enough collection days")


def _places(cmo, *rows):
    body = [{"cmo": c, "therapy": "CART-19", "date": d.isoformat(), "capacity": n} for c, d, n in rows]
    assert requests.post(f"{cmo.base_url}/sandbox/capacity", json=body, timeout=5).status_code == 200


def _sync(db_url):
    slots.sync(db_url, days=60)


def _body(day, **fields):
    return {
        "signer": "olga",
        "password": PASSWORD,
        "meaning": "approved",
        "reason_code": "SLOT-AGREED-WITH-SITE",
        "reason_text": "date agreed with the apheresis unit",
        "apheresis_on": day.isoformat(),
        **fields,
    }


def test_booking_reserves_the_slot_schedules_the_apheresis_and_tells_the_hospital(db_url, world, api):  # noqa: F811
    cmo, cmo_state, hospital = world
    (order,) = _orders(db_url, 1)
    (day,) = _collection_days()
    slot_day = day + timedelta(days=2)  # CART-19 in the US: two days to the CMO
    _places(cmo, ("CMO-NJ", slot_day, 2))
    _sync(db_url)
    reader, operator = api.client(api.key("status:read", "timeline:read")), api.client(api.key("operate"))

    offered = reader.get(f"/orders/{order}/slots").json()
    assert offered["booking"] is None
    assert [(o["apheresis_on"], o["cmo"], o["slot_day"]) for o in offered["options"]] == [
        (day.isoformat(), "CMO-NJ", slot_day.isoformat())
    ]
    option = offered["options"][0]
    assert (option["release_on"], option["at_site_on"], option["infusion_on"]) == tuple(
        (slot_day + timedelta(days=n)).isoformat() for n in (17, 19, 22)
    )  # 10 days' manufacturing + 7 QC/release, 2 back to the site, 3 of lymphodepletion
    assert option["apheresis_at"] == f"{day.isoformat()}T08:00:00+00:00" and option["vein_to_vein_days"] == 24

    refused = operator.post(f"/orders/{order}/booking", json=_body(day, password="not my password"))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "signature_refused"
    assert cmo_state.slots == {}  # nobody signed, so the CMO was not asked

    first = operator.post(f"/orders/{order}/booking", json=_body(day), headers={"Idempotency-Key": "try-1"})
    again = operator.post(f"/orders/{order}/booking", json=_body(day))
    assert first.status_code == 201, first.text
    assert again.status_code == 200 and again.json()["replayed"] is True
    booked = first.json()
    assert again.json()["booking_id"] == booked["booking_id"]
    assert (booked["cmo"], booked["slot_day"], booked["booked_by"]) == ("CMO-NJ", slot_day.isoformat(), "olga")
    assert len(cmo_state.slots) == 1 and cmo_state.booked[("CMO-NJ", "CART-19", slot_day)] == 1

    other_day = operator.post(f"/orders/{order}/booking", json=_body(day + timedelta(days=1)))
    assert other_day.status_code == 409 and other_day.json()["error"]["code"] == "already_booked"
    same_key = operator.post(
        f"/orders/{order}/booking", json=_body(day + timedelta(days=1)), headers={"Idempotency-Key": "try-1"}
    )  # a request already answered is answered again, whatever else it says
    assert same_key.status_code == 200 and same_key.json()["booking_id"] == booked["booking_id"]

    shown = reader.get(f"/orders/{order}").json()
    assert shown["status"] == "apheresis_scheduled"
    eight_am = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=8)
    assert datetime.fromisoformat(shown["scheduled"]["apheresis"]) == eight_am
    last = reader.get(f"/orders/{order}/timeline").json()["entries"][-1]
    assert (last["event_type"], last["source_system"]) == ("apheresis.scheduled", "cgthub")
    assert reader.get(f"/orders/{order}/slots").json()["booking"]["booking_id"] == booked["booking_id"]

    assert outbound.drain("hl7", database_url=db_url)["delivered"] == 1
    assert outbound.drain("hl7", database_url=db_url)["claimed"] == 0
    (siu,) = hospital.received
    segments = {line.split("|")[0]: line.split("|") for line in siu.decode().split("\r") if line}
    assert segments["MSH"][8] == "SIU^S12^SIU_S12"
    assert segments["SCH"][2] == f"BKG-{booked['booking_id']}^CGTHUB" and segments["SCH"][25].startswith("Booked")
    assert segments["TQ1"][7] == f"{day:%Y%m%d}080000+0000" and segments["AIL"][3].startswith("US-SITE-1")
    assert segments["PID"][3].startswith("CHW123426000001^^^COI") and segments["PID"][5] == '""'  # no name
    with session_scope(db_url) as s:
        decision = s.scalars(select(OperatorDecision).where(OperatorDecision.action == "book_slot")).one()
        assert decision.outcome["booking_id"] == booked["booking_id"] and decision.signer == "olga"


def test_quota_and_calendar_refusals_say_why(db_url, world, api, tmp_path, monkeypatch):  # noqa: F811
    cmo, cmo_state, _ = world
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    scheduling = config / "scheduling.yaml"
    scheduling.write_text(scheduling.read_text().replace("  sites:\n    US-BOS-01: 8", "  sites:\n    US-SITE-1: 1"))
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    first, second = _orders(db_url, 1, 2)
    days = _collection_days(2)
    _places(cmo, *[("CMO-EAST", d + timedelta(days=2), 3) for d in days])
    _sync(db_url)
    operator = api.client(api.key("operate"))

    assert operator.post(f"/orders/{first}/booking", json=_body(days[0])).status_code == 201
    over = operator.post(f"/orders/{second}/booking", json=_body(days[1]))
    assert over.status_code == 409 and over.json()["error"]["code"] == "quota_exhausted"
    assert f"site US-SITE-1 has used its quota of 1 bookings for {days[1]:%Y-%m}" in over.json()["error"]["message"]
    friday = next(d for d in (days[0] + timedelta(days=i) for i in range(7)) if d.weekday() == 4)
    closed = operator.post(f"/orders/{second}/booking", json=_body(friday))
    assert closed.status_code == 409 and "does not collect on fri" in closed.json()["error"]["message"]
    assert len(cmo_state.slots) == 1


def test_two_bookers_for_the_last_place_one_wins_the_other_hears_slot_full(db_url, world, api):  # noqa: F811
    cmo, cmo_state, _ = world
    orders = _orders(db_url, 1, 2)
    (day,) = _collection_days()
    slot_day = day + timedelta(days=2)
    _places(cmo, ("CMO-EAST", slot_day, 1))
    _sync(db_url)
    token = api.key("operate")
    start = threading.Barrier(2)
    answers: dict[str, object] = {}

    def book(order_id: str) -> None:
        client = api.client(token)
        start.wait()
        answers[order_id] = client.post(f"/orders/{order_id}/booking", json=_body(day, cmo="CMO-EAST"))

    racers = [threading.Thread(target=book, args=(order_id,)) for order_id in orders]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    codes = sorted(answer.status_code for answer in answers.values())  # type: ignore[attr-defined]
    assert codes == [201, 409]
    (loser,) = [a for a in answers.values() if a.status_code == 409]  # type: ignore[attr-defined]
    error = loser.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "slot_full" and f"no manufacturing place left for CART-19 on {slot_day}" in error["message"]
    assert len(cmo_state.slots) == 1 and cmo_state.refused == 0  # the hub's lock stopped the loser first
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(SlotBooking)) == 1
        decided = s.scalar(
            select(func.count()).select_from(OperatorDecision).where(OperatorDecision.action == "book_slot")
        )
        assert decided == 1  # the loser's signature rolled back with its booking


def test_in_process_booking_and_the_cmo_refusing_a_place_the_hub_thought_free(db_url, world):
    cmo, cmo_state, _ = world
    order, other = _orders(db_url, 3, 5)
    first, second = _collection_days(2)
    _places(cmo, ("CMO-EAST", first + timedelta(days=2), 1), ("CMO-EAST", second + timedelta(days=2), 1))
    _sync(db_url)
    _places(cmo, ("CMO-EAST", second + timedelta(days=2), 0))  # the CMO's planners took it back since
    signature = decisions.Signature(
        signer="olga", password=PASSWORD, meaning="approved", reason_code="SLOT-PATIENT-READINESS", reason_text="fit"
    )
    from cgthub.booking import BookingRequest, run_booking

    taken_back = second + timedelta(days=2)
    with pytest.raises(slots.SlotTaken, match=f"the CMO has no place left at CMO-EAST for CART-19 on {taken_back}"):
        run_booking(db_url, other, BookingRequest(apheresis_on=second), signature)
    assert cmo_state.refused == 1
    with session_scope(db_url, readonly=True) as s:
        assert [o.apheresis_on for o in slots.options_for(s, other)] == [first]  # no longer offered
        (option,) = slots.options_for(s, order)
    done = run_booking(db_url, order, BookingRequest(apheresis_on=option.apheresis_on), signature)
    assert (done.apheresis_on, done.cmo, done.replayed) == (first, "CMO-EAST", False)
    assert run_booking(db_url, order, BookingRequest(apheresis_on=first), signature).replayed is True
    assert isinstance(done.infusion_on, date)


def test_cgthub_slots_book_signs_with_the_password_from_stdin(db_url, world):
    from typer.testing import CliRunner

    from cgthub.cli import app as cli_app

    cmo, cmo_state, _ = world
    (order,) = _orders(db_url, 4)
    (day,) = _collection_days()
    _places(cmo, ("CMO-NJ", day + timedelta(days=2), 1))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["slots", "sync", "--days", "40"]).exit_code == 0
    sign = ["--signer", "olga", "--meaning", "approved", "--reason", "SLOT-AGREED-WITH-SITE", "--text", "agreed"]
    booked = runner.invoke(
        cli_app, ["slots", "book", order, "--date", day.isoformat(), *sign, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert booked.exit_code == 0, booked.output
    assert f"order {order} booked: apheresis {day}T08:00:00+00:00 at US-SITE-1" in " ".join(booked.output.split())
    assert len(cmo_state.slots) == 1
    shown = runner.invoke(cli_app, ["slots", "show", order, "--json"])
    assert json.loads(shown.output)["cmo"] == "CMO-NJ"
