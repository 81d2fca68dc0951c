"""Heartbeats of the hub's long-running loops, kept in the hub's database.

A loop records a beat each time it goes round: when, its interval, and how old a beat may grow
before the loop counts as down (it says so itself, so every reader judges it the same way). One row
per loop; replicas of the same loop share it (the newest beat wins). `/health/ready` reports a loop
`down` once its last beat is older than that, and `/metrics` exposes each beat's age. Nothing but
the loop's name, times and `host:pid` is stored.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

from sqlalchemy import String, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from cgthub.store import session_scope
from cgthub.tables import Base, utcnow

WEBHOOK_DELIVERY = "webhook-delivery"


class Heartbeat(Base):
    __tablename__ = "service_heartbeats"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    beat_at: Mapped[datetime]
    interval_seconds: Mapped[float]
    stale_after_seconds: Mapped[float]  # the loop is down once its last beat is older than this
    instance: Mapped[str] = mapped_column(String(200))  # host:pid of the last beat


def _instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def beat(database_url: str | None, service: str, *, interval: float, stale_after: float) -> None:
    """Record that `service` went round now (one short write transaction)."""
    values = {
        "beat_at": utcnow(),
        "interval_seconds": interval,
        "stale_after_seconds": stale_after,
        "instance": _instance(),
    }
    for attempt in range(2):
        try:
            with session_scope(database_url) as session:
                done = session.execute(update(Heartbeat).where(Heartbeat.service == service).values(**values))
                if not getattr(done, "rowcount", 0):
                    session.add(Heartbeat(service=service, **values))
            return
        except IntegrityError:  # another replica's first beat came first: update its row
            if attempt:
                raise


def age_seconds(heartbeat: Heartbeat, now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    at = heartbeat.beat_at if heartbeat.beat_at.tzinfo else heartbeat.beat_at.replace(tzinfo=UTC)
    return max(0.0, (now - at).total_seconds())


def last(session: Session, service: str) -> Heartbeat | None:
    return session.get(Heartbeat, service)
