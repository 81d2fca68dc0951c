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
from cgthub.ledger_anchor import _keyed, _micros
from cgthub.settings import get_settings
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


def verify(session: Session, *, key: bytes | None = None) -> TrailVerification:
    """Every row's seal and its link to the row before; a gap in `seq` is a row deleted."""
    key = key if key is not None else get_settings().ledger_key
    result = TrailVerification()
    expected_seq, prev = 1, GENESIS
    for row in rows(session):
        result.rows += 1
        where = f"audit row #{row.id} (seq {row.seq})"
        if row.seq != expected_seq:
            result.problems.append(f"{where}: seq jumps from {expected_seq - 1} to {row.seq} (rows deleted)")
        if row.prev_mac != prev:
            result.problems.append(f"{where}: link to the row before is broken (row deleted, inserted or reordered)")
        seal = _seal(
            key,
            seq=row.seq,
            at_micros=_micros(row.at),
            actor=row.actor,
            action=row.action,
            subject=row.subject,
            details=row.details,
            prev=row.prev_mac,
        )
        if not hmac.compare_digest(seal, row.mac):
            result.problems.append(f"{where}: seal does not match under the ledger key (row edited or forged)")
        expected_seq, prev = row.seq + 1, row.mac
        result.head_seq = row.seq
    return result


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
