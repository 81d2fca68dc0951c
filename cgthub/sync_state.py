"""Where each partner stream's incremental sync stands, and what its last run did.

The watermark only moves past records that were archived in a committed transaction, so a crash
between fetch and commit re-reads them next time (the archive and the ledger deduplicate).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, Session, mapped_column

from cgthub.tables import Base, utcnow


class SyncState(Base):
    __tablename__ = "sync_state"

    partner: Mapped[str] = mapped_column(String(32), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[datetime | None]
    cursor: Mapped[str | None] = mapped_column(String(200))  # for partners that page by sequence
    updated_at: Mapped[datetime]
    last_report: Mapped[dict[str, Any]] = mapped_column(default=dict)


@dataclass
class SyncReport:
    """What one pull (or one HL7 inbox run) did: the task's XCom and the stream's last report."""

    partner: str
    stream: str = ""
    via: list[str] = field(default_factory=list)
    payloads: int = 0
    duplicate_payloads: int = 0
    records: int = 0
    appended: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: list[str] = field(default_factory=list)
    watermark_before: str | None = None
    watermark_after: str | None = None
    order_ids: list[str] = field(default_factory=list)
    release: str = ""  # the release bundle id of the mapping and config files the run mapped with
    _started: float = field(default_factory=time.monotonic, init=False, repr=False, compare=False)

    @property
    def new_events(self) -> bool:
        return self.appended > 0

    @property
    def duration_seconds(self) -> float:
        """How long the run has taken so far: its stream's last record says how long the whole run
        took (the sync duration metric reads it there)."""
        return round(time.monotonic() - self._started, 3)

    def as_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "_started"}
        return {**fields, "new_events": self.new_events, "duration_seconds": self.duration_seconds}


def state(session: Session, partner: str, stream: str) -> SyncState | None:
    return session.get(SyncState, (partner, stream))


def watermark(session: Session, partner: str, stream: str) -> datetime | None:
    found = state(session, partner, stream)
    return found.watermark if found else None


def cursor(session: Session, partner: str, stream: str) -> str | None:
    found = state(session, partner, stream)
    return found.cursor if found else None


def advance(
    session: Session,
    partner: str,
    stream: str,
    report: SyncReport,
    new_watermark: datetime | None,
    *,
    new_cursor: str | None = None,
) -> None:
    """Record the run; the watermark only ever moves forward, the cursor moves when given."""
    row = state(session, partner, stream)
    if row is None:
        row = SyncState(partner=partner, stream=stream, watermark=None, updated_at=utcnow())
        session.add(row)
    if new_watermark is not None and (row.watermark is None or new_watermark > row.watermark):
        row.watermark = new_watermark
    if new_cursor is not None:
        row.cursor = new_cursor
    report.watermark_after = describe(row.watermark, row.cursor)
    row.updated_at = utcnow()
    row.last_report = report.as_dict()


def describe(mark: datetime | None, position: str | None) -> str | None:
    """A stream's position as operators read it: the cursor when it pages by sequence, else the time."""
    if position is not None:
        return position
    return mark.isoformat() if mark else None
