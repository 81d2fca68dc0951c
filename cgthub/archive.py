"""Raw archive: every inbound payload is kept, encrypted at rest, before anything parses it.

Payloads carry PHI (an HL7 PID segment has names and birth dates), so the archive stores them
AES-GCM encrypted under the archive key; the checksum (SHA-256 of the clear bytes) is what mapped
events cite as provenance. A payload delivered again (same system, dedupe key and content) is
counted, not stored twice; the same dedupe key with other content is a new message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cgthub import alerts
from cgthub.bulk import BulkWrite, rows_by_pairs
from cgthub.settings import get_settings
from cgthub.store import race_guard
from cgthub.tables import RawMessage, text_limit, utcnow

_NONCE = 12
_RAW = RawMessage.__table__
_FOUND_COLUMNS = ("system", "dedupe_key", "id", "checksum", "status")
# Statements of the batch path, built once: on a small batch, building one costs more than running it.
_INSERT_RAW = BulkWrite(insert(_RAW).returning(_RAW.c.id, _RAW.c.system, _RAW.c.dedupe_key, _RAW.c.checksum))
_KEY_LIMIT = text_limit(_RAW.c.dedupe_key)
_KIND_LIMIT = text_limit(_RAW.c.kind)
_CONTENT_TYPE_LIMIT = text_limit(_RAW.c.content_type)
# A sender's key is held by a transaction-level advisory lock while its rows are looked up and written
# (PostgreSQL; SQLite has one writer). The two-integer form is a lock space of its own, apart from
# the single-key locks of the audit trail and the booking quotas; a key's number is 32 bits of its
# digest (two keys sharing one only wait for each other), taken in ascending order, once a batch.
# PostgreSQL keeps every lock in one shared table (64 a connection by default; 30,000 in one
# transaction ran it out here), so a batch of more keys than a listener's (500) takes the bulk lock
# alone, exclusive, where each smaller batch holds it shared before its keys; while a transaction holds
# it exclusive (outside a savepoint, which would let it go on rollback) its later batches take none.
# Two calls in one transaction are two rounds: a second round that needs a key below one the first
# took can deadlock with a transaction holding that key and waiting for the first's. A caller that
# archives a batch in parts (`pipeline.isolated` after a poison message) holds the batch's keys first
# (`hold`), in one round, so every later round finds its keys held. A record split out of a page and
# refused is archived in a round of its own, its key known only once the page is mapped: a deadlock
# there fails the page's batch, which `pipeline.isolated` runs again (holding the page's keys first).
_KEY_LOCKS, _BULK_LOCK = 0x63677452, 0x63677442  # "cgtR", "cgtB"
_MOST_KEYS = 500
_HOLD_KEYS = text(
    "SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared(:bulk, 0)) AS bulk UNION ALL "
    "SELECT 1 FROM (SELECT pg_advisory_xact_lock(:space, k) FROM unnest(CAST(:keys AS integer[])) "
    "WITH ORDINALITY AS t(k, n) ORDER BY n) AS keys"
)
_HOLD_ALL = text("SELECT pg_advisory_xact_lock(:bulk, 0)")
_ALL_HELD = "cgthub.archive.all_held"  # session.info: the transaction that holds the bulk lock exclusive
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


def fitted(value: str, limit: int) -> str:
    """`value` cut to a column of `limit` characters, the same way every time: a longer value keeps its
    head and ends in a digest of the whole, so two long values stay apart and a resend finds its copy."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[: min(32, limit // 2)]
    return f"{value[: limit - len(digest) - 1]}~{digest}"


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
    """Archive one inbound payload in the caller's transaction; idempotent on (system, dedupe_key, content)."""
    item = Inbound(system, kind, channel, payload, received_at or utcnow(), dedupe_key, content_type)
    return store_many(session, [item], status="received")[0]


def store_many(session: Session, items: Sequence[Inbound], *, status: str = "received") -> list[Archived]:
    """Archive a batch with one lookup and one multi-row INSERT (on PostgreSQL after one statement
    that holds the batch's keys, `_hold`, so a key reused by a concurrent writer is still seen).

    A payload is a duplicate when one with the same system, dedupe key and content is archived (or
    came earlier in the batch); it is counted, not stored. The same key with other content is a new
    message: archived, and an operator alert says the sender reused the key. `status` is what new
    rows start as: a caller that applies them in the same transaction passes "processed" and marks
    only the exceptions, instead of updating every row it just wrote.
    """
    digests = [checksum(item.payload) for item in items]
    keys = [_key(item, digest) for item, digest in zip(items, digests, strict=True)]
    contents = [(system, key, digest) for (system, key), digest in zip(keys, digests, strict=True)]
    _hold(session, keys)
    existing: dict[tuple[str, str, str], Archived] = {}
    holder: dict[tuple[str, str], int] = {}  # a key already held, by the raw id of its earliest content
    for system, key, raw_id, digest, row_status in rows_by_pairs(
        session, _RAW, _FOUND_COLUMNS, "system", "dedupe_key", keys
    ):
        existing[(system, key, digest)] = Archived(raw_id, digest, True, row_status)
        if raw_id < holder.get((system, key), raw_id + 1):
            holder[(system, key)] = raw_id
    new_rows: list[dict[str, object]] = []
    first_index: dict[tuple[str, str, str], int] = {}
    first_content: dict[tuple[str, str], tuple[str, str, str]] = {}  # each key's first new content here
    reused: list[tuple[tuple[str, str, str], tuple[str, str]]] = []  # new contents under a key already held
    for i, (item, content, key) in enumerate(zip(items, contents, keys, strict=True)):
        if content in existing or content in first_index:
            continue
        if key in holder or key in first_content:
            reused.append((content, key))
        first_index[content] = i
        first_content.setdefault(key, content)
        new_rows.append(_row(item, key[1], content[2], status))
    if new_rows:
        try:
            with race_guard(session):
                # One multi-row INSERT; the ids come back keyed by their content, so their order does
                # not matter (asking SQLite for them in parameter order makes it go row by row).
                inserted = _INSERT_RAW.returning(session.connection(), new_rows)
        except IntegrityError:
            # A concurrent writer archived one of these first: fall back to one by one.
            return [_store_one(session, item, status) for item in items]
        for raw_id, system, key, digest in inserted:
            existing[(system, key, digest)] = Archived(raw_id, digest, False, status)
    for content, key in reused:
        earlier = holder[key] if key in holder else existing[first_content[key]].raw_id
        alerts.control_id_reused(session, system=key[0], raw_id=existing[content].raw_id, earlier_raw_id=earlier)
    out: list[Archived] = []
    repeats: list[dict[str, object]] = []
    for i, content in enumerate(contents):
        found = existing[content]
        if first_index.get(content) == i:
            out.append(found)
        else:
            out.append(Archived(found.raw_id, found.checksum, True, found.status))
            repeats.append({"rid": found.raw_id, "at": items[i].received_at})
    if repeats:
        session.execute(
            update(_RAW)
            .where(_RAW.c.id == bindparam("rid"))
            .values(receive_count=_RAW.c.receive_count + 1, last_received_at=bindparam("at")),
            repeats,
        )
    return out


def hold(session: Session, items: Sequence[Inbound]) -> None:
    """Hold the keys of every payload in `items` until the transaction ends, in one round, for a caller
    that will archive them in several calls: each call then finds its keys held and waits for none.

    Without it a batch archived one payload at a time (retried in parts after a poison message) takes
    its keys in arrival order, one round each; a second round that needs a key below one already held
    can wait for a writer that holds it and waits, in ascending order, for the first: a deadlock, which
    PostgreSQL breaks after a second by failing one side. On SQLite it takes nothing."""
    _hold(session, [_key(item, checksum(item.payload)) for item in items])


def _key(item: Inbound, digest: str) -> tuple[str, str]:
    """The (system, dedupe key) a payload is archived and locked under; its digest without a key."""
    return item.system, fitted(item.dedupe_key or digest, _KEY_LIMIT)


def _hold(session: Session, keys: Sequence[tuple[str, str]]) -> None:
    """Hold these (system, key)s until the transaction ends, so that whether a key is held already is
    read only after every other writer of it has committed or rolled back.

    Without it two writers (two listeners on one PostgreSQL, a listener and a file drop) archiving
    other content under one key at once each read "no earlier row", insert, and commit: both rows
    kept, and the `control_id_reused` alert raised by neither. Now the second waits for the first's
    commit, then reads its row and raises the alert. The lock is taken before the lookup: taken after
    it, a writer could still decide on a read made before the other committed. A redelivery racing
    its copy waits too, and is then counted as a duplicate (it used to fail the insert and go one by
    one). One statement a batch; SQLite serializes writers on BEGIN IMMEDIATE and takes none."""
    if not keys or session.get_bind().dialect.name == "sqlite":
        return
    held_all = session.info.get(_ALL_HELD)
    if held_all is not None and held_all is session.get_transaction():
        return  # every key is held already: this transaction holds the bulk lock exclusive
    numbers = sorted({_lock_number(system, key) for system, key in keys})
    if len(numbers) > _MOST_KEYS:
        session.execute(_HOLD_ALL, {"bulk": _BULK_LOCK})
        if session.get_nested_transaction() is None:  # a savepoint's rollback would let it go
            session.info[_ALL_HELD] = session.get_transaction()
    else:
        session.execute(_HOLD_KEYS, {"bulk": _BULK_LOCK, "space": _KEY_LOCKS, "keys": numbers})


def _lock_number(system: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{system}\x00{key}".encode()).digest()[:4], "big", signed=True)


def _row(item: Inbound, key: str, digest: str, status: str) -> dict[str, object]:
    """The archive row of a new payload; the sender's labels cut to their columns (they are not the
    payload, which is kept whole): a 100-character message type must not make the insert fail."""
    return {
        "system": item.system,
        "kind": fitted(item.kind, _KIND_LIMIT),
        "channel": item.channel,
        "dedupe_key": key,
        "checksum": digest,
        "size": len(item.payload),
        "payload": seal(item.payload, _aad(item.system, digest)),
        "content_type": fitted(item.content_type, _CONTENT_TYPE_LIMIT),
        "received_at": item.received_at,
        "last_received_at": item.received_at,
        "receive_count": 1,
        "status": status,
    }


def _store_one(session: Session, item: Inbound, status: str) -> Archived:
    """`store_many` for one payload in a savepoint, for a writer that may lose a race to another."""
    digest = checksum(item.payload)
    key = _key(item, digest)[1]
    _hold(session, [(item.system, key)])  # held already when called from store_many's fallback
    found = _find(session, item.system, key, digest)
    if found is None:
        earlier = session.scalar(
            select(RawMessage.id)
            .where(RawMessage.system == item.system, RawMessage.dedupe_key == key)
            .order_by(RawMessage.id)
            .limit(1)
        )
        try:
            with session.begin_nested():
                raw_id = session.execute(
                    insert(_RAW).returning(_RAW.c.id), [_row(item, key, digest, status)]
                ).scalar_one()
        except IntegrityError:
            found = _find(session, item.system, key, digest)
            if found is None:
                raise
        else:
            if earlier is not None:
                alerts.control_id_reused(session, system=item.system, raw_id=raw_id, earlier_raw_id=earlier)
            return Archived(raw_id, digest, False, status)
    session.execute(
        update(RawMessage)
        .where(RawMessage.id == found.id)
        .values(receive_count=RawMessage.receive_count + 1, last_received_at=item.received_at)
    )
    return Archived(found.id, found.checksum, True, found.status)


def _find(session: Session, system: str, key: str, digest: str) -> RawMessage | None:
    return session.scalars(
        select(RawMessage).where(
            RawMessage.system == system, RawMessage.dedupe_key == key, RawMessage.checksum == digest
        )
    ).first()


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
