"""The hub's tables (SQLAlchemy 2.0 typed ORM). Alembic migrations in cgthub/migrations create them.

raw_messages   every inbound payload, encrypted at rest, before anything reads it
quarantine     what could not be parsed, mapped, validated or correlated, with a readable reason
ledger_entries the append-only, per-order hash-chained custody and status ledger
orders         the projection of each order's ledger (derived; rebuildable from the ledger)
order_keys     index from every partner reference and identity key to its order
quarantine_waiting_keys  the keys an event waiting for its order would be found by
alerts         what an operator must look at
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: every time must carry its offset")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Any) -> Any:
        """On SQLite, the text SQLAlchemy's DATETIME would store, written in one step: the hot write
        path binds several times per message, and the two-stage default is slow. A batch
        binds one moment many times (its receipt, its recording): the last one's text is kept."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        last: tuple[datetime | None, str | None] = (None, None)

        def process(value: datetime | None) -> str | None:
            nonlocal last
            if value is None:
                return None
            seen = last  # one read: another thread may replace it, never half of it
            if seen[0] is value:  # datetimes are immutable: the same object has the same text
                return seen[1]
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the store: every time must carry its offset")
            utc = value.astimezone(UTC) if value.utcoffset() else value
            text = utc.isoformat(" ", "microseconds")[:26]  # YYYY-MM-DD HH:MM:SS.ffffff
            last = (value, text)
            return text

        return process


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}

    if TYPE_CHECKING:
        # Every model here maps one Table; DeclarativeBase only promises some FromClause.
        __table__: ClassVar[Table]


def text_limit(column: Column[Any]) -> int:
    """The most characters a String column keeps: values are checked against it before an insert,
    so SQLite (which keeps any length) and PostgreSQL (which fails the statement) answer alike."""
    length = cast(String, column.type).length
    if length is None:
        raise TypeError(f"column {column.name} has no length")
    return length


class RawMessage(Base):
    """One payload as received. A sender's delivery id (dedupe key) names a message only together
    with its content: a key reused for other content is another message, kept and applied."""

    __tablename__ = "raw_messages"
    __table_args__ = (UniqueConstraint("system", "dedupe_key", "checksum", name="uq_raw_system_dedupe_content"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    system: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    checksum: Mapped[str] = mapped_column(String(64))  # with (system, dedupe_key): what a duplicate is
    size: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(64), default="application/octet-stream")
    received_at: Mapped[datetime] = mapped_column(index=True)
    last_received_at: Mapped[datetime]
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="received", index=True)
    processed_at: Mapped[datetime | None]


class QuarantineEntry(Base):
    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_status_stage", "status", "stage"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("raw_messages.id"), index=True)
    system: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(300), default="", index=True)
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    order_id: Mapped[str | None] = mapped_column(String(40), index=True)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="open")
    resolved_at: Mapped[datetime | None]
    resolution: Mapped[str | None] = mapped_column(Text)


class WaitingKey(Base):
    """A key by which an event quarantined for want of an order would find it: registering the key
    for an order replays exactly the events waiting on it, without reading the whole quarantine."""

    __tablename__ = "quarantine_waiting_keys"
    __table_args__ = (Index("ix_quarantine_waiting_keys_key", "kind", "value"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    quarantine_id: Mapped[int] = mapped_column(ForeignKey("quarantine.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(200))


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    therapy: Mapped[str | None] = mapped_column(String(64))
    market: Mapped[str | None] = mapped_column(String(2), index=True)
    site: Mapped[str | None] = mapped_column(String(64), index=True)
    cmo: Mapped[str | None] = mapped_column(String(64))
    coi_id: Mapped[str | None] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(32), index=True)
    on_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    status_since: Mapped[datetime | None]
    projection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_event_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    ledger_length: Mapped[int] = mapped_column(Integer, default=0)
    ledger_head: Mapped[str] = mapped_column(String(64), default="")
    projected_length: Mapped[int] = mapped_column(Integer, default=0)


class OrderKey(Base):
    """One partner reference or identity key (coi_id, din, lot) and the order it belongs to."""

    __tablename__ = "order_keys"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_order_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(200))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("order_id", "seq", name="uq_ledger_order_seq"),
        UniqueConstraint("source_system", "source_event_id", name="uq_ledger_source_event"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No index of its own: uq_ledger_order_seq leads with order_id and serves every lookup by order.
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"))
    seq: Mapped[int] = mapped_column(Integer)
    source_system: Mapped[str] = mapped_column(String(32))
    source_event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("raw_messages.id"))
    body: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA-256 under the ledger key (kept outside the database) over every column above but id.
    entry_mac: Mapped[str | None] = mapped_column(String(64))


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("dedupe_key", name="uq_alert_dedupe"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[str | None] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dedupe_key: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]


# operators, their signed decisions, the audit trail of people ----------------------------------


class Operator(Base):
    """A person who may sign decisions. Only a scrypt hash of the password is kept."""

    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the user id typed when signing
    scopes: Mapped[list[Any]]
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]


class OperatorDecision(Base):
    """One signed decision: who, meaning, why, when, and a hash of the state the signer saw."""

    __tablename__ = "operator_decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(200))  # e.g. "order:ORD-..", "alert:12", "outbox:crm"
    order_id: Mapped[str | None] = mapped_column(String(40), index=True)
    signer: Mapped[str] = mapped_column(String(64))
    meaning: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str] = mapped_column(String(40))
    reason_text: Mapped[str] = mapped_column(Text)
    shown_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime]
    outcome: Mapped[dict[str, Any]] = mapped_column(default=dict)


# The rows the lockout counts: a refused signature whose password was wrong (decisions.run writes
# them). The query repeats this text so both databases match it to the partial index below.
SIGNATURE_REFUSED = "action = 'decision.refused' AND details LIKE '%\"why\":\"signature_refused\"%'"


class AuditRecord(Base):
    """One action of a person, chained to the one before under the ledger key (see audit_trail)."""

    __tablename__ = "audit_trail"
    __table_args__ = (
        UniqueConstraint("seq", name="uq_audit_trail_seq"),
        # The signature lockout's count (decisions.locked_until): one signer's refused passwords in a
        # window. Partial, so it holds those rows alone: ordinary appends do not pay for it, and a
        # guesser's refusals while locked out (why=signer_locked) are not read by anyone's check.
        Index(
            "ix_audit_trail_signature_refusals",
            "actor",
            "at",
            sqlite_where=text(SIGNATURE_REFUSED),
            postgresql_where=text(SIGNATURE_REFUSED),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON, the text the seal covers
    prev_mac: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class CustodySigningKey(Base):
    """A public key custody exports have been signed with (cgthub.custody_signing), kept in the
    database so every API replica publishes every key any of them signed with, across restarts."""

    __tablename__ = "custody_signing_keys"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)  # 'ed25519:' + 16 hex
    public_key_pem: Mapped[str] = mapped_column(Text)
    first_used: Mapped[datetime]


__all__ = ["Alert", "Base", "LedgerEntry", "Order", "OrderKey", "QuarantineEntry", "RawMessage"]
