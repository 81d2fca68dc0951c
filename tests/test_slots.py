"""Feasible apheresis dates: the CMO's free places, lead times, the site's calendar, notice and
horizon, quotas per site and market and month; config/scheduling.yaml's errors name file:line;
`cgthub slots show` answers with the options."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta

import pytest
from typer.testing import CliRunner

from cgthub import ledger, slots
from cgthub.cli import app as cli_app
from cgthub.cli.common import CliError
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from tests.factories import enrolment

MONDAY = date(2027, 1, 4)
US = slots.OrderFacts("ORD-1", "CART-19", "US-BOS-01", "US", "CMO-NJ")
DE = slots.OrderFacts("ORD-2", "CART-19", "DE-HD-01", "DE", "CMO-LEI")


def _planner(free, *, site_use=(), market_use=(), today=MONDAY - timedelta(days=3)):
    """A planner on the repository's config/scheduling.yaml with these free places."""
    places: dict[tuple[str, str], dict[date, int]] = {}
    for cmo, therapy, day, n in free:
        places.setdefault((cmo, therapy), {})[day] = n
    return slots.Planner(slots.config(), places, Counter(dict(site_use)), Counter(dict(market_use)), today)


def test_an_option_needs_a_free_place_on_the_day_the_material_reaches_the_cmo():
    # US CART-19: 2 days to the CMO. A place on Wednesday serves Monday's apheresis only.
    planner = _planner([("CMO-NJ", "CART-19", MONDAY + timedelta(days=2), 1), ("CMO-NJ", "CART-BCMA", MONDAY, 4)])
    (option,) = planner.options(US)
    assert (option.apheresis_on, option.cmo, option.slot_day, option.places_left) == (
        MONDAY,
        "CMO-NJ",
        MONDAY + timedelta(days=2),
        1,
    )
    assert option.apheresis_at.isoformat() == "2027-01-04T08:00:00-05:00"  # Boston's 08:00 in winter
    twin = slots.OrderFacts("ORD-7", "CART-19", "US-BOS-01", "US", "CMO-NJ")  # shares US's computation
    planner.options(twin).clear()
    assert planner.options(twin) == planner.options(US, shared=False) == [option]
    assert planner.options(slots.OrderFacts("ORD-8", "CART-BCMA", "US-BOS-01", "US", "CMO-NJ")) == []
    assert (option.release_on, option.at_site_on, option.infusion_on) == (
        date(2027, 1, 23),
        date(2027, 1, 25),
        date(2027, 1, 28),
    )


def test_a_market_overrides_lead_times_and_may_use_other_cmos():
    # DE: one day to the CMO; CMO-EAST may make DE's products too (config `cmos: {DE: [...]}`)
    slot = MONDAY + timedelta(days=1)
    planner = _planner([("CMO-EAST", "CART-19", slot, 2), ("CMO-LEI", "CART-19", slot, 1)])
    options = planner.options(DE)
    assert [(o.apheresis_on, o.cmo) for o in options] == [(MONDAY, "CMO-LEI"), (MONDAY, "CMO-EAST")]
    assert options[0].apheresis_at.isoformat() == "2027-01-04T07:30:00+01:00" and options[0].at_site_on == date(
        2027, 1, 23
    )


def test_the_sites_calendar_notice_and_horizon_decide_which_days_are_offered():
    every_day = [("CMO-NJ", "CART-19", MONDAY + timedelta(days=i), 1) for i in range(-3, 120)]
    planner = _planner(every_day)
    days = [o.apheresis_on for o in planner.options(US)]
    assert days[0] == MONDAY  # Friday + 3 days' notice
    assert {d.strftime("%a") for d in days} == {"Mon", "Tue", "Wed", "Thu"}  # Boston collects Mon-Thu
    assert date(2027, 1, 18) not in days  # closed (Martin Luther King Jr. Day)
    assert days[-1] <= planner.today + timedelta(days=90)
    error = planner.why_not(US, date(2027, 1, 18))
    assert isinstance(error, slots.DateNotFeasible) and "site US-BOS-01 is closed (2027-01-18)" in error.message
    assert "does not collect on fri" in planner.why_not(US, date(2027, 1, 8)).message
    assert "outside the booking window" in planner.why_not(US, planner.today + timedelta(days=1)).message


def test_a_used_up_quota_closes_its_month_for_the_site_or_the_whole_market():
    every_day = [("CMO-NJ", "CART-19", MONDAY + timedelta(days=i), 1) for i in range(0, 70)]
    site_full = _planner(every_day, site_use={("US-BOS-01", "2027-01"): 8})
    months = {o.apheresis_on.month for o in site_full.options(US)}
    assert months == {2, 3}
    error = site_full.why_not(US, date(2027, 1, 5))
    assert isinstance(error, slots.QuotaExhausted)
    assert error.message == "site US-BOS-01 has used its quota of 8 bookings for 2027-01"
    market_full = _planner(every_day, market_use={("US", "2027-02"): 18})
    other_site = slots.OrderFacts("ORD-3", "CART-19", "US-HOU-02", "US", "CMO-NJ")
    assert {o.apheresis_on.month for o in market_full.options(other_site)} == {1, 3}
    assert (
        "market US has used its quota of 18 bookings for 2027-02"
        in market_full.why_not(other_site, date(2027, 2, 2)).message
    )
    left = _planner(every_day, site_use={("US-BOS-01", "2027-01"): 5}).options(US)[0]
    assert (left.site_quota_left, left.market_quota_left) == (3, 18)


def test_an_order_that_cannot_be_scheduled_says_why():
    planner = _planner([])
    with pytest.raises(slots.NotSchedulable, match="no therapy or site"):
        planner.options(slots.OrderFacts("ORD-9", None, "US-BOS-01", "US", "CMO-NJ"))
    with pytest.raises(slots.NotSchedulable, match="no lead times for therapy CART-X"):
        planner.options(slots.OrderFacts("ORD-9", "CART-X", "US-BOS-01", "US", "CMO-NJ"))
    with pytest.raises(slots.NotSchedulable, match="is collected: its apheresis is past scheduling"):
        planner.options(slots.OrderFacts("ORD-9", "CART-19", "US-BOS-01", "US", "CMO-NJ", status="collected"))
    with pytest.raises(slots.NotSchedulable, match="on hold"):
        planner.options(slots.OrderFacts("ORD-9", "CART-19", "US-BOS-01", "US", "CMO-NJ", on_hold=True))


@pytest.mark.parametrize(
    ("edit", "line", "says"),
    [
        (("    manufacturing: 10\n", "    manufacturing: 0\n", 1), 19, "lead_times.CART-19.manufacturing"),
        (("      weekdays: [mon, tue, wed]\n", "      weekdays: [mon, tuesday]\n", 1), 48, "US-HOU-02.weekdays"),
        (("      timezone: America/Chicago\n", "      timezone: Mars/Olympus\n", 1), 49, "unknown time zone"),
        (("min_notice_days: 3", "min_notice: 3", 1), 14, "min_notice"),
    ],
)
def test_config_errors_name_the_file_and_line(tmp_path, monkeypatch, edit, line, says):
    text = (PROJECT_ROOT / "config" / "scheduling.yaml").read_text()
    old, new, count = edit
    assert text.count(old) == count
    (tmp_path / "scheduling.yaml").write_text(text.replace(old, new))
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(tmp_path))
    with pytest.raises(slots.SchedulingConfigError) as error:
        slots.config()
    assert str(error.value).startswith(f"{tmp_path / 'scheduling.yaml'}:{line}:")
    assert says in str(error.value)


def test_slots_show_lists_the_options_of_an_order_from_the_synced_capacity(db_url):
    with session_scope(db_url) as s:
        order = ledger.append(s, enrolment(1)).order_id  # US-SITE-1: the default calendar, Mon-Thu
    today = date.today()
    first = today + timedelta(days=3)
    monday_to_thursday = [first + timedelta(days=i) for i in range(7) if (first + timedelta(days=i)).weekday() < 4]
    day = monday_to_thursday[0]
    with session_scope(db_url) as s:
        slots.store_capacity(
            s,
            [
                slots.Capacity("CMO-EAST", "CART-19", day + timedelta(days=2), 2, 1),
                slots.Capacity("CMO-NJ", "CART-19", day + timedelta(days=2), 1, 1),  # full
            ],
        )
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["slots", "show", order, "--json"])
    assert shown.exit_code == 0, shown.output
    options = json.loads(shown.output)
    assert [(o["apheresis_on"], o["cmo"], o["places_left"]) for o in options] == [(day.isoformat(), "CMO-EAST", 1)]
    table = runner.invoke(cli_app, ["slots", "show", order])
    assert table.exit_code == 0 and "CMO-EAST" in table.output and str(day + timedelta(days=2)) in table.output
    with session_scope(db_url) as s:
        slots.store_capacity(s, [slots.Capacity("CMO-EAST", "CART-19", day + timedelta(days=2), 2, 2)])
    none = runner.invoke(cli_app, ["slots", "show", order])
    refused = none.exception  # the CLI's main() prints it and exits with its code (2: nothing to offer)
    assert isinstance(refused, CliError) and refused.exit_code == 2 and "no feasible slot chain" in refused.message
