"""The custody and status ledger: append-only, idempotent, hash-chained per order.

Each entry stores the hash of the previous entry of its order and its own hash over a canonical
JSON encoding, and the order row keeps the chain's head and length, so `verify` finds any edited,
deleted, inserted or reordered row. The hash is public; what someone with write access to the
database cannot recompute is anchored outside it (`cgthub.ledger_anchor`): each entry's seal under
the ledger key, and the signed checkpoints of every chain head. Appends to one order serialize on
the order row (SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite) and the
(order_id, seq) unique key backs that up.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cgthub import alerts, conflicts, ledger_anchor, projection, qualification, quarantine, sites
from cgthub.bulk import BatchRead, BulkWrite, rows_by_pairs
from cgthub.correlation import Key, KeyIndex, ScopeConflict, correlate
from cgthub.errors import CgthubError, Rejection
from cgthub.identifiers import new_order_id
from cgthub.jsontext import canonical_json
from cgthub.model import CanonicalEvent, EventType, Provenance, SourceSystem
from cgthub.store import race_guard
from cgthub.tables import LedgerEntry, Order, OrderKey, QuarantineEntry, RawMessage, WaitingKey, utcnow

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_MAX_ATTEMPTS = 5
_CHUNK = 400
_ENTRIES = LedgerEntry.__table__
_DONE_COLUMNS = ("source_system", "source_event_id", "order_id", "id", "seq", "body")
# A new order's projection goes in with its row (`projection.new_order_rows`), as the refresh binds it.
_INSERT_ORDERS = BulkWrite(
    insert(Order.__table__).values(projection=bindparam("projection", type_=projection.Document()))
)
_INSERT_KEYS = BulkWrite(insert(OrderKey.__table__))
_INSERT_ENTRIES = BulkWrite(insert(_ENTRIES))
_WAITING = WaitingKey.__table__
_ANY_WAITING = select(_WAITING.c.id).limit(1)
_SITE_AT = projection.KEPT_UNLESS_CHANGED.index("site")  # in a locked head's `indexed` columns


def entry_hash(*, prev_hash: str, order_id: str, seq: int, recorded_at: datetime, body: str) -> str:
    return _entry_hash(prev_hash, order_id, seq, recorded_at.isoformat(), body)


def _entry_hash(prev_hash: str, order_id: str, seq: int, recorded_at: str, body: str) -> str:
    """`entry_hash` with the moment already as its ISO text (a batch's entries share one)."""
    # The keys in sorted order, as canonical_json writes them: orjson keeps a dict's order.
    fields = {"body": body, "order": order_id, "prev": prev_hash, "recorded_at": recorded_at, "seq": seq}
    try:  # strings and a small int: orjson writes canonical_json's text without checking each part
        material = orjson.dumps(fields)
    except orjson.JSONEncodeError:  # a lone surrogate in the body: the standard library's text
        material = canonical_json(fields).encode()
    return hashlib.sha256(material).hexdigest()


@dataclass
class AppendResult:
    status: Literal["appended", "duplicate", "quarantined"]
    order_id: str | None
    entry_id: int | None = None
    seq: int | None = None
    quarantine_id: int | None = None
    reason: str | None = None
    rejection: Rejection | None = None  # why it was quarantined, for the answer to its sender


class OrderNotFound(CgthubError, LookupError):
    pass


_ORDERS = Order.__table__
_LOCK_HEADS = BatchRead(
    select(
        _ORDERS.c.id,
        _ORDERS.c.ledger_length,
        _ORDERS.c.ledger_head,
        _ORDERS.c.projected_length,
        *(_ORDERS.c[name] for name in projection.KEPT_UNLESS_CHANGED),
    )
    .where(_ORDERS.c.id.in_(bindparam("ids", expanding=True)))
    .with_for_update()
)


def lock_heads(session: Session, order_ids: Iterable[str]) -> dict[str, projection.OrderHead]:
    """Read and lock (SELECT ... FOR UPDATE on PostgreSQL) the chain heads of these orders, with
    their stored projections."""
    wanted = sorted(set(order_ids))
    heads: dict[str, projection.OrderHead] = {}
    connection = session.connection()
    for start in range(0, len(wanted), _CHUNK):
        for order_id, length, chain_head, projected, *indexed in _LOCK_HEADS.rows(
            connection, {"ids": wanted[start : start + _CHUNK]}
        ):
            heads[order_id] = projection.OrderHead(order_id, length, chain_head, projected, indexed=tuple(indexed))
    projection.attach_stored(session, heads.values())
    return heads


def _refresh_projections(
    session: Session,
    heads: dict[str, projection.OrderHead],
    new_events: dict[str, list[CanonicalEvent]],
    now: datetime | None = None,
) -> None:
    """Hand the projection the new events of each touched order, and the whole chain of an order
    whose new events it cannot fold onto what it stored."""
    histories = {
        order_id: events(session, order_id)
        for order_id, new in new_events.items()
        if projection.needs_history(heads[order_id], new)
    }
    projection.refresh_many(session, heads, new_events, histories, now)


def append(session: Session, event: CanonicalEvent) -> AppendResult:
    """Append one canonical event to its order's chain (in the caller's transaction).

    A duplicate (same source system and source event id) returns the existing entry. An event that
    matches no order, or whose identity keys contradict its order, is quarantined; a COI
    contradiction also puts the orders involved on hold and raises a critical alert.
    """
    return append_many(session, [event])[0]


def append_many(session: Session, events: Sequence[CanonicalEvent]) -> list[AppendResult]:
    """Append a batch with the semantics of `append` for each event, in order, at batch cost.

    Keys and existing events are looked up in bulk, each order is locked once, entries go in with
    one multi-row INSERT, and each touched order's projection is refreshed once.
    """
    for attempt in range(_MAX_ATTEMPTS):
        writer = _BatchWriter(session)
        try:
            with race_guard(session):
                results = writer.run(events)
            break
        except IntegrityError:
            # Another writer created the order, a key or this very event first: look again.
            if attempt == _MAX_ATTEMPTS - 1:
                raise
    _refresh_projections(session, writer.orders, writer.touched, writer.refreshed_at)
    if writer.key_rows:
        _release_waiting(session, [(row["kind"], row["value"]) for row in writer.key_rows])
    return results


def _release_waiting(session: Session, keys: list[tuple[str, str]]) -> None:
    """Events quarantined for want of an order go through once a key they carry finds one.

    Only the entries waiting on one of these newly registered keys are read (an index lookup), so
    a quarantine holding many early events does not slow every batch down. Nothing waiting at all
    (the usual case) is asked first, in one cheap read: a batch of new orders registers hundreds of
    keys, and looking each up costs more than the rest of its write.
    """
    if session.execute(_ANY_WAITING).first() is None:
        return
    found = rows_by_pairs(session, _WAITING, ("quarantine_id",), "kind", "value", keys)
    ids = sorted({quarantine_id for (quarantine_id,) in found})
    if not ids:
        return
    waiting = session.scalars(
        select(QuarantineEntry)
        .where(
            QuarantineEntry.id.in_(ids),
            QuarantineEntry.stage == quarantine.Stage.CORRELATE.value,
            QuarantineEntry.status == quarantine.QuarantineStatus.OPEN.value,
        )
        .order_by(QuarantineEntry.id)
    ).all()
    events = [CanonicalEvent.model_validate(entry.details["event"]) for entry in waiting]
    # Judged against the order each is released onto, as an arriving event is (one lookup per table).
    registry, refusals = qualification.refused_on_release(session, events)
    released = _refuse_released(session, registry, waiting, refusals) if registry is not None else []
    held = set(released)  # they wait at stage qualify now, no longer on their keys
    for entry, event in zip(waiting, events, strict=True):
        if entry.id in held:
            continue
        outcome = append(session, event)
        if outcome.status != "quarantined":
            quarantine.release(session, entry, f"order {outcome.order_id} became known; event {outcome.status}")
            released.append(entry.id)
    if released:
        session.execute(delete(WaitingKey).where(WaitingKey.quarantine_id.in_(released)))


def _refuse_released(
    session: Session,
    registry: sites.SiteRegistry,
    waiting: Sequence[QuarantineEntry],
    refusals: Sequence[qualification.Judged | None],
) -> list[int]:
    """Waiting events their order's site was not qualified for on their day: each one's payload
    quarantined at stage `qualify` as it would have been had the order been known when it came (the
    same reason, verdict record and critical alert, under the archived payload's kind, so `cgthub
    sites replay` maps it again). Their waits at stage correlate end; returns those entries' ids."""
    refused = [(entry, judged) for entry, judged in zip(waiting, refusals, strict=True) if judged is not None]
    if not refused:
        return []
    raw_ids = sorted({entry.raw_id for entry, _ in refused if entry.raw_id is not None})
    kinds: dict[int, str] = {}
    if raw_ids:  # the archived payloads' kinds, as the pipeline files a refusal: one read for them all
        for raw_id, raw_kind in session.execute(
            select(RawMessage.id, RawMessage.kind).where(RawMessage.id.in_(raw_ids))
        ):
            kinds[raw_id] = raw_kind
    qualification.keep(session, registry, [judged for _, judged in refused])
    for entry, judged in refused:
        kind = kinds.get(entry.raw_id) if entry.raw_id is not None else None
        put = quarantine.put(
            session,
            stage=quarantine.Stage.QUALIFY,
            reason=qualification.refusal_text(registry, [judged]),
            system=entry.system,
            kind=kind or entry.kind,
            raw_id=entry.raw_id,
            order_id=judged.order_id,
            details=qualification.details(registry, [judged]),
            subject="" if kind else entry.subject,  # a payload's refusal, as the pipeline files it
        )
        if entry.raw_id is not None:
            qualification.alert(session, registry, judged, entry.raw_id)
        quarantine.release(
            session, entry, f"order {judged.order_id} became known; refused at stage qualify (quarantine #{put.id})"
        )
    return [entry.id for entry, _ in refused]


class _BatchWriter:
    """One pass over a batch: correlate, chain and buffer rows, then write them in bulk."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.index = KeyIndex(session)
        self.orders: dict[str, projection.OrderHead] = {}
        self.new_orders: list[dict[str, Any]] = []
        self.done: dict[tuple[str, str], AppendResult] = {}
        self.held: dict[tuple[str, str], str | CanonicalEvent] = {}  # each done event's body (or itself)
        self.entry_rows: list[dict[str, Any]] = []
        self.key_rows: list[dict[str, Any]] = []
        self.touched: dict[str, list[CanonicalEvent]] = {}
        self.recorded_at = utcnow()  # one moment for the batch: its entries are recorded by one commit
        self.recorded_text = self.recorded_at.isoformat()
        self.seal_base: Any = None  # the ledger key's keyed state, made when the first entry is sealed
        self.refreshed_at: datetime | None = None  # the refresh's moment, when new orders went in with it

    def run(self, events: Sequence[CanonicalEvent]) -> list[AppendResult]:
        keys = self._preload(events)
        results = [self._one(event, key, refs, ids) for event, (key, refs, ids) in zip(events, keys, strict=True)]
        self._write_rows()
        return results

    def _preload(self, events: Sequence[CanonicalEvent]) -> list[tuple[tuple[str, str], list[Key], list[Key]]]:
        """Read what the batch's events name; return each event's dedupe key, reference keys and
        identity keys, worked out here once for the whole pass."""
        self.index.take_answers()  # the keys site qualification looked up for this batch, and each event's
        keys_of = self.index.keys_of
        keys = [(e.key, *keys_of(e)) for e in events]
        wanted = [k[0] for k in keys]
        # The ids a mapping's previous version gave these events (`former_id`): in the same lookup.
        wanted.extend((e.source_system._value_, e.former_id) for e in events if e.former_id is not None)
        rows = rows_by_pairs(self.session, _ENTRIES, _DONE_COLUMNS, "source_system", "source_event_id", wanted)
        for system, event_id, order_id, entry_id, seq, body in rows:
            self.done[(system, event_id)] = AppendResult("duplicate", order_id, entry_id, seq)
            self.held[(system, event_id)] = body
        self.index.preload(k for _, refs, ids in keys for k in (*refs, *ids))
        self._lock(self.index.known_orders() | {e.order_id for e in events if e.order_id})
        return keys

    def _lock(self, order_ids: set[str]) -> None:
        heads = lock_heads(self.session, order_ids - self.orders.keys())
        self.orders.update(heads)
        # The rows' sites came with their lock: correlation's sender check need not read them again.
        self.index.know_sites({order_id: head.indexed[_SITE_AT] for order_id, head in heads.items()})

    def _order(self, order_id: str) -> projection.OrderHead:
        if order_id not in self.orders:
            self._lock({order_id})
        if order_id not in self.orders:
            raise OrderNotFound(order_id)
        return self.orders[order_id]

    def _one(self, event: CanonicalEvent, key: tuple[str, str], refs: list[Key], ids: list[Key]) -> AppendResult:
        prior = self.done.get(key)
        if prior is not None:
            return self._known(prior, conflicts.differing_fields(self.held.get(key), event), event)  # other content?
        if event.former_id is not None:
            former = (key[0], event.former_id)
            prior = self.done.get(former)
            if prior is not None and conflicts.same_sender(self.session, self.held.get(former), event):
                return self._known(prior, conflicts.differing_fields(self.held.get(former), event, former=True), event)
        match = correlate(self.session, event, self.index, keys=(refs, ids))
        if not match.ok:
            return self._identity_conflict(event, match.order_id, match.conflicts, match.conflicting_orders)
        order_id = match.order_id
        if order_id is None:
            if event.event_type is not EventType.ORDER_ENROLLED:
                return _uncorrelated(self.session, event)
            order_id = new_order_id()
            self.orders[order_id] = projection.OrderHead(order_id, ledger_head=GENESIS, is_new=True)
            self.new_orders.append(_new_order_row(order_id, self.recorded_at))
        if match.new_keys:
            self.index.register(order_id, match.new_keys)
            self.key_rows.extend({"kind": k, "value": v, "order_id": order_id} for k, v in match.new_keys)
        result = self._chain(self._order(order_id), event)
        self.done[key] = result
        self.held[key] = event
        return result

    def _known(self, prior: AppendResult, fields: list[str], event: CanonicalEvent) -> AppendResult:
        """An event the ledger holds: a duplicate, or (other content) a conflict held for an operator."""
        refused = (
            conflicts.refuse(self.session, event, fields, order_id=prior.order_id, applied_entry_id=prior.entry_id)
            if fields
            else None
        )
        if refused:
            return AppendResult(
                "quarantined", prior.order_id, quarantine_id=refused[0], reason=refused[1], rejection=Rejection.CONFLICT
            )
        return AppendResult("duplicate", prior.order_id, prior.entry_id, prior.seq)

    def _chain(self, order: projection.OrderHead, event: CanonicalEvent) -> AppendResult:
        """The entry's hash and seal, and its row for `_write_rows`, in one pass."""
        body = event.canonical_body()
        seq = order.ledger_length + 1
        prev = order.ledger_head or GENESIS
        recorded_at = self.recorded_at
        digest = _entry_hash(prev, order.id, seq, self.recorded_text, body)
        system, event_type = event.source_system._value_, event.event_type._value_  # plain attributes (model.key)
        event_id, occurred_at, raw_id = event.source_event_id, event.occurred_at, event.provenance.raw_id
        if self.seal_base is None:
            self.seal_base = ledger_anchor.entry_mac_base()
        seal = ledger_anchor.entry_mac(
            self.seal_base,
            entry_hash=digest,
            prev_hash=prev,
            order_id=order.id,
            seq=seq,
            source_system=system,
            source_event_id=event_id,
            event_type=event_type,
            occurred_at=occurred_at,
            recorded_at=recorded_at,
            raw_id=raw_id,
        )
        self.entry_rows.append(
            {
                "order_id": order.id,
                "seq": seq,
                "source_system": system,
                "source_event_id": event_id,
                "event_type": event_type,
                "occurred_at": occurred_at,
                "recorded_at": recorded_at,
                "raw_id": raw_id,
                "body": body,
                "prev_hash": prev,
                "entry_hash": digest,
                "entry_mac": seal,
            }
        )
        order.ledger_length = seq
        order.ledger_head = digest
        self.touched.setdefault(order.id, []).append(event)
        return AppendResult("appended", order.id, None, seq)

    def _write_rows(self) -> None:
        # Plain multi-row INSERTs: no RETURNING, which SQLite would answer one row at a time.
        # New orders first: keys and entries refer to them. They go in with their projection and
        # chain head (`projection.new_order_rows`); the refresh writes the heads of the others.
        self.session.flush()
        connection = self.session.connection()
        if self.new_orders:  # inserted with their projection: the refresh then updates none of them
            self.refreshed_at = utcnow()
            heads = [self.orders[row["id"]] for row in self.new_orders]
            refreshed = projection.new_order_rows(
                heads, self.touched, self.refreshed_at, connection.dialect.name == "sqlite"
            )
            for row, values in zip(self.new_orders, refreshed, strict=True):
                row.update(values)
        _INSERT_ORDERS.run(connection, self.new_orders)
        _INSERT_KEYS.run(connection, self.key_rows)
        _INSERT_ENTRIES.run(connection, self.entry_rows)

    def _identity_conflict(
        self, event: CanonicalEvent, order_id: str | None, conflicts: Sequence[str], others: set[str]
    ) -> AppendResult:
        """Quarantine at stage `identity`. Texts (the reason an ACK or a partner reads, the alerts of
        each order) name no other order and no identifier; the conflicts themselves and the orders
        they link are facts in the entry's and the alerts' details, for operators with scope."""
        if any(isinstance(c, ScopeConflict) for c in conflicts):
            return self._scope_conflict(event, order_id, conflicts)
        kinds = ", ".join(dict.fromkeys(getattr(c, "kind", "identity") for c in conflicts))
        reason = f"chain-of-identity discrepancy ({kinds}): the event's identifiers contradict the order they name"
        involved = sorted({*others, *([order_id] if order_id else [])})
        entry = quarantine.put(
            self.session,
            stage=quarantine.Stage.IDENTITY,
            reason="chain-of-identity discrepancy: " + "; ".join(conflicts),  # for operators: `quarantine show`
            system=event.source_system.value,
            kind=event.event_type.value,
            raw_id=event.provenance.raw_id,
            order_id=order_id,
            subject=_subject(event),
            details={"event": event.to_json_dict(), "orders": involved, "conflicts": list(conflicts)},
        )
        for oid in involved:
            if not self.index.exists(oid):
                continue
            hold = CanonicalEvent(
                source_system=SourceSystem.HUB,
                source_event_id=f"coi-hold:{oid}:{event.source_system.value}:{event.source_event_id}",
                event_type=EventType.ORDER_ON_HOLD,
                occurred_at=event.occurred_at,
                received_at=utcnow(),
                order_id=oid,
                reason="COI discrepancy",
                attributes={"quarantine_id": entry.id},
                provenance=Provenance(mapping_id="cgthub/coi-check", mapping_version="1"),
            )
            if hold.key not in self.done:
                self.done[hold.key] = self._chain(self._order(oid), hold)
            alerts.raise_alert(
                self.session,
                kind="coi_discrepancy",
                severity=alerts.Severity.CRITICAL,
                order_id=oid,
                message=f"order held: {reason} (quarantine #{entry.id})",
                dedupe_key=f"coi:{oid}:{event.source_system.value}:{event.source_event_id}",
                details={
                    "quarantine_id": entry.id,
                    "related_orders": [o for o in involved if o != oid],
                    "conflicts": list(conflicts),
                },
            )
        log.error("quarantined %s event (quarantine #%s): %s", event.source_system.value, entry.id, reason)
        return AppendResult(
            "quarantined",
            order_id,
            quarantine_id=entry.id,
            reason=f"{reason} (quarantine #{entry.id})",
            rejection=Rejection.IDENTITY,
        )

    def _scope_conflict(self, event: CanonicalEvent, order_id: str | None, conflicts: Sequence[str]) -> AppendResult:
        """A sender naming an order of a site it does not speak for: quarantined and alerted; the
        order is not held (one site's sender must not stop another's order) and keeps its site."""
        reason = "the sender is not registered for the site of the order this message names"
        entry = quarantine.put(
            self.session,
            stage=quarantine.Stage.IDENTITY,
            reason=reason,
            system=event.source_system.value,
            kind=event.event_type.value,
            raw_id=event.provenance.raw_id,
            order_id=order_id,
            subject=_subject(event),
            details={"event": event.to_json_dict(), "orders": [order_id] if order_id else [], "conflicts": conflicts},
        )
        alerts.raise_alert(
            self.session,
            kind="sender_scope_violation",
            severity=alerts.Severity.CRITICAL,
            order_id=order_id,
            message=f"a message from a sender not registered for this order's site was refused "
            f"(quarantine #{entry.id})",
            dedupe_key=f"scope:{order_id}:{event.source_system.value}:{event.source_event_id}",
            details={"quarantine_id": entry.id, "raw_id": event.provenance.raw_id, "conflicts": conflicts},
        )
        log.error("quarantined %s event (quarantine #%s): %s", event.source_system.value, entry.id, reason)
        return AppendResult("quarantined", None, quarantine_id=entry.id, reason=reason, rejection=Rejection.IDENTITY)


# Every new order's row of a batch holds this one object (never changed), and the batch's one
# moment: `BulkWrite` runs a column's bind processor once for a run of one object.
_NO_PROJECTION: dict[str, Any] = {}


def _new_order_row(order_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The row of an order a batch creates, at the batch's moment (its entries' `recorded_at`)."""
    now = now or utcnow()
    return {
        "id": order_id,
        "status": "enrolled",
        "on_hold": False,
        "projection": _NO_PROJECTION,
        "created_at": now,
        "updated_at": now,
        "ledger_length": 0,
        "ledger_head": GENESIS,
        "projected_length": 0,
    }


def _subject(event: CanonicalEvent) -> str:
    return f"{event.source_system.value}:{event.source_event_id}"


def _uncorrelated(session: Session, event: CanonicalEvent) -> AppendResult:
    refs = ", ".join(f"{k}={v}" for k, v in event.all_keys()) or "none"
    reason = (
        f"no order matches this {event.event_type.value} event (references: {refs}); "
        "it is replayed automatically once the order is enrolled"
    )
    entry = quarantine.put(
        session,
        stage=quarantine.Stage.CORRELATE,
        reason=reason,
        system=event.source_system.value,
        kind=event.event_type.value,
        raw_id=event.provenance.raw_id,
        subject=_subject(event),
        details={"event": event.to_json_dict()},
    )
    # The keys it waits on, as this version of the event carries them (a replay may change them).
    session.execute(delete(WaitingKey).where(WaitingKey.quarantine_id == entry.id))
    waits_on = [{"quarantine_id": entry.id, "kind": k, "value": v} for k, v in dict.fromkeys(event.all_keys())]
    if waits_on:
        session.execute(insert(WaitingKey), waits_on)
    return AppendResult("quarantined", None, quarantine_id=entry.id, reason=reason, rejection=Rejection.CORRELATE)


def entries(session: Session, order_id: str) -> list[LedgerEntry]:
    return list(session.scalars(select(LedgerEntry).where(LedgerEntry.order_id == order_id).order_by(LedgerEntry.seq)))


def events(session: Session, order_id: str) -> list[CanonicalEvent]:
    return [CanonicalEvent.model_validate_json(e.body) for e in entries(session, order_id)]


@dataclass(frozen=True)
class ChainProblem:
    order_id: str
    seq: int | None
    entry_id: int | None
    problem: str

    def __str__(self) -> str:
        if not self.order_id:
            return f"checkpoints: {self.problem}"
        where = f"entry #{self.entry_id} (seq {self.seq})" if self.entry_id is not None else "chain head"
        return f"order {self.order_id}, {where}: {self.problem}"


@dataclass
class Verification:
    """What `verify` looked at, beside the problems: which checkpoint it held the chains to."""

    orders: int = 0
    entries: int = 0
    checkpoint_lines: int = 0
    checkpoint_at: str | None = None
    problems: list[ChainProblem] = field(default_factory=list)


def verify(session: Session, order_id: str | None = None) -> tuple[int, list[ChainProblem]]:
    """Recompute every chain; return (orders checked, problems found)."""
    result = verify_all(session, order_id)
    return result.orders, result.problems


def verify_all(session: Session, order_id: str | None = None, *, checkpoints: Path | None = None) -> Verification:
    """Every chain against its entries' hashes and seals, its order row, and the latest checkpoint.

    Orders and entries are matched both ways: entries whose order row is gone and orders with no
    entries are problems too, as is an order a checkpoint recorded that the database lacks.
    """
    result = Verification()
    state = ledger_anchor.read_checkpoints(session, path=checkpoints)
    result.checkpoint_lines, result.checkpoint_at = state.lines, state.last_at
    result.problems.extend(ChainProblem("", None, None, problem) for problem in state.problems)
    base = ledger_anchor.entry_mac_base()
    query = select(Order).order_by(Order.id)
    if order_id is not None:
        query = query.where(Order.id == order_id)
    seen: set[str] = set()
    for order in session.scalars(query):
        seen.add(order.id)
        result.orders += 1
        chain = entries(session, order.id)
        result.entries += len(chain)
        result.problems.extend(_verify_order(order.id, order, chain, base, state.heads.get(order.id)))
    orphans = select(LedgerEntry.order_id).where(~LedgerEntry.order_id.in_(select(Order.id))).distinct()
    if order_id is not None:
        orphans = orphans.where(LedgerEntry.order_id == order_id)
    for orphan in sorted(session.scalars(orphans)):
        result.orders += 1
        chain = entries(session, orphan)
        result.entries += len(chain)
        result.problems.append(
            ChainProblem(orphan, None, None, f"{len(chain)} entries have no order row (order deleted)")
        )
        result.problems.extend(_verify_order(orphan, None, chain, base, state.heads.get(orphan)))
        seen.add(orphan)
    for gone in sorted(state.heads.keys() - seen):
        if order_id is None or gone == order_id:
            seq, _, at = state.heads[gone]
            result.problems.append(
                ChainProblem(
                    gone, None, None, f"the checkpoint of {at} recorded {seq} entries; none is left (order deleted)"
                )
            )
    return result


def _verify_order(
    order_id: str,
    order: Order | None,
    chain: list[LedgerEntry],
    base: Any,
    recorded: tuple[int, str, str] | None,
) -> list[ChainProblem]:
    problems: list[ChainProblem] = []
    prev = GENESIS
    expected_seq = 1
    hash_at: dict[int, str] = {}
    for entry in chain:
        here = (order_id, entry.seq, entry.id)
        if entry.seq != expected_seq:
            problems.append(ChainProblem(*here, f"sequence jumps from {expected_seq - 1} to {entry.seq}"))
        if entry.prev_hash != prev:
            problems.append(ChainProblem(*here, "previous-hash link broken (row deleted, inserted or reordered)"))
        digest = entry_hash(
            prev_hash=entry.prev_hash,
            order_id=entry.order_id,
            seq=entry.seq,
            recorded_at=entry.recorded_at,
            body=entry.body,
        )
        if digest != entry.entry_hash:
            problems.append(ChainProblem(*here, "content does not match its hash (row edited)"))
        if entry.entry_mac is None:
            problems.append(
                ChainProblem(
                    *here,
                    "entry has no seal (written outside the ledger, or failed "
                    "its hash when the ledger was first sealed)",
                )
            )
        elif not hmac.compare_digest(entry.entry_mac, ledger_anchor.seal_of(base, entry)):
            problems.append(
                ChainProblem(*here, "seal does not match under the ledger key (row forged or edited, hash recomputed)")
            )
        problems.extend(_check_columns(order_id, entry))
        hash_at[entry.seq] = entry.entry_hash
        prev = entry.entry_hash
        expected_seq = entry.seq + 1
    length = expected_seq - 1
    if order is not None:
        if not chain:
            problems.append(ChainProblem(order_id, None, None, "order has no ledger entries (entries deleted)"))
        elif order.ledger_length != length or (order.ledger_head or GENESIS) != prev:
            problems.append(
                ChainProblem(
                    order_id,
                    None,
                    None,
                    f"head says {order.ledger_length} entries ending {order.ledger_head[:12]}, chain has "
                    f"{length} ending {prev[:12]} (entries deleted or appended outside the ledger)",
                )
            )
    if recorded is not None:
        seq, head, at = recorded
        if length < seq:
            problems.append(
                ChainProblem(
                    order_id,
                    None,
                    None,
                    f"chain has {length} entries, the checkpoint of {at} recorded {seq} (entries removed)",
                )
            )
        elif hash_at.get(seq) != head:
            problems.append(
                ChainProblem(
                    order_id, seq, None, f"entry {seq} is not the one the checkpoint of {at} recorded (chain rewritten)"
                )
            )
    return problems


def _check_columns(order_id: str, entry: LedgerEntry) -> list[ChainProblem]:
    """The indexed columns are copies of the hashed body: they must agree with it."""
    try:
        event = CanonicalEvent.model_validate_json(entry.body)
    except ValueError as exc:
        return [ChainProblem(order_id, entry.seq, entry.id, f"body is not a valid canonical event: {exc}")]
    mismatched = [
        name
        for name, column, hashed in (
            ("order_id", entry.order_id, order_id),
            ("source_system", entry.source_system, event.source_system.value),
            ("source_event_id", entry.source_event_id, event.source_event_id),
            ("event_type", entry.event_type, event.event_type.value),
            ("occurred_at", entry.occurred_at, event.occurred_at),
            ("raw_id", entry.raw_id, event.provenance.raw_id),
        )
        if column != hashed
    ]
    if mismatched:
        return [
            ChainProblem(order_id, entry.seq, entry.id, f"columns differ from the hashed body: {', '.join(mismatched)}")
        ]
    return []
