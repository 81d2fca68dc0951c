"""The API's own tables: hashed API keys, the access audit log, webhook subscriptions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cgthub.tables import Base, BigId, utcnow


class ApiKey(Base):
    """A bearer key. Only a SHA-256 of its secret is kept: the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[Any]]
    sites: Mapped[list[Any]]
    cmos: Mapped[list[Any]]
    markets: Mapped[list[Any]]
    all_data: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class ApiAccess(Base):
    """One line per request, allowed or not (21 CFR Part 11: who looked at what, when)."""

    __tablename__ = "api_access_log"
    __table_args__ = (
        Index("ix_api_access_key_at", "key_id", "at"),
        UniqueConstraint("request_id", name="uq_api_access_request"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    key_id: Mapped[str | None] = mapped_column(String(24))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(300))
    route: Mapped[str | None] = mapped_column(String(100))
    order_id: Mapped[str | None] = mapped_column(String(40), index=True)
    status_code: Mapped[int] = mapped_column(Integer)
    client: Mapped[str | None] = mapped_column(String(64))
    # Names the request in the API's local journal, so a row replayed after a crash is written once.
    request_id: Mapped[str | None] = mapped_column(String(32))


class WebhookSubscription(Base):
    """A consumer's URL for change-feed pushes; it sees what its creating key may see."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(24), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    statuses: Mapped[list[Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    cursor_tx: Mapped[int] = mapped_column(BigId, default=0)
    cursor_id: Mapped[int] = mapped_column(BigId, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = ["ApiAccess", "ApiKey", "WebhookSubscription"]
