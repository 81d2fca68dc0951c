"""Re-map archived payloads with another mapping version, and compare two versions on them.

Replay never edits the ledger. For each archived payload it maps again and compares each event
with the one the ledger holds for the same source event: identical content appends nothing (so a
second replay is a no-op), different content appends a correction `<id>@v<N>` that supersedes the
old entry, and a payload that sat in quarantine and now maps goes through and its entry is closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, ledger, quarantine
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.fixtures import normalize
from cgthub.mapping.registry import kind_dir, load_file, versions
from cgthub.model import CanonicalEvent
from cgthub.pipeline import PayloadRejected
from cgthub.pseudonym import mask
from cgthub.tables import LedgerEntry, RawMessage

_VERSION_SUFFIX = re.compile(r"@v\d+$")


@dataclass
class ReplayReport:
    payloads: int = 0
    unchanged: int = 0
    corrected: int = 0
    added: int = 0
    released: int = 0
    still_failing: int = 0
    no_longer_produced: int = 0
    quarantined: int = 0
    failures: list[str] = field(default_factory=list)


def archived(session: Session, system: str, kind: str, since: datetime | None = None) -> Iterator[RawMessage]:
    """Archived payloads of this system and kind (and of kinds the mapping also maps), oldest first."""
    kinds = {kind, kind.replace("_", "^")}
    for mapping in versions(system, kind):
        kinds.update(load_file(mapping.path).spec.also_for)
    query = select(RawMessage).where(RawMessage.system == system, RawMessage.kind.in_(sorted(kinds)))
    if since is not None:
        query = query.where(RawMessage.received_at >= since)
    yield from session.scalars(query.order_by(RawMessage.id))


def base_id(source_event_id: str) -> str:
    return _VERSION_SUFFIX.sub("", source_event_id)


def replay(
    session: Session,
    mapper: CompiledMapping,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Re-map every archived payload of the mapper's system/kind (in the caller's transaction)."""
    report = ReplayReport()
    rows = list(archived(session, mapper.spec.system.value, kind_dir(mapper.spec.kind), since))
    for done, row in enumerate(rows, start=1):
        report.payloads += 1
        _replay_one(session, mapper, row, report)
        if progress:
            progress(done, len(rows))
    return report


def _replay_one(session: Session, mapper: CompiledMapping, row: RawMessage, report: ReplayReport) -> None:
    payload = archive.read(session, row.id)
    try:
        fresh = mapper.map(payload, raw_id=row.id, checksum=row.checksum, received_at=row.received_at)
    except PayloadRejected as rejected:
        report.still_failing += 1
        report.failures.append(f"raw #{row.id}: {rejected.reason}")
        return
    current = _current_events(session, row.id)
    to_append: list[CanonicalEvent] = []
    for event in fresh:
        base = base_id(event.source_event_id)
        old = current.pop(base, None)
        if old is None:
            to_append.append(event)
            report.added += 1
        elif _content(old) == _content(event):
            report.unchanged += 1
        else:
            to_append.append(
                event.model_copy(
                    update={"source_event_id": f"{base}@{mapper.version}", "supersedes": old.source_event_id}
                )
            )
            report.corrected += 1
    report.no_longer_produced += len(current)
    outcomes = ledger.append_many(session, to_append)
    report.quarantined += sum(1 for o in outcomes if o.status == "quarantined")
    waiting = [
        e
        for e in quarantine.open_for_raw(session, row.id)
        if e.stage in (quarantine.Stage.PARSE, quarantine.Stage.MAP, quarantine.Stage.VALIDATE)
    ]
    if waiting and not any(o.status == "quarantined" for o in outcomes):
        for entry in waiting:
            quarantine.release(session, entry, f"mapped by {mapper.mapping_id}@{mapper.version} on replay")
            report.released += 1
        archive.mark(session, row.id, "processed")


def _current_events(session: Session, raw_id: int) -> dict[str, CanonicalEvent]:
    """The ledger's live event per base source id for one payload (corrections replace originals)."""
    entries = session.scalars(select(LedgerEntry).where(LedgerEntry.raw_id == raw_id).order_by(LedgerEntry.id)).all()
    events = [CanonicalEvent.model_validate_json(e.body) for e in entries]
    superseded = {e.supersedes for e in events if e.supersedes}
    return {base_id(e.source_event_id): e for e in events if e.source_event_id not in superseded}


def _content(event: CanonicalEvent) -> dict[str, Any]:
    data = normalize(event.to_json_dict())
    data.pop("source_event_id", None)
    data.pop("supersedes", None)
    return data


# diff ------------------------------------------------------------------------------------------
@dataclass
class FieldChange:
    field: str
    changed: int = 0
    added: int = 0
    removed: int = 0
    example: str = ""


def diff(
    payloads: list[tuple[str, bytes]], old: CompiledMapping, new: CompiledMapping
) -> tuple[int, list[FieldChange]]:
    """Which canonical fields the two versions fill differently on these payloads."""
    changes: dict[str, FieldChange] = {}
    compared = 0
    for _label, payload in payloads:
        a, b = _safe_map(old, payload), _safe_map(new, payload)
        compared += 1
        by_id_a = {base_id(e.source_event_id): _flat(_content(e)) for e in a}
        by_id_b = {base_id(e.source_event_id): _flat(_content(e)) for e in b}
        for key in sorted(set(by_id_a) | set(by_id_b)):
            fa, fb = by_id_a.get(key, {}), by_id_b.get(key, {})
            for name in sorted(set(fa) | set(fb)):
                if fa.get(name) == fb.get(name):
                    continue
                entry = changes.setdefault(name, FieldChange(name))
                if name not in fa:
                    entry.added += 1
                elif name not in fb:
                    entry.removed += 1
                else:
                    entry.changed += 1
                if not entry.example:
                    entry.example = f"{_show(name, fa.get(name))} -> {_show(name, fb.get(name))}"
    return compared, sorted(changes.values(), key=lambda c: c.field)


def _safe_map(mapper: CompiledMapping, payload: bytes) -> list[CanonicalEvent]:
    try:
        return mapper.map(payload, raw_id=None, checksum="", received_at=datetime.fromtimestamp(0).astimezone())
    except PayloadRejected:
        return []


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: data}


def _show(name: str, value: Any) -> str:
    if value is None:
        return "-"
    return mask(value) if name.startswith("patient.") else str(value)
