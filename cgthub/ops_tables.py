"""Tables of the operations side: reconciliation reports and which alerts were sent where.

reconciliation_reports  one row per reconciliation run: what was compared and every finding
alert_notifications     one row per alert sent to operators, so each alert is notified once
feed_cursors            how far the outbound router has read the change feed
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cgthub.tables import Base, BigId, utcnow


class ReconciliationReport(Base):
    __tablename__ = "reconciliation_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    orders_checked: Mapped[int] = mapped_column(Integer, default=0)
    records_checked: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    findings: Mapped[list[Any]] = mapped_column(default=list)


class AlertNotification(Base):
    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), unique=True)
    notified_at: Mapped[datetime] = mapped_column(default=utcnow)
    channels: Mapped[str] = mapped_column(String(100))
    webhook_status: Mapped[int | None] = mapped_column(Integer)


class FeedCursor(Base):
    """How far a consumer inside the hub (the outbound router) has read the change feed."""

    __tablename__ = "feed_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tx: Mapped[int] = mapped_column(BigInteger, default=0)
    change_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = ["AlertNotification", "FeedCursor", "ReconciliationReport"]
