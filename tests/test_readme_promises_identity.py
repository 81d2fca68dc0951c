"""README, "Chain of identity and custody": "An event whose DIN or lot belongs to another patient's
order, or whose COI id contradicts its order's, is quarantined at stage `identity`; the orders
involved go on hold (a hub event in their ledger) and a critical `coi_discrepancy` alert opens."

test_ledger proved the DIN case without the alert's severity or the hub event; the lot case and
the COI case's hold and alert were not tested. Here, on SQLite and PostgreSQL: the lot case through
the ledger every path appends with, the COI case over the MLLP listener as `cgthub hl7 listen` runs it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cgthub import alerts, ledger, quarantine
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.model import EventType, Material, SourceSystem
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests.factories import T0, coi, enrolment, event, happy_path
from tests.test_hl7_listener import ORM, Running, exchange


def _held_by_the_hub(url: str) -> dict[str, tuple[bool, list[str]]]:
    """Each order's hold and the hub's own ledger entries, by CRM order id."""
    with session_scope(url) as s:
        held = {}
        for order in s.scalars(select(Order)):
            hub = s.scalars(
                select(LedgerEntry.source_event_id).where(
                    LedgerEntry.order_id == order.id, LedgerEntry.source_system == SourceSystem.HUB.value
                )
            ).all()
            held[order.coi_id] = (order.status == "on_hold", list(hub))
        return held


def _critical_coi_alerts(url: str) -> list[str]:
    with session_scope(url) as s:
        return sorted(
            a.order_id for a in alerts.open_alerts(s) if a.kind == "coi_discrepancy" and a.severity == "critical"
        )


def test_a_lot_of_another_patients_order_is_quarantined_at_identity_both_orders_held_and_alerted(db_url):
    with session_scope(db_url) as s:
        for n in (1, 2):
            events = happy_path(n)
            qc = next(i for i, e in enumerate(events) if e.event_type == EventType.QC_STARTED)
            ledger.append_many(s, events[: qc + 1])  # lot n registered to order n
        wrong = event(
            EventType.PRODUCT_RELEASED,
            1,
            at=T0 + timedelta(days=30),
            system=SourceSystem.CMO,
            material=Material(lot="LOT-00002"),
        )
        result = ledger.append(s, wrong)
        assert result.status == "quarantined"
        entry = quarantine.get(s, result.quarantine_id)
        assert entry.stage == "identity" and "lot" in entry.reason, entry.reason
        order_ids = sorted(o.id for o in s.scalars(select(Order)))
    held = _held_by_the_hub(db_url)
    assert all(on_hold and any(e.startswith("coi-hold:") for e in hub) for on_hold, hub in held.values()), held
    assert _critical_coi_alerts(db_url) == order_ids


def test_a_hospital_message_whose_coi_contradicts_its_order_holds_it_with_a_critical_alert(db_url):
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
        ledger.append(s, enrolment(2))
        mine = s.scalar(select(Order.id).where(Order.coi_id == coi(1)))
    crossed = ORM.replace(coi(1).encode(), coi(2).encode())  # order 1's placer, patient 2's COI id
    assert crossed != ORM
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(crossed), 1)
    assert ack_code(ack) == "AE"
    with session_scope(db_url) as s:
        assert [e.stage for e in quarantine.list_entries(s)] == ["identity"]
    held = _held_by_the_hub(db_url)
    on_hold, hub = held[coi(1)]
    assert on_hold and any(e.startswith("coi-hold:") for e in hub), held
    assert mine in _critical_coi_alerts(db_url)
