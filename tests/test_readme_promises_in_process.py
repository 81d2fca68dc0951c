"""README, "Site qualification and scan verification", its last sentence: "In-process:
`cgthub.scan_verification.verify(session, Scan(...))` and `cgthub.qualification.check(site,
therapy, day)`", called exactly so, on SQLite and PostgreSQL: the scan of the order's own DIN
(as a scanner sends it, '=' and flags) matches, another patient's does not and holds the order; the
check answers for a lapsed qualification as the registry says.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

import cgthub.qualification
import cgthub.scan_verification
from cgthub import ledger
from cgthub.scan_verification import Scan, Step
from cgthub.store import session_scope
from cgthub.tables import Order
from tests.factories import din, happy_path


def test_verify_a_scan_in_process(db_url):
    with session_scope(db_url) as session:
        for n in (1, 2):
            ledger.append_many(session, happy_path(n)[:3])  # enrolled, scheduled, collected with DIN n
        order_id = session.scalar(select(Order.id).where(Order.coi_id.like("%01")))
        label = Scan(order_id=order_id, step=Step.APHERESIS_LABEL, scanned_by="readme", din="=" + din(1)[:13] + "00")
        right = cgthub.scan_verification.verify(session, label)
        wrong = cgthub.scan_verification.verify(
            session, Scan(order_id=order_id, step=Step.BEDSIDE, scanned_by="readme", din="=" + din(2)[:13] + "00")
        )
    assert right.match and right.checked == ["din"] and not right.on_hold
    assert not wrong.match and wrong.mismatched == ["din"] and wrong.on_hold and wrong.alert_id is not None


def test_check_a_qualification_in_process():
    lapsed = cgthub.qualification.check("US-NYC-04", "CART-19", date(2026, 9, 1))
    assert not lapsed.qualified and "ended 2026-06-30" in lapsed.reason
    assert cgthub.qualification.check("US-BOS-01", "CART-19", date(2026, 3, 2)).qualified
