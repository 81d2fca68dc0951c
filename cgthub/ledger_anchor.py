"""What anchors the ledger outside the database: keyed entry seals and signed checkpoints of heads.

An entry's `entry_hash` is plain SHA-256, so an EPCIS document can be checked with nothing but
itself; but then anyone who can write the database can also recompute a chain. Two anchors need
what the database does not hold:

- every entry carries `entry_mac`, HMAC-SHA-256 under CGTHUB_LEDGER_KEY over every column of the
  entry but its row id (the body through its hash): an edited, forged or re-chained entry needs it;
- `checkpoint` appends each chain head that moved (order, seq, head hash) to a JSON-lines file
  outside the database, each line signed with the key and linked to the line before it: a chain
  cut back, rewritten from a checkpointed entry on, or an order deleted, shows against it even
  though every entry left is genuine.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cgthub.bulk import rows_by_pairs
from cgthub.jsontext import canonical_json
from cgthub.settings import get_settings, ledger_checkpoint_path
from cgthub.tables import LedgerEntry, Order, utcnow

_ENTRY_DOMAIN = b"cgthub ledger entry\n"  # a seal and a checkpoint line are never each other
_CHECKPOINT_DOMAIN = b"cgthub ledger checkpoint\n"


@lru_cache(maxsize=4)
def _keyed(key: bytes, domain: bytes) -> hmac.HMAC:
    base = hmac.new(key, digestmod=hashlib.sha256)
    base.update(domain)
    return base


def entry_mac_base(key: bytes | None = None) -> hmac.HMAC:
    """The keyed state every seal starts from: copied per entry, the key is never re-derived."""
    return _keyed(key if key is not None else get_settings().ledger_key, _ENTRY_DOMAIN)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    """The instant in whole microseconds (what both stores keep), whatever offset it carries."""
    return (moment - _EPOCH) // _MICROSECOND


def entry_mac(
    base: hmac.HMAC,
    *,
    entry_hash: str,
    prev_hash: str,
    order_id: str,
    seq: int,
    source_system: str,
    source_event_id: str,
    event_type: str,
    occurred_at: datetime,
    recorded_at: datetime,
    raw_id: int | None,
) -> str:
    """The seal of one entry. `entry_hash` stands for the body (its SHA-256 covers it)."""
    fields = [
        entry_hash,
        prev_hash,
        order_id,
        seq,
        source_system,
        source_event_id,
        event_type,
        _micros(occurred_at),
        _micros(recorded_at),
        raw_id,
    ]
    try:
        material = orjson.dumps(fields)
    except orjson.JSONEncodeError:  # a lone surrogate: the standard library's text (then its error)
        material = canonical_json(fields).encode()
    mac = base.copy()
    mac.update(material)
    return mac.hexdigest()


def seal_of(base: hmac.HMAC, entry: LedgerEntry) -> str:
    return entry_mac(
        base,
        entry_hash=entry.entry_hash,
        prev_hash=entry.prev_hash,
        order_id=entry.order_id,
        seq=entry.seq,
        source_system=entry.source_system,
        source_event_id=entry.source_event_id,
        event_type=entry.event_type,
        occurred_at=entry.occurred_at,
        recorded_at=entry.recorded_at,
        raw_id=entry.raw_id,
    )


# checkpoints -----------------------------------------------------------------------------------


def database_identity(session: Session) -> str:
    """Which database a checkpoint line is about: the same from every host that reaches it."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        path = bind.engine.url.database or ""
        return f"sqlite:{Path(path).resolve() if path and path != ':memory:' else path}"
    name, schema = session.execute(select(func.current_database(), func.current_schema())).one()
    return f"{bind.dialect.name}:{name}/{schema}"


@dataclass
class CheckpointState:
    """The heads the signed checkpoints of one database last recorded."""

    heads: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # order -> (seq, head, at)
    lines: int = 0
    last_at: str | None = None
    last_mac: str = ""
    problems: list[str] = field(default_factory=list)


def _line_mac(key: bytes, record: dict[str, Any]) -> str:
    mac = _keyed(key, _CHECKPOINT_DOMAIN).copy()
    mac.update(canonical_json(record).encode())
    return mac.hexdigest()


def _read(handle: IO[bytes], database: str, key: bytes) -> CheckpointState:
    state = CheckpointState()
    handle.seek(0)
    for number, raw in enumerate(handle, start=1):
        try:
            record = orjson.loads(raw)
            mac = record.pop("mac")
            if record.get("database") != database:
                continue
        except (orjson.JSONDecodeError, AttributeError, KeyError):
            state.problems.append(f"checkpoint line {number} is not a checkpoint record (file edited)")
            continue
        if not hmac.compare_digest(str(mac), _line_mac(key, record)):
            state.problems.append(f"checkpoint line {number} is not signed with the ledger key (file edited)")
            continue
        if record.get("prev", "") != state.last_mac:
            state.problems.append(f"checkpoint line {number} does not follow the one before (lines removed)")
        state.lines += 1
        state.last_at = record["at"]
        state.last_mac = str(mac)
        for order_id, (seq, head) in record["heads"].items():
            state.heads[order_id] = (int(seq), str(head), record["at"])
    return state


@contextmanager
def _checkpoint_file(path: Path | None, *, write: bool) -> Iterator[IO[bytes] | None]:
    """The checkpoint file under an exclusive lock, so two writers never fork its chain of lines."""
    path = path or ledger_checkpoint_path()
    if not write and not path.exists():
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, (os.O_RDWR | os.O_CREAT | os.O_APPEND) if write else os.O_RDONLY, 0o600)
    with os.fdopen(fd, "a+b" if write else "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        yield handle


def read_checkpoints(session: Session, *, path: Path | None = None, key: bytes | None = None) -> CheckpointState:
    with _checkpoint_file(path, write=False) as handle:
        if handle is None:
            return CheckpointState()
        return _read(handle, database_identity(session), key if key is not None else get_settings().ledger_key)


@dataclass
class CheckpointResult:
    recorded: int
    orders: int
    path: Path
    problems: list[tuple[str, str]]  # (order id, what is wrong): heads not recorded


def checkpoint(session: Session, *, path: Path | None = None, key: bytes | None = None) -> CheckpointResult:
    """Append one signed line with every head that moved since the last checkpoint.

    A head is recorded only if it extends what was recorded before: a chain now shorter, or one
    whose entry at the recorded seq has another hash, is reported and left at its old record, so a
    checkpoint never blesses a truncation or a rewrite.
    """
    key = key if key is not None else get_settings().ledger_key
    path = path or ledger_checkpoint_path()
    database = database_identity(session)
    heads = {oid: (length, head) for oid, length, head in session.execute(_HEADS)}
    with _checkpoint_file(path, write=True) as handle:
        assert handle is not None
        state = _read(handle, database, key)
        problems = [("", problem) for problem in state.problems]
        problems += [(oid, "order recorded by a checkpoint is gone") for oid in state.heads.keys() - heads.keys()]
        moved = {oid: head for oid, head in heads.items() if state.heads.get(oid, (None, None))[:2] != head}
        grown = [(oid, state.heads[oid][0]) for oid, (length, _) in moved.items() if oid in state.heads]
        recorded_at_seq = {
            (oid, seq): digest
            for oid, seq, digest in rows_by_pairs(
                session, LedgerEntry.__table__, ("order_id", "seq", "entry_hash"), "order_id", "seq", grown
            )
        }
        for oid, known_seq in grown:
            length, _ = moved[oid]
            _, known_head, at = state.heads[oid]
            if length < known_seq:
                problems.append((oid, f"chain has {length} entries, the checkpoint of {at} recorded {known_seq}"))
            elif recorded_at_seq.get((oid, known_seq)) != known_head:
                problems.append((oid, f"entry {known_seq} is not the one the checkpoint of {at} recorded"))
            else:
                continue
            del moved[oid]
        if moved:
            record = {
                "database": database,
                "at": utcnow().isoformat(),
                "prev": state.last_mac,
                "heads": {oid: [length, head] for oid, (length, head) in sorted(moved.items())},
            }
            record["mac"] = _line_mac(key, record)
            handle.write(orjson.dumps(record) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    return CheckpointResult(len(moved), len(heads), path, problems)


_HEADS = select(Order.id, Order.ledger_length, Order.ledger_head)
