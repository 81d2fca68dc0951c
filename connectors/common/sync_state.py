"""Where each partner stream's incremental sync stands, and what its last run did.

The watermark only moves past records that were archived in a committed transaction, so a crash
between fetch and commit re-reads them next time (the archive and the ledger deduplicate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, Session, mapped_column

from cgthub import pipeline, routing
from cgthub.archive import Inbound
from cgthub.store import session_scope
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
    """What one pull did; becomes the Airflow task's XCom and the sync_state's last report."""

    partner: str
    stream: str
    payloads: int = 0
    records: int = 0
    appended: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: list[str] = field(default_factory=list)
    watermark_before: str | None = None
    watermark_after: str | None = None
    order_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def watermark(session: Session, partner: str, stream: str) -> datetime | None:
    state = session.get(SyncState, (partner, stream))
    return state.watermark if state else None


def cursor(session: Session, partner: str, stream: str) -> str | None:
    state = session.get(SyncState, (partner, stream))
    return state.cursor if state else None


def advance(
    session: Session, report: SyncReport, new_watermark: datetime | None, *, new_cursor: str | None = None
) -> None:
    """Record the run; the watermark only ever moves forward, the cursor moves when given."""
    state = session.get(SyncState, (report.partner, report.stream))
    if state is None:
        state = SyncState(partner=report.partner, stream=report.stream, watermark=None, updated_at=utcnow())
        session.add(state)
    if new_watermark is not None and (state.watermark is None or new_watermark > state.watermark):
        state.watermark = new_watermark
    if new_cursor is not None:
        state.cursor = new_cursor
    report.watermark_after = state.watermark.isoformat() if state.watermark else None
    state.updated_at = utcnow()
    state.last_report = report.as_dict()


def ingest_page(
    report: SyncReport,
    raw: bytes,
    *,
    system: str,
    kind: str,
    channel: str,
    content_type: str,
    records: int,
    problem: str | None = None,
    watermark: datetime | None = None,
    new_cursor: str | None = None,
    database_url: str | None = None,
) -> pipeline.IngestResult:
    """One page as received: archived, mapped and applied, counted in `report`, and the stream's
    watermark or cursor moved, all in one transaction (so the mark never passes an unarchived record)."""
    report.payloads += 1
    report.records += records
    item = Inbound(system, kind, channel, raw, utcnow(), content_type=content_type)
    with session_scope(database_url) as session:
        (result,) = pipeline.ingest_batch(session, [item], routing.mapper_for(session))
        report.appended += result.appended
        report.duplicates += result.duplicates
        report.quarantined += result.quarantined
        report.order_ids = sorted(set(report.order_ids) | result.order_ids)
        if problem:
            report.errors.append(f"page {report.payloads}: {problem} (archived as raw #{result.raw_id})")
        advance(session, report, watermark, new_cursor=new_cursor)
    return result
