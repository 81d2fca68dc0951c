"""Re-map archived payloads with another mapping version, and compare two versions on them.

Replay never edits the ledger. For each archived payload it maps again and compares each event
with the one the ledger holds for the same source event: identical content appends nothing (so a
second replay is a no-op), different content appends a correction `<id>@v<N>` that supersedes the
old entry, and a payload that sat in quarantine and now maps goes through and its entry is closed.
Counts come from what the ledger actually did: an event the ledger already holds from another
payload (a partner that resends whole records) is reported as such, not as added. Each record is
mapped under the market live ingest chooses for it (`cgthub.routing`, with the replayed version),
so a market's residency rules hold on replay as they do on ingest (a DE postal prefix is dropped
before the ledger, whatever the version); a mapper compiled for one market maps every record
under that market's rules instead. Site
qualification is judged as on the live path, by the registry in force (`cgthub.requalify`): what a
site not qualified that day sent is not applied but quarantined at stage `qualify` with its alert
(a page's record alone), an HL7 sender the registry does not know at stage `route`, and a payload
that waited at `qualify` and now passes is released with its alerts closed. A dry run maps, judges
and compares in a read-only session and writes nothing. `refusals` says why a version is not the
one live ingest would use for a market, so the CLI can refuse it unless forced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, ledger, markets, qualification, quarantine, requalify, routing, sites
from cgthub.errors import PayloadRejected
from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.fixtures import normalize
from cgthub.mapping.registry import configured_markets as registry_markets
from cgthub.mapping.registry import kind_dir, load_file, market_config, versions
from cgthub.mapping.registry import markets_dir as registry_markets_dir
from cgthub.model import CanonicalEvent
from cgthub.pseudonym import mask
from cgthub.tables import LedgerEntry, RawMessage

_VERSION_SUFFIX = re.compile(r"@v\d+$")
_CORRECTION_SUFFIX = re.compile(r"@c\d+$")


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
    refused: int = 0  # payloads (or a page's records) refused by the site registry: quarantined, not applied
    already_recorded: int = 0  # new to this payload, but the ledger holds it from another payload
    dry_run: bool = False
    failures: list[str] = field(default_factory=list)


def pinned_version(market: str, system: str, kind: str) -> int | None:
    """The version a market's config pins for system/kind, read as the registry reads it."""
    pins = market_config(market).get("mappings") or {}
    pin = pins.get(f"{system}/{kind_dir(kind)}") or pins.get(f"{system}/{kind}")
    return int(str(pin).lstrip("v")) if pin is not None else None


def configured_markets() -> list[str]:
    return registry_markets()  # the baseline is no market


def refusals(system: str, kind: str, version: int, market: str | None, today: date | None = None) -> list[str]:
    """Why `version` is not what live ingest maps system/kind with (for `market`, or for any market).

    Live ingest uses a market's pin when it has one, else the newest version already effective, so a
    replay with anything else would rewrite the ledger with a mapping no new payload gets."""
    today = today or datetime.now(UTC).date()
    chosen = [f for f in versions(system, kind) if f.version == version]
    if not chosen:
        return []  # the registry names the missing version itself
    effective = load_file(chosen[0].path).spec.effective
    reasons = []
    markets = [market.upper()] if market else configured_markets()
    pins = {m: pinned_version(m, system, kind) for m in markets}
    unpinned = market is None or pins[market.upper()] is None
    if effective > today and unpinned:
        reasons.append(f"{system}/{kind} v{version} takes effect on {effective}, not yet")
    for name, pin in pins.items():
        if pin is not None and pin != version:
            reasons.append(f"market {name} pins {system}/{kind} to v{pin} ({_pin_source(name, system, kind)})")
    return reasons


def _pin_source(market: str, system: str, kind: str) -> str:
    """The file and line of a market's pin, which may be its baseline's (cgthub/markets.py)."""
    _config, where = markets.resolve_market(market, registry_markets_dir())
    source = where.get(f"mappings.{system}/{kind_dir(kind)}") or where.get(f"mappings.{system}/{kind}")
    return str(source) if source else f"config/markets/{market}.yaml"


def archived(
    session: Session, system: str, kind: str, since: datetime | None = None, *, newest: int | None = None
) -> Iterator[RawMessage]:
    """Archived payloads of this system and kind (and of kinds the mapping also maps), oldest first;
    with `newest`, only that many of the latest, newest first."""
    kinds = {kind, kind.replace("_", "^")}
    for mapping in versions(system, kind):
        kinds.update(load_file(mapping.path).spec.also_for)
    query = select(RawMessage).where(RawMessage.system == system, RawMessage.kind.in_(sorted(kinds)))
    if since is not None:
        query = query.where(RawMessage.received_at >= since)
    if newest is not None:
        query = query.order_by(RawMessage.id.desc()).limit(newest)
    else:
        query = query.order_by(RawMessage.id)
    yield from session.scalars(query)


def base_id(source_event_id: str) -> str:
    return _VERSION_SUFFIX.sub("", source_event_id)


def replay(
    session: Session,
    mapper: CompiledMapping,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Re-map every archived payload of the mapper's system/kind (in the caller's transaction).

    Only the mapper's version is taken from it: each record is mapped under the market live ingest
    chooses for it (`cgthub.routing`), with that market's residency rules and code maps. A mapper
    compiled for one market (`--market`) maps every record under that market's rules instead.
    With `dry_run` nothing is appended, released or marked: the report says what would be."""
    report = ReplayReport(dry_run=dry_run)
    system, kind = mapper.spec.system.value, kind_dir(mapper.spec.kind)
    # The registry in force judges every payload of this replay (read once, with the mapping).
    routed = routing.mapper(session, system, kind, version=mapper.spec.version, market=mapper.market)
    assert routed is not None  # the version exists: `mapper` is compiled from it
    rows = list(archived(session, system, kind, since))
    for done, row in enumerate(rows, start=1):
        report.payloads += 1
        _replay_one(session, mapper, routed, row, report, dry_run=dry_run)
        if progress:
            progress(done, len(rows))
    return report


def _replay_one(
    session: Session,
    mapper: CompiledMapping,
    routed: routing.RoutedMapper,
    row: RawMessage,
    report: ReplayReport,
    *,
    dry_run: bool,
) -> None:
    entries = quarantine.open_for_raw(session, row.id)
    if any(e.stage == quarantine.Stage.ROUTE.value for e in entries):  # never applied: its site is unknown
        report.still_failing += 1
        report.failures.append(f"raw #{row.id}: waits at stage route for the site registry (`cgthub sites replay`)")
        return
    payload = archive.read(session, row.id)
    known = routed.known
    try:
        screened = requalify.screen(session, routed, row, payload)  # mapped under its market, judged
    except PayloadRejected as rejected:
        report.still_failing += 1
        report.failures.append(f"raw #{row.id}: {rejected.reason}")
        return
    if screened.refusals:
        _refused(session, mapper, known, row, screened, report, dry_run=dry_run)
        if screened.whole is not None:
            return
    fresh = screened.events
    current = _current_events(session, row.id)
    new: list[CanonicalEvent] = []
    corrections: list[CanonicalEvent] = []
    for event in fresh:
        base = base_id(event.source_event_id)
        old = current.pop(base, None)
        if old is None and event.former_id is not None:  # recorded under the previous version's id form
            old = current.pop(event.former_id, None)
        if old is None:
            new.append(event)
        elif _content(old) == _content(event):
            report.unchanged += 1
        else:
            corrections.append(
                event.model_copy(
                    # a correction is its own event: no former id to be taken for the one it corrects
                    update={
                        "source_event_id": f"{base}@{mapper.version}",
                        "supersedes": old.source_event_id,
                        "former_id": None,
                    }
                )
            )
    produced = {e.source_event_id for e in new}
    strays = sorted(k for k in current if _CORRECTION_SUFFIX.sub("", k) not in produced)  # `<id>@c<n>`: conflicts.py
    if strays and new:
        # Events the payload made before and events it makes now that share no id: a mapping that
        # changed its ids (hl7 v2 put the sending facility in them) would record each again beside
        # the one in force. Pairing them would be a guess; nothing is appended, the operator is told.
        report.still_failing += 1
        report.failures.append(
            f"raw #{row.id}: v{mapper.version} makes ids ({', '.join(sorted(produced))}) "
            f"that are not those recorded for this payload ({', '.join(strays)}); replaying it would "
            "record its events a second time, so nothing was appended: replay it with the version that made them"
        )
        return
    report.no_longer_produced += len(current)
    waiting = [e for e in entries if e.stage in _RELEASED_BY_REPLAY]
    if dry_run:
        held = _recorded(session, new + corrections)
        report.already_recorded += sum(1 for e in new if e.source_event_id in held)
        report.added += sum(1 for e in new if e.source_event_id not in held)
        report.corrected += sum(1 for e in corrections if e.source_event_id not in held)
        report.released += len(waiting)
        return
    outcomes = ledger.append_many(session, new + corrections)
    for position, outcome in enumerate(outcomes):
        is_new = position < len(new)
        if outcome.status == "quarantined":
            report.quarantined += 1
        elif outcome.status == "duplicate":
            report.already_recorded += int(is_new)
        elif is_new:
            report.added += 1
        else:
            report.corrected += 1
    requalify.keep(session, known, screened)
    if waiting and not any(o.status == "quarantined" for o in outcomes):
        for entry in waiting:
            judged = f" (site registry {known.label})" if entry.stage == quarantine.Stage.QUALIFY.value else ""
            quarantine.release(session, entry, f"mapped by {mapper.mapping_id}@{mapper.version} on replay{judged}")
            if entry.stage == quarantine.Stage.QUALIFY.value:
                qualification.close_alerts(session, row.id)
            report.released += 1
        archive.mark(session, row.id, "processed")


# What a replay may release: a payload that failed to map, and one that waited for its site's
# qualification (judged again above). One waiting at `route` is `cgthub sites replay`'s: a replay
# leaves it as it is.
_RELEASED_BY_REPLAY = (
    quarantine.Stage.PARSE,
    quarantine.Stage.MAP,
    quarantine.Stage.VALIDATE,
    quarantine.Stage.QUALIFY,
)


def _refused(
    session: Session,
    mapper: CompiledMapping,
    known: sites.SiteRegistry,
    row: RawMessage,
    screened: requalify.Screened,
    report: ReplayReport,
    *,
    dry_run: bool,
) -> None:
    """What the site registry refuses is counted and named; unless a dry run, it is quarantined and
    alerted as live ingest would. A payload refused whole that failed to map before now waits at the
    refusal's stage instead (one open entry says what holds it)."""
    for refusal in screened.refusals:
        report.refused += 1
        where = f"raw #{row.id}" + (f" record {refusal.record}" if refusal.record else "")
        report.failures.append(f"{where}: {refusal.reason}")
    if dry_run:
        return
    if screened.whole is None:
        for refusal in screened.records:
            requalify.refuse_record(session, known, row, refusal)
        return
    entry = requalify.refuse(session, known, row, screened.whole)
    for earlier in quarantine.open_for_raw(session, row.id):
        if earlier.id != entry.id and earlier.stage in quarantine.MAPPING_STAGES:
            quarantine.release(
                session,
                earlier,
                f"mapped by {mapper.mapping_id}@{mapper.version} on replay; waits at stage {entry.stage} "
                f"(quarantine entry #{entry.id})",
            )


def _recorded(session: Session, events: list[CanonicalEvent]) -> set[str]:
    """Which of these events' source ids the ledger already holds for their system, from any payload."""
    if not events:
        return set()
    query = select(LedgerEntry.source_event_id).where(
        LedgerEntry.source_system == events[0].source_system._value_,
        LedgerEntry.source_event_id.in_({e.source_event_id for e in events}),
    )
    return set(session.scalars(query))


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
