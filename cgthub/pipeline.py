"""The inbound path in one place: raw archive -> mapping -> canonical events -> ledger -> projection.

Connectors and listeners call `ingest` with the payload exactly as received. The payload is
archived first (in the caller's transaction, so "committed" means archived); a mapper failure
quarantines it with a readable reason, and each event goes to the ledger, which quarantines what
it cannot correlate. Nothing raises for bad input: the result says what happened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from cgthub import archive, ledger, quarantine
from cgthub.model import CanonicalEvent
from cgthub.tables import utcnow

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
    received_at = received_at or utcnow()
    stored = archive.store(
        session,
        system=system,
        kind=kind,
        channel=channel,
        payload=payload,
        received_at=received_at,
        dedupe_key=dedupe_key,
        content_type=content_type,
    )
    if stored.duplicate and stored.status == "processed":
        return IngestResult(raw_id=stored.raw_id, duplicate_payload=True)
    if mapper is None:
        return _reject(
            session,
            IngestResult(raw_id=stored.raw_id),
            system,
            kind,
            PayloadRejected(quarantine.Stage.MAP, f"no mapping is configured for {system}/{kind}"),
        )
    return process(session, stored.raw_id, mapper, system=system, kind=kind, payload=payload, received_at=received_at)


def process(
    session: Session,
    raw_id: int,
    mapper: Mapper,
    *,
    system: str,
    kind: str,
    payload: bytes | None = None,
    received_at: datetime | None = None,
) -> IngestResult:
    """Map and apply an archived payload (first time, or replay after a fix)."""
    result = IngestResult(raw_id=raw_id)
    clear = payload if payload is not None else archive.read(session, raw_id)
    try:
        events = mapper.map(clear, raw_id=raw_id, checksum=archive.checksum(clear), received_at=received_at or utcnow())
    except PayloadRejected as rejected:
        return _reject(session, result, system, kind, rejected)
    return apply_events(session, result, events)


def apply_events(session: Session, result: IngestResult, events: list[CanonicalEvent]) -> IngestResult:
    for event in events:
        outcome = ledger.append(session, event)
        if outcome.order_id:
            result.order_ids.add(outcome.order_id)
        if outcome.status == "appended":
            result.appended += 1
        elif outcome.status == "duplicate":
            result.duplicates += 1
        else:
            result.quarantined += 1
            result.reasons.append(outcome.reason or "quarantined")
    archive.mark(session, result.raw_id, "quarantined" if result.quarantined else "processed")
    return result


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
    log.warning("quarantined raw #%s (%s/%s) at %s: %s", result.raw_id, system, kind, entry.stage, rejected.reason)
    result.quarantined += 1
    result.reasons.append(rejected.reason)
    return result
