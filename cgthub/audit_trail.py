"""The audit trail of people: who did what, append-only and chained like the ledger.

Every operator decision, API key creation or revocation, mapping replay, configuration change (a
YAML file of the configuration directory added, edited or removed, noted the next time the hub
looks) and console sign-in is one row. Each row carries `seq` (1, 2, 3, ... with no gap), the seal of the row
before it (`prev_mac`) and its own seal: HMAC-SHA-256 under the ledger key (kept outside the
database) over every column but the row id. So `verify` finds a row edited (its seal), deleted
(a gap in `seq` and a broken link) or inserted (a seal nobody without the key can make). Details
are facts the hub itself writes (ids, codes, counts), never a patient's identifiers.

Rows are written in the caller's transaction: the action and its record commit together or not at
all. Appends serialize on a transaction-level advisory lock (PostgreSQL) or on SQLite's single
writer, and the unique `seq` backs that up.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import hmac
import io
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cgthub.jsontext import canonical_json
from cgthub.ledger_anchor import _checkpoint_file, _keyed, _line_mac, _micros, _read, database_identity
from cgthub.settings import get_settings, ledger_checkpoint_path
from cgthub.tables import AuditRecord, text_limit, utcnow

_DOMAIN = b"cgthub audit trail\n"  # a trail seal is never a ledger seal or a checkpoint line
_LOCK_ID = 0x63677441  # "cgtA": the advisory lock that serializes appends on PostgreSQL
GENESIS = ""
_ACTOR_LIMIT = text_limit(AuditRecord.__table__.c.actor)
_SUBJECT_LIMIT = text_limit(AuditRecord.__table__.c.subject)

# Who acts in this context when a caller does not say: the console sets the signed-in user.
_actor: ContextVar[str | None] = ContextVar("cgthub_audit_actor", default=None)


def cli_actor() -> str:
    """The person behind a command: CGTHUB_OPERATOR if set, else the operating-system account."""
    named = get_settings().operator.strip()
    if named:
        return named
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"os:uid-{os.getuid()}"


def acting_as(actor: str) -> Any:
    """Make `actor` the default actor of `record` in this context; returns the token to reset."""
    return _actor.set(actor)


def current_actor() -> str:
    return _actor.get() or cli_actor()


def _seal(
    key: bytes, *, seq: int, at_micros: int, actor: str, action: str, subject: str, details: str, prev: str
) -> str:
    mac = _keyed(key, _DOMAIN).copy()
    mac.update(orjson.dumps([seq, at_micros, actor, action, subject, details, prev]))
    return mac.hexdigest()


def record(
    session: Session,
    action: str,
    subject: str = "",
    details: dict[str, Any] | None = None,
    *,
    actor: str | None = None,
) -> AuditRecord:
    """Append one row to the trail in the caller's transaction (the action commits with it)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": _LOCK_ID})
    last = session.execute(select(AuditRecord.seq, AuditRecord.mac).order_by(AuditRecord.seq.desc()).limit(1)).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    who = (actor or current_actor())[:_ACTOR_LIMIT]
    at = utcnow()
    body = canonical_json(details or {})
    subject = subject[:_SUBJECT_LIMIT]
    row = AuditRecord(
        seq=seq,
        at=at,
        actor=who,
        action=action,
        subject=subject,
        details=body,
        prev_mac=prev,
        mac=_seal(
            get_settings().ledger_key,
            seq=seq,
            at_micros=_micros(at),
            actor=who,
            action=action,
            subject=subject,
            details=body,
            prev=prev,
        ),
    )
    session.add(row)
    session.flush()
    return row


def sealed(row: AuditRecord, *, key: bytes | None = None) -> bool:
    """Whether the row's own seal matches its columns under the ledger key (not edited since written;
    `verify` checks the chain besides)."""
    seal = _seal(
        key if key is not None else get_settings().ledger_key,
        seq=row.seq,
        at_micros=_micros(row.at),
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=row.details,
        prev=row.prev_mac,
    )
    return hmac.compare_digest(seal, row.mac)


def rows(session: Session, *, since_seq: int = 0, batch: int = 2000) -> Iterator[AuditRecord]:
    """Every row in `seq` order, read in batches."""
    after = since_seq
    while True:
        page = list(
            session.scalars(select(AuditRecord).where(AuditRecord.seq > after).order_by(AuditRecord.seq).limit(batch))
        )
        yield from page
        if len(page) < batch:
            return
        after = page[-1].seq


@dataclass
class TrailVerification:
    rows: int = 0
    head_seq: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session, *, key: bytes | None = None, checkpoints: Path | None = None) -> TrailVerification:
    """Every row's seal and its link to the row before; a gap in `seq` is a row deleted.

    The newest rows leave no gap when cut off, so the trail must also reach the head its signed
    checkpoint (outside the database) recorded, with the same seal there."""
    key = key if key is not None else get_settings().ledger_key
    return _verify(session, key, read_checkpoint(session, path=checkpoints, key=key))


def _verify(session: Session, key: bytes, anchor: TrailAnchor) -> TrailVerification:
    result = TrailVerification()
    seal_at_anchor: str | None = None
    expected_seq, prev = 1, GENESIS
    for row in rows(session):
        result.rows += 1
        where = f"audit row #{row.id} (seq {row.seq})"
        if row.seq != expected_seq:
            result.problems.append(f"{where}: seq jumps from {expected_seq - 1} to {row.seq} (rows deleted)")
        if row.prev_mac != prev:
            result.problems.append(f"{where}: link to the row before is broken (row deleted, inserted or reordered)")
        if not sealed(row, key=key):
            result.problems.append(f"{where}: seal does not match under the ledger key (row edited or forged)")
        expected_seq, prev = row.seq + 1, row.mac
        result.head_seq = row.seq
        if anchor.head is not None and row.seq == anchor.head[0]:
            seal_at_anchor = row.mac
    result.problems += anchor.problems
    if anchor.head is not None:
        anchored_seq, anchored_seal, anchored_at = anchor.head
        if result.head_seq < anchored_seq:
            result.problems.append(
                f"trail ends at seq {result.head_seq}, the checkpoint of {anchored_at} recorded seq {anchored_seq}"
                " (newest rows deleted)"
            )
        elif seal_at_anchor != anchored_seal:
            result.problems.append(
                f"audit row seq {anchored_seq} is not the one the checkpoint of {anchored_at} recorded"
                " (trail rewritten)"
            )
    return result


# checkpoints of the trail's head ----------------------------------------------------------------

_HEAD_NAME = "audit-trail"  # the one head an audit checkpoint line records


def audit_checkpoint_path() -> Path:
    """Next to the ledger's checkpoint file (so a deployment keeps both where it keeps one)."""
    ledger = ledger_checkpoint_path()
    return ledger.with_name(f"{ledger.stem}.audit{ledger.suffix or '.jsonl'}")


@dataclass
class TrailAnchor:
    head: tuple[int, str, str] | None = None  # (seq, seal, when checkpointed)
    problems: list[str] = field(default_factory=list)


def read_checkpoint(session: Session, *, path: Path | None = None, key: bytes | None = None) -> TrailAnchor:
    """The head the trail's signed checkpoint file last recorded for this database."""
    key = key if key is not None else get_settings().ledger_key
    with _checkpoint_file(path or audit_checkpoint_path(), write=False) as handle:
        if handle is None:
            return TrailAnchor()
        state = _read(handle, database_identity(session), key)
    problems = [problem.replace("checkpoint line", "audit checkpoint line") for problem in state.problems]
    return TrailAnchor(state.heads.get(_HEAD_NAME), problems)


@dataclass
class TrailCheckpoint:
    recorded: bool
    head_seq: int
    path: Path
    problems: list[str]


def checkpoint(session: Session, *, path: Path | None = None, key: bytes | None = None) -> TrailCheckpoint:
    """Append one signed line with the trail's head (seq, seal) if it moved since the last line.

    A trail that no longer verifies (shorter than, or different at, the recorded head) is reported
    and not recorded, so a checkpoint never blesses a cut or a rewrite."""
    key = key if key is not None else get_settings().ledger_key
    path = path or audit_checkpoint_path()
    last = session.execute(select(AuditRecord.seq, AuditRecord.mac).order_by(AuditRecord.seq.desc()).limit(1)).first()
    head = (int(last[0]), str(last[1])) if last else (0, GENESIS)
    with _checkpoint_file(path, write=True) as handle:
        assert handle is not None
        state = _read(handle, database_identity(session), key)
        anchored = TrailAnchor(state.heads.get(_HEAD_NAME), list(state.problems))
        problems = _verify(session, key, anchored).problems
        known = state.heads.get(_HEAD_NAME)
        moved = head[0] > 0 and (known is None or known[:2] != head)
        if moved and not problems:
            line: dict[str, Any] = {
                "database": database_identity(session),
                "at": utcnow().isoformat(),
                "prev": state.last_mac,
                "heads": {_HEAD_NAME: list(head)},
            }
            line["mac"] = _line_mac(key, line)
            handle.write(orjson.dumps(line) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    return TrailCheckpoint(moved and not problems, head[0], path, problems)


EXPORT_COLUMNS = ("seq", "at", "actor", "action", "subject", "details", "prev_mac", "mac")


def export_rows(session: Session) -> Iterator[dict[str, Any]]:
    for row in rows(session):
        yield {
            "seq": row.seq,
            "at": row.at.isoformat(),
            "actor": row.actor,
            "action": row.action,
            "subject": row.subject,
            "details": orjson.loads(row.details),
            "prev_mac": row.prev_mac,
            "mac": row.mac,
        }


def export_text(session: Session, fmt: str) -> str:
    """The whole trail as CSV (details as JSON text) or as a JSON array."""
    items = list(export_rows(session))
    if fmt == "json":
        return orjson.dumps(items, option=orjson.OPT_INDENT_2).decode() + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in items:
        writer.writerow({**item, "details": canonical_json(item["details"])})
    return out.getvalue()


CONFIG_CHANGED = "config.changed"


def config_dir() -> Path:
    return get_settings().config_dir


def config_fingerprints(root: Path | None = None) -> dict[str, str]:
    """SHA-256 of every YAML file of the configuration directory, by path relative to it."""
    root = root or config_dir()
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.yaml"))
        if path.is_file()
    }


def record_config_changes(session: Session, root: Path | None = None) -> AuditRecord | None:
    """A row naming the configuration files added, changed or removed since the last such row.

    Who edited a file is not known to the hub: the actor is `config-files`; the row says when the
    hub first saw the change (at the next decision, `cgthub audit config`, or a monitoring run)."""
    now = config_fingerprints(root)
    last = session.scalars(
        select(AuditRecord.details)
        .where(AuditRecord.action == CONFIG_CHANGED)
        .order_by(AuditRecord.seq.desc())
        .limit(1)
    ).first()
    before: dict[str, str] = orjson.loads(last)["files"] if last else {}
    changed = sorted(name for name in now.keys() | before.keys() if now.get(name) != before.get(name))
    if not changed:
        return None
    return record(session, CONFIG_CHANGED, "config", {"changed": changed, "files": now}, actor="config-files")
