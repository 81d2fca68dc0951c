"""Raw archive: every inbound payload is kept, encrypted at rest, before anything parses it.

Payloads carry PHI (an HL7 PID segment has names and birth dates), so the archive stores them
AES-GCM encrypted under the archive key; the checksum (SHA-256 of the clear bytes) is what mapped
events cite as provenance. A payload delivered again (same system and dedupe key) is counted, not
stored twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cgthub.bulk import BulkWrite, rows_by_pairs
from cgthub.settings import get_settings
from cgthub.store import race_guard
from cgthub.tables import RawMessage, utcnow

_NONCE = 12
_RAW = RawMessage.__table__
_FOUND_COLUMNS = ("system", "dedupe_key", "id", "checksum", "status")
# Statements of the batch path, built once: on a small batch, building one costs more than running it.
_INSERT_RAW = BulkWrite(insert(_RAW).returning(_RAW.c.id, _RAW.c.system, _RAW.c.dedupe_key))
_MARK = BulkWrite(
    update(_RAW).where(_RAW.c.id == bindparam("rid")).values(status=bindparam("st"), processed_at=bindparam("at"))
)


@dataclass(frozen=True)
class Archived:
    raw_id: int
    checksum: str
    duplicate: bool
    status: str


@dataclass(frozen=True)
class Inbound:
    """One payload as a connector or listener received it."""

    system: str
    kind: str
    channel: str
    payload: bytes
    received_at: datetime
    dedupe_key: str | None = None
    content_type: str = "application/octet-stream"


def checksum(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _cipher() -> AESGCM:
    """The key's cipher, set up once per key (about as dear as sealing one message)."""
    key = get_settings().archive_key
    cipher = _CIPHERS.get(key)
    if cipher is None:
        cipher = _CIPHERS[key] = AESGCM(key)
    return cipher


_CIPHERS: dict[bytes, AESGCM] = {}


def seal(payload: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + _cipher().encrypt(nonce, payload, aad)


def unseal(sealed: bytes, aad: bytes) -> bytes:
    return _cipher().decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


def store(
    session: Session,
    *,
    system: str,
    kind: str,
    channel: str,
    payload: bytes,
    received_at: datetime | None = None,
    dedupe_key: str | None = None,
    content_type: str = "application/octet-stream",
) -> Archived:
    """Archive one inbound payload in the caller's transaction; idempotent on (system, dedupe_key)."""
    digest = checksum(payload)
    key = dedupe_key or digest
    now = received_at or utcnow()
    existing = _find(session, system, key)
    if existing is None:
        row = RawMessage(
            system=system,
            kind=kind,
            channel=channel,
            dedupe_key=key,
            checksum=digest,
            size=len(payload),
            payload=seal(payload, _aad(system, digest)),
            content_type=content_type,
            received_at=now,
            last_received_at=now,
            receive_count=1,
            status="received",
        )
        try:
            with session.begin_nested():
                session.add(row)
            return Archived(row.id, digest, False, row.status)
        except IntegrityError:
            existing = _find(session, system, key)
            if existing is None:
                raise
    session.execute(
        update(RawMessage)
        .where(RawMessage.id == existing.id)
        .values(receive_count=RawMessage.receive_count + 1, last_received_at=now)
    )
    return Archived(existing.id, existing.checksum, True, existing.status)


def store_many(session: Session, items: Sequence[Inbound], *, status: str = "received") -> list[Archived]:
    """Archive a batch with one lookup and one multi-row INSERT; same semantics as `store` per item.

    A payload repeated inside the batch is a duplicate of its first occurrence. `status` is what new
    rows start as: a caller that applies them in the same transaction passes "processed" and marks
    only the exceptions, instead of updating every row it just wrote.
    """
    digests = [checksum(item.payload) for item in items]
    keys = [(item.system, item.dedupe_key or digest) for item, digest in zip(items, digests, strict=True)]
    existing: dict[tuple[str, str], Archived] = {}
    found = rows_by_pairs(session, _RAW, _FOUND_COLUMNS, "system", "dedupe_key", keys)
    for system, key, raw_id, digest, status in found:
        existing[(system, key)] = Archived(raw_id, digest, True, status)
    new_rows: list[dict[str, object]] = []
    first_index: dict[tuple[str, str], int] = {}
    for i, (item, digest, key) in enumerate(zip(items, digests, keys, strict=True)):
        if key in existing or key in first_index:
            continue
        first_index[key] = i
        new_rows.append(
            {
                "system": item.system,
                "kind": item.kind,
                "channel": item.channel,
                "dedupe_key": key[1],
                "checksum": digest,
                "size": len(item.payload),
                "payload": seal(item.payload, _aad(item.system, digest)),
                "content_type": item.content_type,
                "received_at": item.received_at,
                "last_received_at": item.received_at,
                "receive_count": 1,
                "status": status,
            }
        )
    if new_rows:
        try:
            with race_guard(session):
                # One multi-row INSERT; the ids come back keyed by (system, dedupe key), so their order
                # does not matter (asking SQLite for them in parameter order makes it go row by row).
                inserted = _INSERT_RAW.returning(session.connection(), new_rows)
        except IntegrityError:
            # A concurrent writer archived one of these first: fall back to one by one.
            return [
                store(
                    session,
                    system=i.system,
                    kind=i.kind,
                    channel=i.channel,
                    payload=i.payload,
                    received_at=i.received_at,
                    dedupe_key=i.dedupe_key,
                    content_type=i.content_type,
                )
                for i in items
            ]
        digest_of = {(str(row["system"]), str(row["dedupe_key"])): str(row["checksum"]) for row in new_rows}
        for raw_id, system, key in inserted:
            existing[(system, key)] = Archived(raw_id, digest_of[(system, key)], False, status)
    out: list[Archived] = []
    repeats: list[dict[str, object]] = []
    for i, key in enumerate(keys):
        found = existing[key]
        if first_index.get(key) == i:
            out.append(found)
        else:
            out.append(Archived(found.raw_id, found.checksum, True, found.status))
            repeats.append({"rid": found.raw_id, "at": items[i].received_at})
    if repeats:
        raw = RawMessage.__table__
        session.execute(
            update(raw)
            .where(raw.c.id == bindparam("rid"))
            .values(receive_count=raw.c.receive_count + 1, last_received_at=bindparam("at")),
            repeats,
        )
    return out


def _find(session: Session, system: str, key: str) -> RawMessage | None:
    return session.scalars(select(RawMessage).where(RawMessage.system == system, RawMessage.dedupe_key == key)).first()


def _aad(system: str, digest: str) -> bytes:
    return f"{system}:{digest}".encode()


def read(session: Session, raw_id: int) -> bytes:
    """The clear payload of an archived message (for mapping, replay and operators with access)."""
    row = session.get(RawMessage, raw_id)
    if row is None:
        raise LookupError(f"raw message {raw_id} is not in the archive")
    payload = unseal(row.payload, _aad(row.system, row.checksum))
    if checksum(payload) != row.checksum:
        raise ValueError(f"raw message {raw_id} does not match its checksum")
    return payload


def mark(session: Session, raw_id: int, status: str) -> None:
    """received -> processed | quarantined (| replayed)."""
    mark_many(session, {raw_id: status})


def mark_many(session: Session, statuses: dict[int, str]) -> None:
    if not statuses:
        return
    now = utcnow()
    _MARK.run(session.connection(), [{"rid": rid, "st": st, "at": now} for rid, st in statuses.items()])
