"""A hospital event is judged by the order the ledger will apply it to (6 December): qualification
finds it as correlation does (`correlation.order_named`: its references and hub order id, else its
identity keys), for a whole batch in one lookup of the order keys and one of the orders. A booking
whose placer the hub never recorded, but whose COI id names an order, is judged for that order's
site and therapy; a booking no order matches yet is judged by the sender's sites (qualified for some
therapy that day), as README's "no order yet (correlate)" says, and waits at stage correlate."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from cgthub import ledger, qualification, sites
from cgthub.bulk import rows_by_pairs
from cgthub.correlation import correlate
from cgthub.errors import Rejection
from cgthub.model import CanonicalEvent, EventType, ExternalRefs, PatientRef, SourceSystem
from cgthub.store import session_scope
from tests.factories import T0, coi, enrolment, event
from tests.test_qualification import _edit
from tests.test_shared_lookups import _statements
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)

DAY_AFTER = T0 + timedelta(days=1)  # 2026-03-03: US-SITE-1's CART-19 qualification ended the day before


def _registry(config: Path) -> sites.SiteRegistry:
    _edit(
        config,
        '- {therapy: CART-19, from: 2026-01-01, basis: "test site: training',
        '- {therapy: CART-19, from: 2026-01-01, until: 2026-03-02, basis: "test site: training',
        version=1,
    )
    return sites.registry()


def _enrol(url: str) -> dict[int, str]:
    """Order 3 (CART-19, qualification ended) and order 4 (CART-BCMA, still qualified), both at US-SITE-1."""
    bcma = enrolment(4)
    assert bcma.order is not None
    bcma = bcma.model_copy(update={"order": bcma.order.model_copy(update={"therapy": "CART-BCMA"})})
    with session_scope(url) as s:
        return {3: ledger.append(s, enrolment(3)).order_id, 4: ledger.append(s, bcma).order_id}


def _booking(name: str, refs: ExternalRefs, coi_id: str | None = None, order_id: str | None = None) -> CanonicalEvent:
    booked = event(
        EventType.APHERESIS_SCHEDULED,
        3,
        at=DAY_AFTER,
        system=SourceSystem.HL7,
        eid=f"booking:{name}",
        scheduled_for=DAY_AFTER + timedelta(days=6),
        patient=PatientRef(coi_id=coi_id) if coi_id else None,
    )
    return booked.model_copy(update={"refs": refs, "order_id": order_id})


# (what the booking carries, the order it is judged by, the therapy it is judged for, qualified?)
CASES = {
    "placer never seen, COI id of order 3": (ExternalRefs(hospital_placer_order="PL-NEW"), coi(3), None, 3),
    "CRM id of order 3, no COI id": (ExternalRefs(crm_order_id="CRM-00003"), None, None, 3),
    "hub order id of order 3": (ExternalRefs(), None, 3, 3),
    "COI id of order 4 (CART-BCMA)": (ExternalRefs(hospital_placer_order="PL-NEW"), coi(4), None, 4),
    # references win over identity keys, as in correlation (which then holds the COI contradiction)
    "CRM id of order 3, COI id of order 4": (ExternalRefs(crm_order_id="CRM-00003"), coi(4), None, 3),
    "no order yet": (ExternalRefs(hospital_placer_order="PL-9"), coi(9), None, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_booking_is_judged_by_the_order_correlation_takes_it_to(
    db_url,
    config_dir: Path,  # noqa: F811
    name: str,
):
    registry = _registry(config_dir)
    orders = _enrol(db_url)
    refs, coi_id, by_id, expected = CASES[name]
    booking = _booking(name, refs, coi_id, orders[by_id] if by_id else None)
    with session_scope(db_url) as s:
        (judged,) = qualification.judge_events(s, registry, [booking], sender_sites=["US-SITE-1"])
        found = correlate(s, booking)
    assert judged.order_id == (orders[expected] if expected else None)
    assert judged.order_id == found.order_id  # the order the ledger would take it to
    if expected == 3:
        assert (judged.verdict.therapy, judged.verdict.qualified) == ("CART-19", False)
        assert judged.verdict.reason.startswith("site US-SITE-1 is not qualified for CART-19 on 2026-03-03")
    elif expected == 4:
        assert (judged.verdict.therapy, judged.verdict.qualified) == ("CART-BCMA", True)
    else:  # no order: the sender's sites, qualified for some therapy that day (CART-BCMA)
        assert (judged.verdict.therapy, judged.verdict.qualified, judged.verdict.day) == (None, True, date(2026, 3, 3))
        with session_scope(db_url) as s:
            outcome = ledger.append(s, booking)
        assert outcome.status == "quarantined" and outcome.rejection is Rejection.CORRELATE


def test_a_booking_no_order_matches_from_a_sender_qualified_for_nothing_that_day_is_refused(
    db_url,
    config_dir: Path,  # noqa: F811
):
    registry = _registry(config_dir)
    _enrol(db_url)
    early = _booking("early", ExternalRefs(hospital_placer_order="PL-9"), coi(9))
    early = early.model_copy(update={"occurred_at": T0 - timedelta(days=400)})  # 2024: before any qualification
    with session_scope(db_url) as s:
        (judged,) = qualification.judge_events(s, registry, [early], sender_sites=["US-SITE-1"])
    assert judged.order_id is None and not judged.verdict.qualified
    assert judged.verdict.reason.startswith("site US-SITE-1 is not qualified for any therapy on 2025-01-26")


def test_a_batch_is_judged_with_one_lookup_of_order_keys_and_one_of_orders(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    """Each payload's events are judged by their own order (refused for order 3's CART-19, passed for
    order 4's CART-BCMA), the keys of all of them read together."""
    registry = _registry(config_dir)
    orders = _enrol(db_url)
    payloads = [
        ([_booking(name, refs, coi_id, orders[by_id] if by_id else None)], ["US-SITE-1"])
        for name, (refs, coi_id, by_id, _expected) in CASES.items()
    ]
    key_lookups: list[set[tuple[str, str | int]]] = []

    def spy(session, table, wanted, first, second, pairs, *rest):  # type: ignore[no-untyped-def]
        pairs = list(pairs)
        if table.name == "order_keys":
            key_lookups.append(set(pairs))
        return rows_by_pairs(session, table, wanted, first, second, pairs, *rest)

    monkeypatch.setattr(qualification, "rows_by_pairs", spy)
    with session_scope(db_url) as s, _statements() as statements:
        verdicts = qualification.judge_batch(s, registry, payloads)
    assert [one[0].order_id for one in verdicts] == [
        orders[expected] if expected else None for _r, _c, _b, expected in CASES.values()
    ]
    assert [one[0].verdict.qualified for one in verdicts] == [False, False, False, True, False, True]
    (asked,) = key_lookups  # placers, CRM ids and COI ids in one lookup
    assert {("coi_id", coi(3)), ("coi_id", coi(4)), ("crm_order_id", "CRM-00003")} <= asked
    facts = [s for s in statements if s.startswith("SELECT orders.id, orders.site, orders.therapy FROM orders")]
    assert len(facts) == 1, statements


@pytest.mark.parametrize("first_day", [T0, DAY_AFTER], ids=["order passes", "order refused"])
def test_a_booking_naming_a_placer_first_sent_earlier_in_its_batch_is_judged_by_that_order(
    db_url,
    config_dir: Path,  # noqa: F811
    first_day,
):
    """The hospital orders with a new placer and the COI id (on the last day of the qualification, or
    the day after), then books by the placer alone, in one batch: the ledger takes the booking to the
    order the placer was registered to when the order message passed, and to none when it was refused."""
    registry = _registry(config_dir)
    orders = _enrol(db_url)
    ordered = _booking("order", ExternalRefs(hospital_placer_order="PL-NEW"), coi(3))
    ordered = ordered.model_copy(update={"occurred_at": first_day})
    booked = _booking("by placer", ExternalRefs(hospital_placer_order="PL-NEW"))
    with session_scope(db_url) as s:
        (first,), (second,) = qualification.judge_batch(
            s, registry, [([ordered], ["US-SITE-1"]), ([booked], ["US-SITE-1"])]
        )
    assert first.order_id == orders[3] and first.verdict.qualified is (first_day == T0)
    with session_scope(db_url) as s:
        if first.verdict.qualified:
            ledger.append(s, ordered)
        assert second.order_id == correlate(s, booked).order_id
    if first.verdict.qualified:  # its order's CART-19, ended the day before
        assert (second.order_id, second.verdict.therapy, second.verdict.qualified) == (orders[3], "CART-19", False)
    else:  # no order yet: the sender's sites, qualified for CART-BCMA; it waits at correlate
        assert (second.order_id, second.verdict.therapy, second.verdict.qualified) == (None, None, True)


def test_a_booking_for_another_sites_order_is_judged_by_the_senders_own_sites(
    db_url,
    config_dir: Path,  # noqa: F811
):
    """US-HOU-02's engine books by order 3's COI id (US-SITE-1's order): the ledger refuses the sender
    that order (correlation's ScopeConflict), so the judge does not answer with US-SITE-1's
    qualification; US-HOU-02 is judged, qualified that day."""
    registry = _registry(config_dir)
    _enrol(db_url)
    booking = _booking("other site", ExternalRefs(hospital_placer_order="PL-HOU"), coi(3))
    with session_scope(db_url) as s:
        (judged,) = qualification.judge_events(s, registry, [booking], sender_sites=["US-HOU-02"])
    assert (judged.order_id, judged.verdict.site, judged.verdict.qualified) == (None, "US-HOU-02", True)
    assert "US-SITE-1" not in judged.verdict.reason
