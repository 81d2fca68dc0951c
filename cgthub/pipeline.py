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
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, ledger, quarantine
from cgthub.model import CanonicalEvent
from cgthub.tables import RawMessage, utcnow

log = logging.getLogger(__name__)


class PayloadRejected(Exception):
    """A payload that cannot become canonical events. The message must be PHI-free."""

    def __init__(self, stage: quarantine.Stage, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.details = details or {}


class Mapper(Protocol):
    """What the pipeline needs of a compiled mapping (see cgthub.mapping)."""

    mapping_id: str
    version: str

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        """Turn one payload into zero or more canonical events, or raise PayloadRejected."""
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
    """
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
    """Map and apply what a listener archived but did not apply yet (status `received`), oldest first."""
    rows = session.scalars(
        select(RawMessage)
        .where(RawMessage.system == system, RawMessage.status == "received")
        .order_by(RawMessage.id)
        .limit(limit)
    ).all()
    todo = [(IngestResult(raw_id=row.id), _inbound(session, row), row.checksum) for row in rows]
    _map_and_apply(session, todo, mapper_for)
    return [result for result, _item, _checksum in todo]


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
    events: list[CanonicalEvent] = []
    owners: list[IngestResult] = []
    for result, item, digest in todo:
        mapper = mapper_for(item)
        try:
            if mapper is None:
                raise PayloadRejected(quarantine.Stage.MAP, f"no mapping is configured for {item.system}/{item.kind}")
            mapped = mapper.map(item.payload, raw_id=result.raw_id, checksum=digest, received_at=item.received_at)
        except PayloadRejected as rejected:
            _reject(session, result, item.system, item.kind, rejected)
            continue
        events.extend(mapped)
        owners.extend([result] * len(mapped))
    _count(owners, ledger.append_many(session, events))
    outcome = {r.raw_id: "quarantined" if r.quarantined else "processed" for r, _i, _d in todo if not r.rejected}
    archive.mark_many(session, {raw_id: st for raw_id, st in outcome.items() if st != assumed})


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


def _reject(session: Session, result: IngestResult, system: str, kind: str, rejected: PayloadRejected) -> IngestResult:
    entry = quarantine.put(
        session,
        stage=rejected.stage,
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
    return result
