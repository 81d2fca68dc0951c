"""The inbound path in one place: raw archive -> mapping -> canonical events -> ledger -> projection.

Connectors and listeners call `ingest` with the payload exactly as received. The payload is
archived first (in the caller's transaction, so "committed" means archived); a mapper failure
quarantines it with a readable reason, and each event goes to the ledger, which quarantines what
it cannot correlate. Nothing raises for bad input: the result says what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from cgthub import archive, ledger, quarantine
from cgthub.errors import PayloadRejected, Rejection
from cgthub.mapping.spec import MappingError
from cgthub.model import CanonicalEvent
from cgthub.quoting import shown
from cgthub.tables import LedgerEntry, Order, OrderKey, RawMessage, WaitingKey, utcnow

log = logging.getLogger(__name__)

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class Mapper(Protocol):
    """What the pipeline needs of a compiled mapping (see cgthub.mapping)."""

    mapping_id: str
    version: str

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        """Turn one payload into zero or more canonical events, or raise PayloadRejected."""
        ...


class Unjudged(Protocol):
    """A payload mapped by a mapping that judges its events before they are applied (routing's site
    qualification, `map_unjudged`): the pipeline maps a whole batch, has each kind `judge_all` its
    batch at once (one lookup, not one a payload), then takes each payload's `settle`d events."""

    @classmethod
    def judge_all(cls, batch: Sequence[Any]) -> None: ...

    def settle(self) -> list[CanonicalEvent]:
        """The events that may be applied, or raise PayloadRejected."""
        ...


@dataclass
class IngestResult:
    raw_id: int
    duplicate_payload: bool = False
    appended: int = 0
    duplicates: int = 0
    quarantined: int = 0
    order_ids: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    rejected: bool = False
    not_stored: str | None = None  # why the payload could not even be archived: the sender must resend
    code: Rejection | None = None  # the code of its first rejection or quarantine: what its sender is told

    @property
    def ok(self) -> bool:
        return self.quarantined == 0


def ingest(
    session: Session,
    *,
    system: str,
    kind: str,
    channel: str,
    payload: bytes,
    mapper: Mapper | None,
    received_at: datetime | None = None,
    dedupe_key: str | None = None,
    content_type: str = "application/octet-stream",
) -> IngestResult:
    """Archive one inbound payload, then map and apply it (all in the caller's transaction)."""
    item = archive.Inbound(
        system=system,
        kind=kind,
        channel=channel,
        payload=payload,
        received_at=received_at or utcnow(),
        dedupe_key=dedupe_key,
        content_type=content_type,
    )
    return ingest_batch(session, [item], lambda _item: mapper)[0]


def ingest_batch(
    session: Session, items: Sequence[archive.Inbound], mapper_for: Callable[[archive.Inbound], Mapper | None]
) -> list[IngestResult]:
    """Archive, map and apply a batch in the caller's transaction, at batch cost.

    One multi-row archive insert, one ledger batch, one projection refresh per touched order. The
    caller commits; only then may it acknowledge any of the payloads (ACK-after-commit).

    A payload that makes the batch fail (a crash anywhere past the mapping) does not fail the rest:
    the batch is run again one payload at a time, and that one is archived and quarantined.
    """
    return isolated(
        session,
        items,
        lambda part: _ingest(session, part, mapper_for),
        lambda item, exc: _quarantine_poison(session, item, exc),
        hold=lambda part: archive.hold(session, part),
    )


def _ingest(
    session: Session, items: Sequence[archive.Inbound], mapper_for: Callable[[archive.Inbound], Mapper | None]
) -> list[IngestResult]:
    stored = archive.store_many(session, items, status="processed")
    results = [IngestResult(raw_id=saved.raw_id) for saved in stored]
    todo: list[tuple[IngestResult, archive.Inbound, str]] = []
    for result, item, saved in zip(results, items, stored, strict=True):
        if saved.duplicate and saved.status in ("processed", "received"):
            # Already applied, waiting to be applied, or earlier in this batch: it was counted.
            result.duplicate_payload = True
        else:
            todo.append((result, item, saved.checksum))
    _map_and_apply(session, todo, mapper_for, assumed="processed")
    return results


def process_pending(
    session: Session, system: str, mapper_for: Callable[[archive.Inbound], Mapper | None], *, limit: int = 5000
) -> list[IngestResult]:
    """Map and apply what a listener archived but did not apply yet (status `received`), oldest first.

    On PostgreSQL the rows are claimed FOR UPDATE SKIP LOCKED, so workers running this at once take
    disjoint messages instead of applying the same ones twice (SQLite has one writer anyway)."""
    rows = session.scalars(
        select(RawMessage)
        .where(RawMessage.system == system, RawMessage.status == "received")
        .order_by(RawMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    todo = [(IngestResult(raw_id=row.id), _inbound(session, row), row.checksum) for row in rows]

    def apply(part: Sequence[tuple[IngestResult, archive.Inbound, str]]) -> list[IngestResult]:
        _map_and_apply(session, list(part), mapper_for)
        return [result for result, _item, _checksum in part]

    def poisoned(one: tuple[IngestResult, archive.Inbound, str], exc: Exception) -> IngestResult:
        result, item, _checksum = one
        fresh = IngestResult(raw_id=result.raw_id)
        with session.begin_nested():
            _reject(session, fresh, item.system, item.kind, _poison_rejection(exc))
        return fresh

    return isolated(session, todo, apply, poisoned)


def process(session: Session, raw_id: int, mapper: Mapper) -> IngestResult:
    """Map and apply one archived payload again, e.g. with a fixed mapping (replay)."""
    row = session.get(RawMessage, raw_id)
    if row is None:
        raise LookupError(f"raw message {raw_id} is not in the archive")
    result = IngestResult(raw_id=raw_id)
    _map_and_apply(session, [(result, _inbound(session, row), row.checksum)], lambda _item: mapper)
    return result


def _inbound(session: Session, row: RawMessage) -> archive.Inbound:
    return archive.Inbound(
        system=row.system,
        kind=row.kind,
        channel=row.channel,
        payload=archive.read(session, row.id),
        received_at=row.received_at,
        dedupe_key=row.dedupe_key,
        content_type=row.content_type,
    )


def _map_and_apply(
    session: Session,
    todo: list[tuple[IngestResult, archive.Inbound, str]],
    mapper_for: Callable[[archive.Inbound], Mapper | None],
    *,
    assumed: str | None = None,
) -> None:
    """Map each payload, append all events as one ledger batch, record each payload's outcome.

    `assumed` is the status the archive rows already carry; only other outcomes are written.
    """
    # First every payload mapped; a mapping that judges its events (routing's site qualification)
    # leaves them pending, and they are judged for the whole batch at once; then each payload's
    # outcome, in order, as if each had been mapped and judged alone.
    staged: list[tuple[IngestResult, archive.Inbound, Mapper | None, _Mapped]] = []
    for result, item, digest in todo:
        mapper = mapper_for(item)
        staged.append((result, item, mapper, _map_one(mapper, item, result.raw_id, digest)))
    pending: dict[type[Unjudged], list[Unjudged]] = {}
    for _result, _item, _mapper, mapped in staged:
        if not isinstance(mapped, list | PayloadRejected):
            pending.setdefault(type(cast(Unjudged, mapped)), []).append(mapped)
    for kind, batch in pending.items():
        kind.judge_all(batch)
    events: list[CanonicalEvent] = []
    owners: list[IngestResult] = []
    for result, item, mapper, mapped in staged:
        try:
            if isinstance(mapped, PayloadRejected):
                raise mapped
            made = mapped if isinstance(mapped, list) else _settle(mapper, mapped)
            too_long = _beyond_columns(made)
            if too_long:
                raise PayloadRejected(quarantine.Stage.VALIDATE, too_long)
        except PayloadRejected as rejected:
            _reject(session, result, item.system, item.kind, rejected)
            continue
        events.extend(made)
        owners.extend([result] * len(made))
    _count(owners, ledger.append_many(session, events))
    outcome = {r.raw_id: "quarantined" if r.quarantined else "processed" for r, _i, _d in todo if not r.rejected}
    archive.mark_many(session, {raw_id: st for raw_id, st in outcome.items() if st != assumed})


_Mapped = list[CanonicalEvent] | PayloadRejected | Any  # events, a rejection, or an Unjudged


def _map_one(mapper: Mapper | None, item: archive.Inbound, raw_id: int, digest: str) -> _Mapped:
    """A payload's events (pending judgement where its mapper judges them), or why it is rejected."""
    try:
        if mapper is None:
            raise PayloadRejected(
                quarantine.Stage.MAP,
                f"no mapping is configured for {item.system}/{item.kind}",
                code=Rejection.UNSUPPORTED_TYPE,
            )
        unjudged = getattr(mapper, "map_unjudged", None)
        try:
            if unjudged is not None:
                return cast(
                    Unjudged, unjudged(item.payload, raw_id=raw_id, checksum=digest, received_at=item.received_at)
                )
            return mapper.map(item.payload, raw_id=raw_id, checksum=digest, received_at=item.received_at)
        except PayloadRejected:
            raise
        except Exception as exc:  # whatever a mapping raises is its rejection, never the batch's crash
            raise _mapping_failed(mapper, exc) from exc
    except PayloadRejected as rejected:
        return rejected


def _settle(mapper: Mapper | None, unjudged: Unjudged) -> list[CanonicalEvent]:
    try:
        return unjudged.settle()
    except PayloadRejected:
        raise
    except Exception as exc:  # as in the mapping: the payload's rejection, not the batch's crash
        assert mapper is not None
        raise _mapping_failed(mapper, exc) from exc


def _mapping_failed(mapper: Mapper, exc: Exception) -> PayloadRejected:
    return PayloadRejected(
        quarantine.Stage.MAP,
        f"{mapper.mapping_id}@{mapper.version}: the mapping failed on this payload "
        f"({type(exc).__name__}); fix the mapping, then replay",
        {"mapping": mapper.mapping_id, "version": mapper.version},
    )


def _count(owners: list[IngestResult], outcomes: list[ledger.AppendResult]) -> None:
    for result, outcome in zip(owners, outcomes, strict=True):
        if outcome.order_id:
            result.order_ids.add(outcome.order_id)
        if outcome.status == "appended":
            result.appended += 1
        elif outcome.status == "duplicate":
            result.duplicates += 1
        else:
            result.quarantined += 1
            result.reasons.append(outcome.reason or "quarantined")
            result.code = result.code or outcome.rejection or Rejection.UNAPPLIED


def _reject(session: Session, result: IngestResult, system: str, kind: str, rejected: PayloadRejected) -> IngestResult:
    entry = quarantine.put(
        session,
        stage=quarantine.Stage(rejected.stage),
        reason=rejected.reason,
        system=system,
        kind=kind,
        raw_id=result.raw_id,
        details=rejected.details,
    )
    archive.mark(session, result.raw_id, "quarantined")
    result.rejected = True
    log.warning("quarantined raw #%s (%s/%s) at %s: %s", result.raw_id, system, kind, entry.stage, rejected.reason)
    result.quarantined += 1
    result.reasons.append(rejected.reason)
    result.code = result.code or rejected.code
    return result


def isolated(
    session: Session,
    batch: Sequence[_Item],
    run: Callable[[Sequence[_Item]], list[_Result]],
    poisoned: Callable[[_Item, Exception], _Result],
    *,
    hold: Callable[[Sequence[_Item]], None] | None = None,
) -> list[_Result]:
    """`run(batch)`; if it raises, `run` each item alone, and `poisoned(item, exc)` for one that raises.

    The happy path pays nothing: a batch that starts the session's transaction runs in it, and a
    failure rolls that back before the retry (the batch is then all the transaction held). Only a
    batch joining a transaction already under way runs in a savepoint. On the retry each item has a
    savepoint of its own, so one poison message fails only itself. `hold(batch)` is called before
    the items run alone, so that what they lock is taken in one round (`archive.hold`: one item at a
    time, their archive keys would be taken in arrival order, which can deadlock with another writer).
    """
    owns_transaction = not session.in_transaction()
    try:
        if owns_transaction:
            return run(batch)
        with session.begin_nested():
            return run(batch)
    except Exception as exc:
        if owns_transaction:
            session.rollback()
        if len(batch) == 1:
            log.warning("a payload failed (%s): archived and quarantined", type(exc).__name__)
            return [poisoned(batch[0], exc)]
        log.warning("a batch of %d failed (%s); running it one by one", len(batch), type(exc).__name__)
    if hold is not None:
        hold(batch)
    out: list[_Result] = []
    for item in batch:
        try:
            with session.begin_nested():
                out.extend(run([item]))
        except Exception as exc:
            log.warning("a payload failed alone (%s): archived and quarantined", type(exc).__name__)
            out.append(poisoned(item, exc))
    return out


def _quarantine_poison(session: Session, item: archive.Inbound, exc: Exception) -> IngestResult:
    """Keep a payload that failed on its own, and quarantine it with the reason; if even keeping it
    fails, say so, and the sender is asked to resend it."""
    try:
        with session.begin_nested():
            (saved,) = archive.store_many(session, [item], status="quarantined")
            result = IngestResult(raw_id=saved.raw_id)  # quarantined, even if it was archived before
            _reject(session, result, item.system, item.kind, _poison_rejection(exc))
            return result
    except Exception as again:
        log.error("a payload could not be archived (%s after %s)", type(again).__name__, type(exc).__name__)
        result = IngestResult(raw_id=0, not_stored=failure_text(again), code=Rejection.NOT_STORED)
        result.reasons.append(result.not_stored or "")
        return result


def _poison_rejection(exc: Exception) -> PayloadRejected:
    details: dict[str, Any] = {"error": type(getattr(exc, "orig", None) or exc).__name__}
    if isinstance(exc, MappingError):  # a deployment problem: which file and line to fix
        details |= {"file": exc.file, "line": exc.line}
    return PayloadRejected(
        quarantine.Stage.VALIDATE,
        f"could not be applied: {failure_text(exc)}; it is archived, replay it once the cause is fixed",
        details,
        code=Rejection.UNAPPLIED,
    )


_MAPPING_TEXT_LIMIT = 300  # a mapping file's problem, as a reason quotes it (YAML's can run long)


def failure_text(exc: Exception) -> str:
    """What went wrong with a payload, in words that quote no value (a database's message may quote it).

    A mapping file that does not load is quoted whole ("file:line: problem", on one line): its text is
    the spec file's, never the payload's, and it says what to fix."""
    if isinstance(exc, MappingError):
        return f"its mapping file does not load: {shown(' '.join(str(exc).split()), _MAPPING_TEXT_LIMIT)}"
    if isinstance(exc, DataError):
        return f"a value does not fit the store ({type(exc.orig).__name__})"
    if isinstance(exc, IntegrityError):
        return f"it conflicts with what is stored ({type(exc.orig).__name__})"
    if isinstance(exc, DBAPIError):
        return f"the database refused it ({type(exc.orig).__name__})"
    return f"an unexpected {type(exc).__name__}"


def _column_limit(column: Any) -> int:
    return int(column.type.length)


_KEY_LIMIT = min(_column_limit(OrderKey.__table__.c.value), _column_limit(WaitingKey.__table__.c.value))
_EVENT_ID_LIMIT = _column_limit(LedgerEntry.__table__.c.source_event_id)
_ORDER_LIMITS = {name: _column_limit(Order.__table__.c[name]) for name in ("therapy", "site", "cmo")}


def _beyond_columns(events: list[CanonicalEvent]) -> str | None:
    """Which value of these events is longer than the column that keeps it, checked before any
    insert so both databases answer alike (SQLite keeps any length; PostgreSQL fails the statement).

    The values the ledger indexes are read straight from the models (CoI ids and DINs are checked by
    their format already): this runs for every event on the batch path.
    """
    keys, event_ids = _KEY_LIMIT, _EVENT_ID_LIMIT
    for event in events:
        if len(event.source_event_id) > event_ids:
            return f"the event id is {len(event.source_event_id)} characters; the hub keeps at most {event_ids}"
        for name, value in event.refs.__dict__.items():
            if value and (len(value) > keys if type(value) is str else max(map(len, value)) > keys):
                return (
                    f"{name} is {max(map(len, _texts(value)))} characters; the hub keeps references of at most {keys}"
                )
        material, shipment, order = event.material, event.shipment, event.order
        if material is not None and material.lot and len(material.lot) > keys:
            return f"material.lot is {len(material.lot)} characters; the hub keeps references of at most {keys}"
        if shipment is not None and len(shipment.shipment_id) > keys:
            return f"shipment.shipment_id is {len(shipment.shipment_id)} characters; the hub keeps at most {keys}"
        if order is not None:
            for name, limit in _ORDER_LIMITS.items():
                value = getattr(order, name)
                if value is not None and len(value) > limit:
                    return f"order.{name} is {len(value)} characters; the hub keeps at most {limit}"
    return None


def _texts(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if type(value) is str else cast(tuple[str, ...], value)
