"""Quarantine: payloads or events that could not be parsed, mapped, validated or correlated.

An entry names the stage and a reason an operator can read (PHI masked), points at the archived
raw payload, counts how often it was seen, and tracks replay. Nothing in quarantine is lost:
`release` marks it replayed once a fixed mapping or a late order makes it go through.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cgthub.archive import fitted
from cgthub.pseudonym import mask
from cgthub.tables import QuarantineEntry, RawMessage, text_limit, utcnow

_KIND_LIMIT = text_limit(QuarantineEntry.__table__.c.kind)
_SUBJECT_LIMIT = text_limit(QuarantineEntry.__table__.c.subject)


class Stage(StrEnum):
    RECEIVE = "receive"
    PARSE = "parse"
    ROUTE = "route"  # the payload's site, sender or market is not in the site registry
    QUALIFY = "qualify"  # its site is not qualified for the therapy on that day (config/sites.yaml)
    MAP = "map"
    VALIDATE = "validate"
    CORRELATE = "correlate"
    IDENTITY = "identity"
    CONFLICT = "conflict"  # a known event id came again with other content (cgthub/conflicts.py)
    DELIVER = "deliver"


# What each stage means to the person reading the entry, and where the fix usually is.
STAGE_MEANING = {
    Stage.RECEIVE: "the payload could not be received and archived",
    Stage.PARSE: "the payload could not be read in its format",
    Stage.ROUTE: "its site, sender or market is not in the site registry (config/sites.yaml)",
    Stage.QUALIFY: "its site is not qualified for the order's therapy on that day (config/sites.yaml)",
    Stage.MAP: "the partner's mapping could not turn the payload into events",
    Stage.VALIDATE: "the mapping made an event the canonical model refuses",
    Stage.CORRELATE: "no order matches the event's references (yet)",
    Stage.IDENTITY: "the event contradicts its order's chain of identity",
    Stage.CONFLICT: "the event's id was received before with other content; the first version is applied",
    Stage.DELIVER: "an outbound message could not be delivered",
}
MAPPING_STAGES = (Stage.PARSE, Stage.MAP, Stage.VALIDATE)
# Free text a partner typed may name a patient: shown by shape only.
_FREE_TEXT_KEYS = frozenset({"reason", "comment", "note", "notes", "text", "finding"})


def masked_details(value: Any, key: str = "") -> Any:
    """Details as stored, with free text and attribute values shown by their shape only."""
    if isinstance(value, dict):
        if key == "attributes":
            return {k: mask(v) if isinstance(v, str) else v for k, v in value.items()}
        return {k: masked_details(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_details(v, key) for v in value]
    if isinstance(value, str) and key in _FREE_TEXT_KEYS:
        return mask(value)
    return value


class QuarantineStatus(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


def put(
    session: Session,
    *,
    stage: Stage,
    reason: str,
    system: str,
    kind: str,
    raw_id: int | None = None,
    order_id: str | None = None,
    details: dict[str, Any] | None = None,
    subject: str = "",
) -> QuarantineEntry:
    """Quarantine, or count again if the same payload (and subject) is already open at this stage.

    `subject` tells apart several events of one payload (e.g. "crm:order.enrolled:42"). A kind or
    subject longer than its column (a sender's 100-character message type) is cut to it the same way
    each time, so the entry is written, and found again when the payload comes back.
    """
    now = utcnow()
    kind, subject = fitted(kind, _KIND_LIMIT), fitted(subject, _SUBJECT_LIMIT)
    existing = None
    if raw_id is not None or subject:
        existing = session.scalars(
            select(QuarantineEntry).where(
                QuarantineEntry.raw_id.is_(None) if raw_id is None else QuarantineEntry.raw_id == raw_id,
                QuarantineEntry.subject == subject,
                QuarantineEntry.stage == stage.value,
                QuarantineEntry.status == QuarantineStatus.OPEN.value,
            )
        ).first()
    if existing is not None:
        existing.last_seen = now
        existing.occurrences += 1
        existing.reason = reason
        existing.details = details or existing.details
        if order_id:
            existing.order_id = order_id
        session.flush()
        return existing
    entry = QuarantineEntry(
        raw_id=raw_id,
        system=system,
        kind=kind,
        stage=stage.value,
        subject=subject,
        reason=reason,
        details=details or {},
        order_id=order_id,
        first_seen=now,
        last_seen=now,
        occurrences=1,
        status=QuarantineStatus.OPEN.value,
    )
    session.add(entry)
    session.flush()
    return entry


def list_entries(
    session: Session,
    *,
    status: QuarantineStatus | None = QuarantineStatus.OPEN,
    stage: Stage | None = None,
    system: str | None = None,
    limit: int = 200,
) -> list[QuarantineEntry]:
    query = select(QuarantineEntry).order_by(QuarantineEntry.id)
    if status is not None:
        query = query.where(QuarantineEntry.status == status.value)
    if stage is not None:
        query = query.where(QuarantineEntry.stage == stage.value)
    if system is not None:
        query = query.where(QuarantineEntry.system == system)
    return list(session.scalars(query.limit(limit)))


def get(session: Session, entry_id: int) -> QuarantineEntry | None:
    return session.get(QuarantineEntry, entry_id)


def release(session: Session, entry: QuarantineEntry, resolution: str) -> None:
    """The payload went through on replay: keep the entry, close it with what fixed it.

    The archive row of its payload (for a `conflict` entry, of every payload that carried that
    version) goes from `quarantined` to `processed` once no other entry of it is open, as a payload
    mapped again on retry or replay does: otherwise the archive would call a payload unresolved
    whose events were applied (a correction, an event released by its late order)."""
    entry.status = QuarantineStatus.REPLAYED.value
    entry.resolved_at = utcnow()
    entry.resolution = resolution
    carried = {entry.raw_id}
    if entry.stage == Stage.CONFLICT.value:
        carried.update((entry.details or {}).get("raw_ids") or [])
    raw_ids = {r for r in carried if isinstance(r, int)}
    if not raw_ids:
        return
    waiting = session.scalars(
        select(QuarantineEntry.raw_id).where(
            QuarantineEntry.raw_id.in_(raw_ids),
            QuarantineEntry.status == QuarantineStatus.OPEN.value,
            QuarantineEntry.id != entry.id,
        )
    )
    settled = raw_ids.difference(waiting)
    if settled:
        session.execute(
            update(RawMessage)
            .where(RawMessage.id.in_(settled), RawMessage.status == "quarantined")
            .values(status="processed", processed_at=entry.resolved_at)
        )


def open_for_raw(session: Session, raw_id: int) -> list[QuarantineEntry]:
    return list(
        session.scalars(
            select(QuarantineEntry).where(
                QuarantineEntry.raw_id == raw_id, QuarantineEntry.status == QuarantineStatus.OPEN.value
            )
        )
    )
