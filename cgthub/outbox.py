"""The transactional outbox: what the hub must push to a partner, written in the same transaction as the change.

A message is enqueued with the business change that caused it, so "committed" means "will be sent".
Drainers claim due messages under a lease (FOR UPDATE SKIP LOCKED on PostgreSQL, so concurrent
drainers never take the same row; SQLite serializes writers anyway), deliver them outside the
transaction, then mark them delivered or failed. A failure is retried with exponential backoff and
jitter; after `max_attempts` the message is dead until an operator replays it. A drainer that dies
mid-delivery loses only its lease: the message becomes due again (at-least-once, so receivers
de-duplicate on the idempotency key).

    pending --claim--> (leased) --mark_delivered--> delivered
                              \\--mark_failed--> failed --(due again)--> ... --> dead --replay_dead--> pending
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from cgthub.tables import Base, BigId, utcnow

DEFAULT_MAX_ATTEMPTS = 8
BASE_DELAY = timedelta(seconds=5)
MAX_DELAY = timedelta(hours=1)
LEASE = timedelta(minutes=2)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    FAILED = "failed"  # retryable: due again at next_attempt_at
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up: an operator replays it


@dataclass(frozen=True)
class Destination:
    """Where a message goes: a kind of channel (webhook, crm, erp, hl7) and which one of that kind."""

    kind: str
    id: str


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "destination_kind", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    destination_kind: Mapped[str] = mapped_column(String(32))
    destination_id: Mapped[str] = mapped_column(String(100))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_ATTEMPTS)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

    @property
    def destination(self) -> Destination:
        return Destination(self.destination_kind, self.destination_id)


def enqueue(
    session: Session,
    destination: Destination,
    key: str,
    payload: dict[str, Any],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> OutboxMessage:
    """Queue one message in the caller's transaction; the same idempotency key is queued once."""
    existing = session.scalars(select(OutboxMessage).where(OutboxMessage.idempotency_key == key)).first()
    if existing is not None:
        return existing
    message = OutboxMessage(
        destination_kind=destination.kind,
        destination_id=destination.id,
        idempotency_key=key,
        payload=payload,
        status=OutboxStatus.PENDING.value,
        attempts=0,
        max_attempts=max_attempts,
        next_attempt_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(message)
    except IntegrityError:
        found = session.scalars(select(OutboxMessage).where(OutboxMessage.idempotency_key == key)).first()
        if found is None:
            raise
        return found
    return message


def claim(session: Session, destination_kind: str, limit: int = 50, *, lease: timedelta = LEASE) -> list[OutboxMessage]:
    """Take up to `limit` due messages of one kind for delivery and lease them.

    The caller commits right after claiming (so other drainers see the lease), delivers, then calls
    mark_delivered / mark_failed in a new transaction. An expired lease makes a message due again.
    """
    now = utcnow()
    query = (
        select(OutboxMessage)
        .where(
            OutboxMessage.destination_kind == destination_kind,
            OutboxMessage.status.in_([OutboxStatus.PENDING.value, OutboxStatus.FAILED.value]),
            OutboxMessage.next_attempt_at <= now,
        )
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    messages = list(session.scalars(query.execution_options(populate_existing=True)))
    for message in messages:
        message.next_attempt_at = now + lease
    session.flush()
    return messages


def backoff(attempts: int, *, base: timedelta = BASE_DELAY, cap: timedelta = MAX_DELAY) -> timedelta:
    """Exponential backoff with full jitter: a random delay in [base/2, min(cap, base * 2**(attempts-1))]."""
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=random.uniform(min(base.total_seconds() / 2, ceiling), ceiling))


def mark_delivered(session: Session, message: OutboxMessage) -> None:
    row = _reload(session, message)
    row.attempts += 1
    row.status = OutboxStatus.DELIVERED.value
    row.delivered_at = utcnow()
    row.last_error = None
    session.flush()


def mark_failed(
    session: Session, message: OutboxMessage, error: str, *, retry_after: timedelta | None = None
) -> OutboxMessage:
    """Count a failed attempt: retry later with backoff, or dead once max_attempts is reached.

    `retry_after` is the receiver's own Retry-After (429, 503): the next attempt waits at least that
    long, at most MAX_DELAY, so a receiver asking for an hour is not knocked on after 5 seconds."""
    row = _reload(session, message)
    row.attempts += 1
    row.last_error = error[:2000]
    if row.attempts >= row.max_attempts:
        row.status = OutboxStatus.DEAD.value
    else:
        row.status = OutboxStatus.FAILED.value
        delay = backoff(row.attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_DELAY))
        row.next_attempt_at = utcnow() + delay
    session.flush()
    return row


def postpone(session: Session, message: OutboxMessage, until: datetime) -> None:
    """Put a claimed message back, not attempted and not counted, due at `until` (its destination
    just failed to answer another message: trying it again at once would only wait as long)."""
    row = _reload(session, message)
    row.next_attempt_at = until
    session.flush()


def replay_dead(
    session: Session,
    *,
    destination_kind: str | None = None,
    destination_id: str | None = None,
    message_ids: list[int] | None = None,
) -> int:
    """Give dead messages a fresh set of attempts (operator action after fixing the receiver)."""
    query = update(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD.value)
    if destination_kind is not None:
        query = query.where(OutboxMessage.destination_kind == destination_kind)
    if destination_id is not None:
        query = query.where(OutboxMessage.destination_id == destination_id)
    if message_ids is not None:
        query = query.where(OutboxMessage.id.in_(message_ids))
    result = session.execute(
        query.values(status=OutboxStatus.PENDING.value, attempts=0, next_attempt_at=utcnow()).execution_options(
            synchronize_session=False
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def messages(
    session: Session,
    *,
    destination_kind: str | None = None,
    destination_id: str | None = None,
    status: OutboxStatus | None = None,
    limit: int = 100,
) -> list[OutboxMessage]:
    query = select(OutboxMessage).order_by(OutboxMessage.id).limit(limit)
    if destination_kind is not None:
        query = query.where(OutboxMessage.destination_kind == destination_kind)
    if destination_id is not None:
        query = query.where(OutboxMessage.destination_id == destination_id)
    if status is not None:
        query = query.where(OutboxMessage.status == status.value)
    return list(session.scalars(query))


def _reload(session: Session, message: OutboxMessage) -> OutboxMessage:
    row = session.get(OutboxMessage, message.id, populate_existing=True)
    if row is None:
        raise LookupError(f"outbox message {message.id} does not exist")
    return row


__all__ = [
    "Destination",
    "OutboxMessage",
    "OutboxStatus",
    "backoff",
    "claim",
    "enqueue",
    "mark_delivered",
    "mark_failed",
    "messages",
    "postpone",
    "replay_dead",
]
