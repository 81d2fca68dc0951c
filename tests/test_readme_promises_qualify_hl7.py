"""README, "Site qualification": "An enrolment, or a hospital order or booking of apheresis or
infusion (judged for the site and therapy of the order it names), from a site not qualified for
that therapy on the day it happened is refused where live ingest routes it by site".

test_qualification drives an enrolment (the CRM over HTTP) and a hospital order of apheresis (ORM
over MLLP). Here the other two, over the MLLP listener as `cgthub hl7 listen` runs it, on SQLite
and PostgreSQL: a booking of apheresis (SIU^S12) and an order of infusion (ORM, OBR-4 INF), each
naming an order whose site's qualification ended the day before; each answered AE 103,
quarantined at stage `qualify`, and the order left as it was.

Before 6 December the booking was not refused: cgthub.qualification judged a hospital event by the
order its references (placer, CRM id) name, and a booking whose placer the hub had not seen (a new
appointment, or one whose order message was itself refused at qualify, so its placer was never
recorded) fell back to "the sender's sites qualified for some therapy that day", while the ledger
then found the order by its COI id and applied the booking to it. The judge now finds the order as
correlation does (`correlation.order_named`: references, else identity keys).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry
from tests.test_hl7_listener import Running, exchange
from tests.test_qualification import enrol_where_qualification_ends
from tests.test_residency_live import _orders, _orm
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)

COI = "CHW123426000003"
BOOKING = (
    "MSH|^~\\&|EPIC|US-SITE-1|CGTHUB|HUB|20260303113000||SIU^S12^SIU_S12|QB3|P|2.5.1\r"
    "SCH|APT-3|||||^Apheresis|||||||||||||||||||BOOKED|PL-3\r"
    f"PID|1||MRN00000003^^^US-SITE-1^MR~{COI}^^^COI^PN||Doe^Jane||19710412|F\r"
    "RGS|1\r"
    "AIS|1||APH^Apheresis collection|20260309080000\r"
    "AIL|1||APH-ROOM-2^^^US-SITE-1\r"
).encode()
INFUSION = (
    "MSH|^~\\&|EPIC|US-SITE-1|CGTHUB|HUB|20260303112000||ORM^O01^ORM_O01|QI3|P|2.5.1\r"
    f"PID|1||MRN00000003^^^US-SITE-1^MR~{COI}^^^COI^PN||Doe^Jane||19710412|F\r"
    "ORC|NW|PL-3I|FL-3I|CRM-00003|SC||||20260303112000\r"
    "OBR|1|PL-3I|FL-3I|INF^Infusion^L|||20260409080000\r"
).encode()


def _refused_at_qualify(db_url: str, ack: bytes, stages: list[str]) -> None:
    assert ack_code(ack) == "AE" and b"103^Table value not found" in ack, ack
    assert b"not qualified for CART-19 on 2026-03-03" in ack and b"Doe" not in ack
    with session_scope(db_url) as s:
        assert list(s.scalars(select(QuarantineEntry.stage))) == stages
    assert _orders(db_url)["CRM-00003"].status == "enrolled"


@pytest.mark.parametrize(
    "message",
    [INFUSION, BOOKING],
    ids=["order of infusion", "booking of apheresis"],
)
def test_a_hospital_booking_or_infusion_order_from_a_site_no_longer_qualified_is_refused(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
    message: bytes,
):
    enrol_where_qualification_ends(db_url, monkeypatch, config_dir)
    with Running(db_url) as running:
        (ack,) = exchange(running.port, frame(message), 1)
    _refused_at_qualify(db_url, ack, ["qualify"])


def test_a_booking_after_its_refused_order_is_refused_too(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    """The hospital orders apheresis (refused at qualify), then books it: the booking names the same
    placer order and must not schedule what the order message could not."""
    enrol_where_qualification_ends(db_url, monkeypatch, config_dir)
    ordered = _orm(3, "US-SITE-1", crm="CRM-00003", placer="PL-3", control="Q3")
    with Running(db_url) as running:
        (refused,) = exchange(running.port, frame(ordered), 1)
        (booked,) = exchange(running.port, frame(BOOKING), 1)
    assert ack_code(refused) == "AE"
    _refused_at_qualify(db_url, booked, ["qualify", "qualify"])
