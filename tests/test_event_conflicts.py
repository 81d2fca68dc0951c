"""A resend that is not the same: an event id the ledger holds, sent again with other content, is
never counted as a duplicate. It is quarantined at stage `conflict` (the differing field names, no
values), alerted, answered AE over MLLP, and an operator applies it as a correction or discards it.
A resend with the same content stays a plain duplicate. On SQLite and PostgreSQL, through the MLLP
listener, the CRM sync against its sandbox, the signed-decision CLI, and two racing writers."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cgthub import alerts, ledger, partner_sync, pipeline
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.mapping import registry
from cgthub.model import EventType, SourceSystem
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, Order, QuarantineEntry, RawMessage
from connectors.crm import sync as crm_sync
from tests.factories import T0, enrolment, event
from tests.test_connectors_crm import _conn, _record, _serve
from tests.test_decisions import PASSWORD, SIGN, _add_operator, _cli
from tests.test_hl7_listener import ORM, Running, exchange

BOOKED = b"APH^Apheresis collection^L|||20260309080000"
MOVED = ORM.replace(BOOKED, b"APH^Apheresis collection^L|||20260310080000")  # same MSH-10, another date
SAME_CONTENT = ORM.replace(b"PV1|1|O|CTU", b"PV1|1|O|CTV")  # other bytes, nothing the mapping reads
PHI = ("MRN48213377", "Smithson", "19710412")


def _enrol(url: str) -> None:
    with session_scope(url) as s:
        ledger.append(s, enrolment(1))


def _conflicts(s) -> list[QuarantineEntry]:
    return list(s.scalars(select(QuarantineEntry).where(QuarantineEntry.stage == "conflict")))


def _scheduled(s) -> str:
    return str(s.scalar(select(Order.projection))["scheduled"])


def _hl7_entries(s) -> list[str]:
    return list(
        s.scalars(
            select(LedgerEntry.source_event_id).where(LedgerEntry.source_system == "hl7").order_by(LedgerEntry.id)
        )
    )


@pytest.mark.parametrize("apply", [True, False], ids=["apply", "archive-only"])
def test_an_orm_resent_under_its_control_id_with_other_content_is_quarantined_alerted_and_answered_ae(db_url, apply):
    _enrol(db_url)
    with Running(db_url, apply=apply) as running:
        acks = [exchange(running.port, frame(m), 1)[0] for m in (ORM, MOVED, MOVED, SAME_CONTENT)]
    if not apply:
        partner_sync.apply_hl7_inbox(database_url=db_url)
    # Under --archive-only every archived message is answered AA; the inbox step quarantines it.
    assert [ack_code(a) for a in acks] == (["AA", "AE", "AE", "AA"] if apply else ["AA"] * 4)
    if apply:
        refused = acks[1].decode()
        assert "|205^" in refused and "scheduled_for" in refused and not any(p in refused for p in PHI)
    with session_scope(db_url) as s:
        (entry,) = _conflicts(s)
        assert "scheduled_for" in entry.reason and "the first version is applied" in entry.reason
        assert entry.details["fields"] == ["scheduled_for"]
        assert entry.occurrences == (2 if apply else 1)  # the exact resend of the moved ORM is counted again
        assert not any(p in entry.reason for p in PHI)
        (alert,) = s.scalars(select(Alert).where(Alert.kind == alerts.EVENT_CONFLICT)).all()
        assert "scheduled_for" in alert.message and f"quarantine #{entry.id}" in alert.message
        assert "BOS0000101" not in alert.message and not any(p in alert.message for p in PHI)
        assert alert.order_id == s.scalar(select(Order.id))
        assert _hl7_entries(s) == ["US-BOS-01|BOS0000101#order"]  # the first version stays applied, alone
        assert "2026-03-09" in _scheduled(s) and "2026-03-10" not in _scheduled(s)
        statuses = dict(s.execute(select(RawMessage.checksum, RawMessage.status)).all())
        assert sorted(statuses.values()) == ["processed", "processed", "quarantined"]  # 3 payloads kept


def _sign(url: str, action: str, entry_id: int, reason: str) -> str:
    signer = ["--signer", "coordinator"]
    run = _cli("quarantine", action, str(entry_id), "--reason", reason, *SIGN, *signer, url=url, password=PASSWORD)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_an_operator_applies_the_new_version_as_a_correction_and_it_is_then_a_duplicate(db_url):
    _enrol(db_url)
    with Running(db_url) as running:
        acks = [exchange(running.port, frame(m), 1)[0] for m in (ORM, MOVED)]
        assert [ack_code(a) for a in acks] == ["AA", "AE"]
        with session_scope(db_url) as s:
            (entry,) = _conflicts(s)
        _add_operator(db_url, "coordinator", "retry_quarantine", "discard_quarantine")
        out = _sign(db_url, "retry", entry.id, "CHANGE-CONFIRMED")
        assert '"result": "released"' in out
        # The hospital sends the moved order once more (other bytes, the same content): a duplicate now.
        again = exchange(running.port, frame(MOVED.replace(b"PV1|1|O|CTU", b"PV1|1|O|CTW")), 1)[0]
        assert ack_code(again) == "AA"
    with session_scope(db_url) as s:
        (entry,) = _conflicts(s)
        assert entry.status == "replayed" and entry.occurrences == 1
        assert _hl7_entries(s) == ["US-BOS-01|BOS0000101#order", f"US-BOS-01|BOS0000101#order@c{entry.id}"]
        correction = s.scalars(select(LedgerEntry).where(LedgerEntry.source_event_id.like("%@c%"))).one()
        assert '"supersedes":"US-BOS-01|BOS0000101#order"' in correction.body
        assert "2026-03-10" in _scheduled(s) and "2026-03-09" not in _scheduled(s)
        assert ledger.verify(s)[1] == []


def test_a_discarded_version_stays_discarded_when_it_comes_again(db_url):
    _enrol(db_url)
    with Running(db_url) as running:
        assert ack_code(exchange(running.port, frame(ORM), 1)[0]) == "AA"
        assert ack_code(exchange(running.port, frame(MOVED), 1)[0]) == "AE"
        with session_scope(db_url) as s:
            (entry,) = _conflicts(s)
        _add_operator(db_url, "coordinator", "discard_quarantine")
        assert '"result": "discarded"' in _sign(db_url, "discard", entry.id, "DUPLICATE-MESSAGE")
        again = exchange(running.port, frame(MOVED.replace(b"PV1|1|O|CTU", b"PV1|1|O|CTW")), 1)[0]
        assert ack_code(again) == "AA"
    with session_scope(db_url) as s:
        assert [(e.status, e.occurrences) for e in _conflicts(s)] == [("discarded", 1)]
        assert _hl7_entries(s) == ["US-BOS-01|BOS0000101#order"]
        assert "2026-03-09" in _scheduled(s)


def test_a_crm_record_changed_under_the_same_event_id_is_a_conflict_not_a_new_event(db_url, monkeypatch):
    """The CRM's enrolment event id is `enrol:<record id>`, with no modified stamp: a record whose
    enrolment fields change yields the same event id with other content. A change that makes a new
    event (an apheresis booking) goes through beside it."""
    registry.clear_cache()
    app, server = _serve()
    with server:
        _conn(monkeypatch, server)
        app.sandbox_state.upsert(_record(1))
        assert crm_sync.pull().appended == 1
        app.sandbox_state.upsert(_record(1, product="KYM-BCMA"))  # the therapy changed after enrolment
        changed = crm_sync.pull()
        assert (changed.appended, changed.quarantined) == (0, 1)
        booking = {"scheduledFor": "2026-03-09T08:00:00", "bookedAt": "2026-03-03T11:00:00"}
        app.sandbox_state.upsert(_record(1, product="KYM-BCMA", apheresis=booking))
        booked = crm_sync.pull()
        assert (booked.appended, booked.quarantined) == (1, 1)  # the booking; the changed enrolment again
        app.sandbox_state.upsert(_record(2))
        later = crm_sync.pull()  # record 2, and record 1 again (the read overlaps the watermark)
        assert (later.appended, later.quarantined) == (1, 1)
    with session_scope(db_url) as s:
        (entry,) = _conflicts(s)
        assert entry.details["fields"] == ["order.therapy"] and entry.system == "crm"
        assert entry.reason.startswith("event enrol:CRM-00001 was received before with different content")
        assert entry.occurrences == len(entry.details["raw_ids"]) == 3  # one entry for the version, 3 pages
        therapies = sorted(s.scalars(select(Order.therapy)))
        assert therapies == ["CART-19", "CART-19"]  # the first version is in force until someone decides
        assert [a.kind for a in alerts.open_alerts(s)] == [alerts.EVENT_CONFLICT]


def test_same_content_hub_events_and_other_mapping_versions_are_plain_duplicates(session):
    first = enrolment(1)
    assert ledger.append(session, first).status == "appended"
    resent = first.model_copy(
        update={"received_at": T0 + timedelta(days=3), "provenance": first.provenance.model_copy(update={"raw_id": 7})}
    )
    assert ledger.append(session, resent).status == "duplicate"  # arrival and provenance are not content
    hub = event(EventType.ORDER_ON_HOLD, 1, at=T0, system=SourceSystem.HUB, reason="a hub hold")
    assert ledger.append(session, hub).status == "appended"
    reworded = hub.model_copy(update={"reason": "the hub's hold, worked out again"})
    assert ledger.append(session, reworded).status == "duplicate"
    other_cmo = first.order.model_copy(update={"cmo": "CMO-OTHER"})
    remapped = first.model_copy(
        update={"order": other_cmo, "provenance": first.provenance.model_copy(update={"mapping_version": "99"})}
    )
    assert ledger.append(session, remapped).status == "duplicate"  # a mapping change: replay compares those
    refused = ledger.append(session, first.model_copy(update={"order": other_cmo}))
    assert refused.status == "quarantined" and refused.rejection == "conflict"
    assert "(fields: order.cmo)" in (refused.reason or "")
    assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 2


def test_two_versions_in_one_batch_the_first_is_applied_the_second_held(session):
    ledger.append(session, enrolment(1))
    base = event(EventType.APHERESIS_SCHEDULED, 1, at=T0, system=SourceSystem.HL7, scheduled_for=T0 + timedelta(days=7))
    moved = base.model_copy(update={"scheduled_for": T0 + timedelta(days=9)})
    outcomes = ledger.append_many(session, [base, base, moved])
    assert [o.status for o in outcomes] == ["appended", "duplicate", "quarantined"]
    assert [e.details["fields"] for e in _conflicts(session)] == [["scheduled_for"]]


def _ingest_hl7(url: str, payload: bytes, appended: threading.Event | None = None) -> dict:
    """`pipeline.ingest` as the listener's apply path runs it, in a transaction of its own. With
    `appended`, the transaction stays open (its rows written and locked, not committed) a while
    after saying so, so that the other writer runs into it."""
    mapper = registry.get_mapper("hl7", "ORM^O01")
    began = time.monotonic()
    with session_scope(url) as s:
        result = pipeline.ingest(
            s,
            system="hl7",
            kind="ORM^O01",
            channel="t",
            payload=payload,
            mapper=mapper,
            dedupe_key="US-BOS-01|BOS0000101",
        )
        if appended is not None:
            appended.set()
            time.sleep(0.5)
    return {"result": result, "took": time.monotonic() - began}


def test_two_writers_racing_other_content_under_one_control_id_end_applied_and_held_with_the_alert(db_url):
    """Each writer reads the ledger before the other commits: the loser must not count its other
    content as a duplicate (PostgreSQL: it waits on the order's lock, then meets the unique key and
    looks again; SQLite: its write transaction begins only once the first one commits)."""
    _enrol(db_url)
    registry.clear_cache()
    out: dict[str, dict] = {}
    appended = threading.Event()

    def second() -> None:
        assert appended.wait(30)
        out["second"] = _ingest_hl7(db_url, MOVED)

    racer = threading.Thread(target=second)
    racer.start()
    out["first"] = _ingest_hl7(db_url, ORM, appended)
    racer.join(60)
    a, b = out["first"]["result"], out["second"]["result"]
    assert (a.appended, a.quarantined) == (1, 0)
    assert (b.appended, b.duplicates, b.quarantined) == (0, 0, 1) and b.code == "conflict"
    assert out["second"]["took"] >= 0.3  # it ran into the first writer's open transaction and waited
    with session_scope(db_url) as s:
        (entry,) = _conflicts(s)
        assert entry.details["fields"] == ["scheduled_for"]
        assert [x.kind for x in alerts.open_alerts(s) if x.kind == alerts.EVENT_CONFLICT] == [alerts.EVENT_CONFLICT]
        assert _hl7_entries(s) == ["US-BOS-01|BOS0000101#order"]
        statuses = s.scalars(select(RawMessage.status).where(RawMessage.system == "hl7"))
        assert sorted(statuses) == ["processed", "quarantined"]
