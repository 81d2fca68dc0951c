"""Raw archive: every inbound payload is kept, encrypted at rest, before anything parses it.

Payloads carry PHI (an HL7 PID segment has names and birth dates), so the archive stores them
AES-GCM encrypted under the archive key; the checksum (SHA-256 of the clear bytes) is what mapped
events cite as provenance. A payload delivered again (same system and dedupe key) is counted, not
stored twice.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cgthub.settings import get_settings
from cgthub.tables import RawMessage, utcnow

_NONCE = 12


@dataclass(frozen=True)
class Archived:
    raw_id: int
    checksum: str
    duplicate: bool
    status: str


def checksum(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _cipher() -> AESGCM:
    return AESGCM(get_settings().archive_key)


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
    session.execute(update(RawMessage).where(RawMessage.id == raw_id).values(status=status, processed_at=utcnow()))
