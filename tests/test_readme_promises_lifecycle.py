"""README, "The order life cycle": "A transition the machine forbids (e.g. collected after
manufacturing started, anything after infusion or cancellation) is kept in the ledger, not applied,
and raised as an alert."

test_ledger drives the first example through the ledger; test_lifecycle the cancellation case in the
pure fold only. Here the other two through the ledger every path appends with, on SQLite and
PostgreSQL: an event after infusion and one after cancellation are each kept as a ledger entry, the
order's status stays, and an `impossible_transition` alert opens naming the order.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from cgthub import alerts, ledger
from cgthub.model import EventType, SourceSystem
from cgthub.store import session_scope
from cgthub.tables import LedgerEntry, Order
from tests.factories import event, happy_path


def _infused() -> list:
    return happy_path(1)


def _cancelled() -> list:
    events = happy_path(1)[:3]
    return [*events, event(EventType.ORDER_CANCELLED, 1, at=events[-1].occurred_at + timedelta(hours=1))]


@pytest.mark.parametrize(("history", "status"), [(_infused, "infused"), (_cancelled, "cancelled")])
def test_an_event_after_the_end_is_kept_not_applied_and_alerted(db_url, history, status):
    events = history()
    late = event(
        EventType.QC_STARTED, 1, at=events[-1].occurred_at + timedelta(days=1), system=SourceSystem.CMO, eid="late"
    )
    with session_scope(db_url) as s:
        ledger.append_many(s, events)
        assert s.scalar(select(Order.status)) == status
        assert ledger.append(s, late).status == "appended"
    with session_scope(db_url) as s:
        order = s.scalars(select(Order)).one()
        assert order.status == status
        kept = s.scalar(select(LedgerEntry.id).where(LedgerEntry.source_event_id == late.source_event_id))
        assert kept is not None
        raised = [a for a in alerts.open_alerts(s) if a.kind == "impossible_transition"]
        assert [a.order_id for a in raised] == [order.id]
