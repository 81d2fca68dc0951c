"""A hospital booking that waits for its order (stage correlate) is judged when it is released.

README, "Site qualification": a hospital booking of apheresis from a site not qualified for the
order's therapy on the day it happened is refused. A booking that arrives before its order's
enrolment cannot be judged for that order's therapy yet: the sender's sites qualified for some
therapy that day pass it, and it waits at stage correlate. Before 6 December the enrolment that
registered its order's keys released it straight into the ledger (`ledger._release_waiting`), so a
booking made the day after the site's CART-19 qualification ended scheduled apheresis. Now it is
judged against the order it is released onto, on the day it was made: refused at stage `qualify`
with the reason and critical alert an arriving one gets, and `cgthub sites replay` applies it once
the registry is fixed. Driven as a deployment runs it: the booking over the MLLP listener, the
enrolment pulled from the CRM sandbox over HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import qualification
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, QuarantineEntry
from tests.test_hl7_listener import Running, exchange
from tests.test_qualification import _edit
from tests.test_readme_promises_qualify_hl7 import BOOKING
from tests.test_residency_live import _crm_record, _enrol_through_crm, _orders
from tests.test_shared_lookups import _statements
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)

CART19 = '- {therapy: CART-19, from: 2026-01-01, basis: "test site: training'
ENDED = '- {therapy: CART-19, from: 2026-01-01, until: 2026-03-02, basis: "test site: training'


def _entries(url: str) -> list[QuarantineEntry]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(QuarantineEntry).order_by(QuarantineEntry.id)))
        s.expunge_all()
    return rows


def _alerts(url: str) -> list[Alert]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(Alert).where(Alert.kind == qualification.ALERT_KIND)))
        s.expunge_all()
    return rows


def _book_then_enrol(url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """The booking (2026-03-03) over MLLP before CRM-00003 is enrolled (2026-03-02): AE, it waits."""
    with Running(url) as running:
        (ack,) = exchange(running.port, frame(BOOKING), 1)
    assert ack_code(ack) == "AE" and b"replayed automatically once the order is enrolled" in ack, ack
    (waiting,) = _entries(url)
    assert (waiting.stage, waiting.status) == ("correlate", "open")
    assert waiting.raw_id is not None
    _enrol_through_crm(url, monkeypatch, [_crm_record(3, "US-SITE-1", "US", "021zx")])
    return waiting.raw_id


def test_an_early_booking_from_a_site_not_qualified_that_day_is_refused_when_its_order_is_enrolled(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    _edit(config_dir, CART19, ENDED, version=1)  # US-SITE-1: CART-19 until 2026-03-02, CART-BCMA on
    raw_id = _book_then_enrol(db_url, monkeypatch)

    order = _orders(db_url)["CRM-00003"]
    assert order.status == "enrolled"  # not apheresis_scheduled
    waited, refused = _entries(db_url)
    assert (waited.stage, waited.status) == ("correlate", "replayed")
    assert (refused.stage, refused.status, refused.raw_id) == ("qualify", "open", raw_id)
    assert refused.system == "hl7" and refused.kind == "SIU^S12" and refused.subject == ""
    assert refused.reason.startswith(
        "hospital order refused: site US-SITE-1 is not qualified for CART-19 on 2026-03-03: "
        "its qualification ended 2026-03-02"
    )
    assert "Doe" not in refused.reason and "MRN" not in refused.reason
    (alert,) = _alerts(db_url)
    assert (alert.severity, alert.status, alert.order_id) == ("critical", "open", order.id)
    assert alert.details["raw_id"] == raw_id and alert.details["therapy"] == "CART-19"
    with session_scope(db_url) as s:
        assert s.scalars(select(LedgerEntry.id).where(LedgerEntry.raw_id == raw_id)).all() == []

    # Replayable like an arriving refusal: refused again while the registry stands, applied once fixed.
    again = CliRunner().invoke(cli, ["sites", "replay"], catch_exceptions=False)
    assert again.exit_code == 0 and "0 payload(s) routed and applied, 1 still waiting" in again.output
    assert [(e.stage, e.status) for e in _entries(db_url)] == [("correlate", "replayed"), ("qualify", "open")]
    _edit(config_dir, "until: 2026-03-02", "until: 2026-12-31", version=2)
    fixed = CliRunner().invoke(cli, ["sites", "replay"], catch_exceptions=False)
    assert fixed.exit_code == 0 and "1 payload(s) routed and applied, 0 still waiting" in fixed.output
    assert _orders(db_url)["CRM-00003"].status == "apheresis_scheduled"
    assert [a.status for a in _alerts(db_url)] == ["closed"]
    assert [e.status for e in _entries(db_url)] == ["replayed", "replayed"]


def test_an_early_booking_from_a_qualified_site_is_applied_when_its_order_is_enrolled(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    raw_id = _book_then_enrol(db_url, monkeypatch)
    assert _orders(db_url)["CRM-00003"].status == "apheresis_scheduled"
    (waited,) = _entries(db_url)
    assert (waited.stage, waited.status) == ("correlate", "replayed")
    assert _alerts(db_url) == []
    with session_scope(db_url) as s:
        assert len(s.scalars(select(LedgerEntry.id).where(LedgerEntry.raw_id == raw_id)).all()) == 1


def test_the_bookings_a_release_lets_go_are_judged_together(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    """Two early bookings released by one enrolment: one read of the orders' sites and therapies for
    both (one lookup per table for the release, not per event), each refused on its own."""
    _edit(config_dir, CART19, ENDED, version=1)
    second = BOOKING.replace(b"QB3", b"QB3B").replace(b"APT-3", b"APT-3B").replace(b"PL-3", b"PL-3B")
    with Running(db_url) as running:
        acks = [exchange(running.port, frame(m), 1)[0] for m in (BOOKING, second)]
    assert [ack_code(a) for a in acks] == ["AE", "AE"]
    with _statements() as statements:
        _enrol_through_crm(db_url, monkeypatch, [_crm_record(3, "US-SITE-1", "US", "021zx")])
    facts = [s for s in statements if s.startswith("SELECT orders.id, orders.site, orders.therapy FROM orders")]
    assert len(facts) == 1, facts
    assert _orders(db_url)["CRM-00003"].status == "enrolled"
    assert [(e.stage, e.status) for e in _entries(db_url)] == [
        ("correlate", "replayed"),
        ("correlate", "replayed"),
        ("qualify", "open"),
        ("qualify", "open"),
    ]
    assert len(_alerts(db_url)) == 2
