"""The custody ledger: idempotent appends, per-order hash chains, COI checks, waiting events."""

import json
import os
import subprocess
import sys
import typing
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy import select, update

from cgthub import alerts, ledger, quarantine
from cgthub.jsontext import canonical_json
from cgthub.model import (
    CanonicalEvent,
    EventType,
    ExternalRefs,
    Material,
    Shipment,
    SourceSystem,
    TemperatureSummary,
)
from cgthub.tables import LedgerEntry, Order
from tests.factories import T0, din, enrolment, event, happy_path

D = timedelta(days=1)


def _cli(*args, url):
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env)


def test_full_life_cycle_lands_in_order_and_chain_verifies(session):
    results = [ledger.append(session, e) for e in happy_path(1)]
    assert {r.status for r in results} == {"appended"}
    order = session.get(Order, results[0].order_id)
    assert order.status == "infused" and order.ledger_length == 13
    assert ledger.verify(session) == (1, [])


def test_duplicate_returns_the_existing_entry(session):
    first = ledger.append(session, enrolment(1))
    again = ledger.append(session, enrolment(1))
    assert again.status == "duplicate" and again.seq == first.seq == 1 and again.order_id == first.order_id
    assert again.entry_id == session.scalar(select(LedgerEntry.id))
    assert session.scalar(select(Order.ledger_length)) == 1


def test_a_refresh_rewrites_an_indexed_column_only_when_it_changes(tmp_path):
    """An UPDATE naming market or site rewrites their index entries even when the value stays."""
    from cgthub import store
    from cgthub.model import OrderDetails

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    store.upgrade(url)
    with store.session_scope(url) as session:
        ledger.append_many(session, [enrolment(1)])
    moved = OrderDetails(therapy="CART-19", market="US", site="US-BOS-01", cmo="CMO-EAST")
    later = [
        event(EventType.APHERESIS_SCHEDULED, 1, at=T0 + D, scheduled_for=T0 + 7 * D),  # status changes
        event(EventType.APHERESIS_SCHEDULED, 1, at=T0 + 2 * D, eid="moved", scheduled_for=T0 + 8 * D, order=moved),
    ]
    updates = []
    for new in later:
        statements: list[str] = []
        with store.session_scope(url) as session:
            driver = session.connection().connection.driver_connection
            driver.set_trace_callback(statements.append)
            ledger.append_many(session, [new])
            driver.set_trace_callback(None)
        updates.append([s for s in statements if s.startswith("UPDATE orders")])
        with store.session_scope(url, readonly=True) as session:
            order = session.scalars(select(Order)).one()
            stored = order.projection
            assert (order.status, order.market, order.site) == (stored["status"], stored["market"], stored["site"])
    assert len(updates[0]) == 1 and "status=" in updates[0][0]
    assert "market=" not in updates[0][0] and "site=" not in updates[0][0]
    assert len(updates[1]) == 1 and "site='US-BOS-01'" in updates[1][0] and "market=" not in updates[1][0]
    assert "status=" not in updates[1][0]  # rescheduled: still apheresis_scheduled


def test_batch_append_equals_one_by_one(db_url):
    from cgthub.store import session_scope

    events = happy_path(1) + happy_path(2)
    shuffled = events[::-1] + events[:3]
    with session_scope(db_url) as s:
        results = ledger.append_many(s, shuffled)
    # Reversed, every event but the enrolments arrives before its order: those wait in quarantine
    # and go through once the batch has enrolled their order; the repeated tail finds patient 1
    # enrolled by then, so only its enrolment is a duplicate at that point.
    assert [r.status for r in results].count("duplicate") == 1
    with session_scope(db_url) as s:
        assert quarantine.list_entries(s) == []
        assert len(quarantine.list_entries(s, status=quarantine.QuarantineStatus.REPLAYED)) == 24
    with session_scope(db_url) as s:
        orders = s.scalars(select(Order).order_by(Order.coi_id)).all()
        assert [o.status for o in orders] == ["infused", "infused"]
        assert all(o.projection["event_count"] == 13 for o in orders)
        assert ledger.verify(s) == (2, [])


def test_event_before_its_order_waits_in_quarantine_then_goes_through(session):
    collected = happy_path(1)[2]
    waiting = ledger.append(session, collected)
    assert waiting.status == "quarantined" and "no order matches" in waiting.reason
    ledger.append(session, enrolment(1))
    order = session.scalars(select(Order)).one()
    assert order.status == "collected"
    entry = quarantine.get(session, waiting.quarantine_id)
    assert entry.status == "replayed" and order.id in entry.resolution


def test_din_of_another_patients_order_is_quarantined_and_orders_held(session):
    for n in (1, 2):
        for e in happy_path(n)[:3]:  # enrolled, scheduled, collected with DIN n
            ledger.append(session, e)
    # The CMO reports receipt for patient 1's order but scans patient 2's DIN.
    wrong = event(
        EventType.MATERIAL_RECEIVED_AT_CMO, 1, at=T0 + 8 * D, system=SourceSystem.CMO, material=Material(din=din(2))
    )
    result = ledger.append(session, wrong)
    assert result.status == "quarantined" and "chain-of-identity" in result.reason
    assert session.scalar(select(LedgerEntry).where(LedgerEntry.source_event_id == wrong.source_event_id)) is None
    held = {o.coi_id: o for o in session.scalars(select(Order))}
    assert all(o.status == "on_hold" for o in held.values())
    open_alerts = alerts.open_alerts(session)
    assert {a.kind for a in open_alerts} == {"coi_discrepancy"} and len(open_alerts) == 2
    entry = quarantine.get(session, result.quarantine_id)
    assert entry.stage == "identity" and din(2) in entry.reason
    assert ledger.verify(session) == (2, [])


def test_conflicting_coi_id_on_the_same_order_is_caught(session):
    ledger.append(session, enrolment(1))
    impostor = enrolment(9).model_copy(update={"refs": ExternalRefs(crm_order_id="CRM-00001"), "source_event_id": "x"})
    result = ledger.append(session, impostor)
    assert result.status == "quarantined" and "coi_id" in result.reason


def test_impossible_transition_is_kept_flagged_and_alerted(session):
    for e in happy_path(1)[:7]:
        ledger.append(session, e)
    late = event(EventType.APHERESIS_COLLECTED, 1, at=T0 + 10 * D, system=SourceSystem.HL7, eid="again")
    assert ledger.append(session, late).status == "appended"
    order = session.scalars(select(Order)).one()
    assert order.status == "manufacturing"
    assert [a.kind for a in alerts.open_alerts(session)] == ["impossible_transition"]


def _tamper_edit(s):
    s.execute(update(LedgerEntry).where(LedgerEntry.seq == 3).values(body=LedgerEntry.body + " "))


def _tamper_delete_middle(s):
    s.execute(LedgerEntry.__table__.delete().where(LedgerEntry.seq == 4))


def _tamper_delete_last(s):
    s.execute(LedgerEntry.__table__.delete().where(LedgerEntry.seq == 13))


def _tamper_reorder(s):
    s.execute(update(LedgerEntry).where(LedgerEntry.seq == 5).values(seq=-5))
    s.execute(update(LedgerEntry).where(LedgerEntry.seq == 6).values(seq=5))
    s.execute(update(LedgerEntry).where(LedgerEntry.seq == -5).values(seq=6))


def _tamper_column(s):
    s.execute(update(LedgerEntry).where(LedgerEntry.seq == 2).values(event_type="order.cancelled"))


@pytest.mark.parametrize(
    "tamper", [_tamper_edit, _tamper_delete_middle, _tamper_delete_last, _tamper_reorder, _tamper_column]
)
def test_cli_verify_catches_tampering_and_names_order_and_entry(db_url, tamper):
    from cgthub.store import session_scope

    with session_scope(db_url) as s:
        ledger.append_many(s, happy_path(1) + happy_path(2))
    ok = _cli("ledger", "verify", url=db_url)
    assert ok.returncode == 0, ok.stderr
    assert "2 orders" in ok.stdout
    with session_scope(db_url) as s:
        target = s.scalar(select(Order.id).where(Order.coi_id == "CHW123426000001"))
        tamper(_Scoped(s, LedgerEntry.order_id == target))
    bad = _cli("ledger", "verify", url=db_url)
    assert bad.returncode == 1
    assert target in bad.stdout and "TAMPERED" in bad.stdout
    assert "1 of 2 orders" in bad.stderr


class _Scoped:
    """Runs the tamper statements against one order's rows only."""

    def __init__(self, session, where):
        self.session, self.where = session, where

    def execute(self, stmt):
        return self.session.execute(stmt.where(self.where))


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),  # NaN, infinities, exponents, -0.0
        st.text(alphabet=st.characters(codec=None), max_size=12),  # control characters, U+2028, surrogates
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=1500, deadline=None)
@given(JSON_VALUES)
def test_canonical_json_is_the_standard_library_text_whoever_writes_it(value):
    """Every ledger hash is over this text: orjson writing it must not change one byte."""
    assert ledger.canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    "number",
    [1e-4, 9.999999999999999e-05, 1e-05, 1e16, 9999999999999998.0, 1e15, 0.1 + 0.2, 5e-324, -0.0, -150.0, 2**63, 2**64],
)
def test_canonical_json_writes_numbers_at_the_exponent_boundaries_as_the_standard_library(number):
    value = {"attributes": {"x": number, "y": [number, -number]}}
    assert ledger.canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_an_enrolment_reads_only_the_events_waiting_on_its_keys(session):
    from sqlalchemy import event as orm_event

    from cgthub.tables import QuarantineEntry, WaitingKey

    for n in range(2, 42):  # forty early events of orders nobody has enrolled yet
        assert ledger.append(session, happy_path(n)[2]).status == "quarantined"
    mine = ledger.append(session, happy_path(1)[2])
    loaded: list[int] = []

    def count(entry: QuarantineEntry, _context: object) -> None:
        loaded.append(entry.id)

    session.expunge_all()  # entries read from the database again, not found in the identity map
    orm_event.listen(QuarantineEntry, "load", count)
    try:
        ledger.append(session, enrolment(1))
    finally:
        orm_event.remove(QuarantineEntry, "load", count)
    assert loaded == [mine.quarantine_id]  # not the forty others
    assert quarantine.get(session, mine.quarantine_id).status == "replayed"
    still = quarantine.list_entries(session, stage=quarantine.Stage.CORRELATE)
    assert len(still) == 40 and {e.occurrences for e in still} == {1}
    # The released entry no longer waits on anything; the others still do.
    waiting_ids = set(session.scalars(select(WaitingKey.quarantine_id)))
    assert mine.quarantine_id not in waiting_ids and waiting_ids == {e.id for e in still}
    ledger.append(session, enrolment(7))
    assert quarantine.get(session, still[5].id).status == "replayed"  # patient 7's early event


def test_the_waiting_keys_migration_reads_the_keys_the_model_gives():
    import importlib.util

    from cgthub.store import MIGRATIONS

    spec = importlib.util.spec_from_file_location("m0008", MIGRATIONS / "versions" / "0008_waiting_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = enrolment(4).model_copy(update={"refs": ExternalRefs(courier_shipment_ids=("S1", "S2"))})
    for e in [*happy_path(3), shipped]:
        assert module.event_keys(e.to_json_dict()) == e.all_keys()


def test_upgrading_a_database_with_waiting_events_indexes_them(tmp_path):
    from sqlalchemy import insert

    from cgthub import store
    from cgthub.store import session_scope
    from cgthub.tables import QuarantineEntry, WaitingKey, utcnow

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store.upgrade(url, "0007")
    early = happy_path(1)[2]
    with session_scope(url) as s:  # an entry as the hub before 0008 left it
        s.execute(
            insert(QuarantineEntry.__table__),
            {
                "system": "hospital",
                "kind": early.event_type.value,
                "stage": "correlate",
                "subject": "early",
                "reason": "no order matches",
                "details": {"event": early.to_json_dict()},
                "first_seen": utcnow(),
                "last_seen": utcnow(),
                "occurrences": 1,
                "status": "open",
            },
        )
    store.upgrade(url)
    with session_scope(url) as s:
        assert {(k.kind, k.value) for k in s.scalars(select(WaitingKey))} == set(early.all_keys())
        ledger.append(s, enrolment(1))
        assert s.scalars(select(QuarantineEntry)).one().status == "replayed"
    store.dispose_engines()


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=40), st.integers(min_value=1, max_value=10**9))
def test_the_entry_hash_is_over_the_canonical_text(body, seq):
    import hashlib

    from cgthub.jsontext import canonical_json
    from tests.factories import T0

    fields = {"prev": "0" * 64, "order": "ORD-1", "seq": seq, "recorded_at": T0.isoformat(), "body": body}
    try:
        expected = hashlib.sha256(canonical_json(fields).encode()).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: neither way gives a hash
        with pytest.raises(UnicodeEncodeError):
            ledger.entry_hash(prev_hash="0" * 64, order_id="ORD-1", seq=seq, recorded_at=T0, body=body)
        return
    assert ledger.entry_hash(prev_hash="0" * 64, order_id="ORD-1", seq=seq, recorded_at=T0, body=body) == expected


def _float_fields(model, path=()):
    """Paths of the fields of `model`'s tree whose values may be floats."""

    def holds(annotation, seen):
        if annotation is float:
            return True, seen
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                seen.append(arg)
            elif holds(arg, seen)[0]:
                return True, seen
        return False, seen

    found = []
    for name, info in model.model_fields.items():
        floaty, nested = holds(info.annotation, [])
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            nested.append(info.annotation)
        if floaty:
            found.append((*path, name))
        for child in nested:
            found.extend(_float_fields(child, (*path, name)))
    return found


def test_floats_sit_only_where_the_canonical_body_looks_for_them():
    """`canonical_body` writes with orjson unless the event has attributes or temperatures: a float
    field anywhere else in the model would need that test widened."""
    assert {p[:2] if p[0] == "shipment" else p[:1] for p in _float_fields(CanonicalEvent)} == {
        ("attributes",),
        ("shipment", "temperature"),
    }


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)  # models refuse lone surrogates
_NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**70), max_value=2**70)


@settings(max_examples=400, deadline=None)
@given(
    eid=_TEXT,
    reason=st.none() | _TEXT,
    lot=st.none() | _TEXT,
    attributes=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.none() | _TEXT | _NUMBER, max_size=3),
    readings=st.none() | st.tuples(_NUMBER, st.integers(min_value=0, max_value=2**66)),
)
def test_an_events_canonical_body_is_its_canonical_json(eid, reason, lot, attributes, readings):
    temperature = None if readings is None else TemperatureSummary(min_c=readings[0], readings=readings[1])
    shipment = Shipment(shipment_id="SHP-1", temperature=temperature) if readings is not None or lot else None
    made = event(
        EventType.ORDER_UPDATED,
        1,
        at=T0,
        eid=eid,
        reason=reason,
        material=Material(lot=lot) if lot else None,
        attributes=attributes,
        shipment=shipment,
    )
    assert made.canonical_body() == canonical_json(made.to_json_dict())
