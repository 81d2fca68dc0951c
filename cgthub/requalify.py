"""Site qualification on the paths that map archived payloads again: a signed retry and a replay.

Live ingest judges qualification in `cgthub.routing` (see `cgthub.qualification`): an enrolment or
hospital order from a site not qualified that day waits at stage `qualify` with a critical alert.
What maps an archived payload again must judge it again, by the registry in force now:

- a signed retry (`cgthub.decisions.retry_quarantine`, from the CLI, the API or the console) maps
  through `mapper` (routing's, which judges); `after_retry` closes the refusal alerts of a payload
  that went through and says so in the decision's outcome, or names the registry that refused it;
- the canonical JSON drop folder (`cgthub.partner_sync`) is not routed: `Judging` judges its events,
  and `mapper` / `replay_waiting` (`cgthub sites replay`) map its payloads again the same way;
- `cgthub mappings replay` maps with the version it is given, through routing's mapper of that
  version (each record under the market live ingest chooses, so its residency rules hold): `screen`
  maps and judges without writing (the HL7 sender's sites from MSH-4, a site or sender the registry
  does not know refused at stage `route`, a page's refused record split out alone), `refuse` and
  `refuse_record` quarantine and alert what is refused, and a dry run asks only `screen`.

Only `cgthub.qualification`'s public functions are used, so the verdicts, reasons, alerts and
records are the live path's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, canonical_feed, pipeline, qualification, quarantine, routing, sites
from cgthub.archive import Inbound
from cgthub.errors import PayloadRejected
from cgthub.model import CanonicalEvent
from cgthub.quarantine import Stage
from cgthub.tables import Alert, LedgerEntry, QuarantineEntry, RawMessage

# A signed retry ---------------------------------------------------------------------------------


def open_alerts(session: Session, raw_id: int) -> list[int]:
    """The ids of the open refusal alerts raised for one archived payload."""
    found = session.scalars(
        select(Alert).where(Alert.kind == qualification.ALERT_KIND, Alert.status == "open").order_by(Alert.id)
    )
    return [a.id for a in found if (a.details or {}).get("raw_id") == raw_id]


def after_retry(session: Session, entry: QuarantineEntry, released: bool) -> dict[str, Any]:
    """What a signed retry did about site qualification, for its decision's outcome.

    Released: the refusal alerts of its payload are closed (their ids in the outcome). Refused at
    stage `qualify` again: the entry keeps its place with the new reason (counted again, no second
    alert), and the outcome names that reason and the registry that gave it."""
    out: dict[str, Any] = {}
    if entry.stage == Stage.QUALIFY.value:
        out["site_registry"] = sites.registry().label
    if released and entry.raw_id is not None:
        closing = open_alerts(session, entry.raw_id)
        if closing:
            qualification.close_alerts(session, entry.raw_id)
        if closing or entry.stage == Stage.QUALIFY.value:
            out["alerts_closed"] = closing
    elif not released and entry.stage == Stage.QUALIFY.value and entry.status == "open":
        out["reason"] = entry.reason
    return out


# A feed outside routing ---------------------------------------------------------------------------


class Judging:
    """A mapper that routing does not wrap (the canonical JSON feed), its events judged by the site
    registry in force as routing judges them: a refusal is quarantined at stage `qualify` with its
    alerts. A canonical file is its sender's unit: it is refused whole, its other events with it."""

    def __init__(self, session: Session, inner: pipeline.Mapper) -> None:
        self.session, self.inner = session, inner
        self.mapping_id, self.version = inner.mapping_id, inner.version

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        events = self.inner.map(payload, raw_id=raw_id, checksum=checksum, received_at=received_at)
        try:
            known = sites.registry()
        except sites.SiteRegistryError as exc:
            raise PayloadRejected(Stage.ROUTE, f"{exc}; every site waits until it loads") from None
        judged = qualification.judge_events(self.session, known, events)
        if all(j.verdict.qualified for j in judged):
            qualification.keep(self.session, known, judged)
            return events
        raise qualification.refuse_whole(self.session, known, judged, raw_id)


def mapper(session: Session, system: str, kind: str) -> pipeline.Mapper | None:
    """What maps an archived payload of `system`/`kind` again, judging its sites: a canonical JSON
    payload's mapper, or routing's (a signed retry and `cgthub sites replay` ask here)."""
    if kind == canonical_feed.KIND:
        return Judging(session, canonical_feed.CanonicalJsonMapper())
    return routing.mapper(session, system, kind)


def replay_waiting(session: Session, *, system: str | None = None) -> tuple[int, int]:
    """Map again what waits at stage `route` (its site or sender unknown) and `qualify` (its site not
    qualified that day), canonical JSON payloads included, once the registry is fixed: each goes
    through as if it came in now, its market decided and its site judged again. Returns (released,
    still waiting)."""
    released = still = 0
    for stage in (Stage.ROUTE, Stage.QUALIFY):
        for entry in quarantine.list_entries(session, stage=stage, system=system, limit=100_000):
            if entry.raw_id is None:
                continue
            found = mapper(session, entry.system, entry.kind)
            if found is None:
                still += 1
                continue
            seen = entry.occurrences
            result = pipeline.process(session, entry.raw_id, found)
            if entry.occurrences > seen or (stage is Stage.QUALIFY and _held_at_route(session, entry)):
                still += 1  # refused at this stage again (counted on the same entry), or now before it
                continue
            judged_by = f" (site registry {sites.registry().label})" if stage is Stage.QUALIFY else ""
            quarantine.release(session, entry, f"{stage.value} passed{judged_by}; {result.appended} event(s) appended")
            if stage is Stage.QUALIFY:
                qualification.close_alerts(session, entry.raw_id)
            released += 1
    return released, still


def _held_at_route(session: Session, entry: QuarantineEntry) -> bool:
    """Does the payload of a `qualify` entry now wait at stage `route` (its site left the registry)?"""
    assert entry.raw_id is not None
    return any(e.stage == Stage.ROUTE.value for e in quarantine.open_for_raw(session, entry.raw_id))


# A replay ---------------------------------------------------------------------------------------


@dataclass
class Refusal:
    """A payload (or one record of a page) refused: at stage `route` or `qualify`, and why."""

    stage: Stage
    reason: str
    details: dict[str, Any]
    refused: list[qualification.Judged] = field(default_factory=list)
    judged: list[qualification.Judged] = field(default_factory=list)
    payload: bytes | None = None  # a page's record, archived alone when refused
    record: int | None = None


@dataclass
class Screened:
    """What of a replayed payload may be applied, and what is refused."""

    events: list[CanonicalEvent]
    judged: list[qualification.Judged] = field(default_factory=list)
    whole: Refusal | None = None  # the payload refused whole: nothing of it is applied
    records: list[Refusal] = field(default_factory=list)  # a page's records refused alone

    @property
    def refusals(self) -> list[Refusal]:
        return [self.whole] if self.whole is not None else self.records


def screen(session: Session, routed: routing.RoutedMapper, row: RawMessage, payload: bytes) -> Screened:
    """Map a replayed payload as live ingest would and judge its events by the routed registry (reads
    only). Raises PayloadRejected for a payload that does not map.

    `routed` is routing's mapper of the replayed version: each record is mapped under the market
    live ingest chooses for it (an HL7 message's by its sender's sites), with that market's
    residency rules. A site or sender the registry does not know refuses, at stage `route`, whatever
    of the payload is new to the ledger; one applied before is mapped under every market's residency
    rules and only compared. A page of several records whose events are refused is judged record by
    record."""
    registry = routed.known
    try:
        pending = routed.map_unjudged(payload, raw_id=row.id, checksum=row.checksum, received_at=row.received_at)
        events, senders = pending.events, pending.sender_sites
    except PayloadRejected as unrouted:
        if unrouted.stage != Stage.ROUTE:
            raise
        events = routed.map_unrouted(payload, raw_id=row.id, checksum=row.checksum, received_at=row.received_at)
        senders = frozenset()
        if _new_to_ledger(session, events):
            return Screened([], whole=Refusal(Stage.ROUTE, unrouted.reason, unrouted.details))
    judged = qualification.judge_events(session, registry, events, sender_sites=senders)
    refused = [j for j in judged if not j.verdict.qualified]
    if not refused:
        return Screened(events, judged)
    split = routed.split(payload)
    if split is None:
        return Screened([], judged, whole=_qualify_refusal(registry, refused, judged))
    kept: list[CanonicalEvent] = []
    kept_judged: list[qualification.Judged] = []
    records: list[Refusal] = []
    for number, record_payload in enumerate(split, start=1):
        record_events = routed.map_unjudged(
            record_payload, raw_id=row.id, checksum=row.checksum, received_at=row.received_at
        ).events
        verdicts = qualification.judge_events(session, registry, record_events)
        record_refused = [j for j in verdicts if not j.verdict.qualified]
        if record_refused:
            refusal = _qualify_refusal(registry, record_refused, verdicts)
            refusal.payload, refusal.record = record_payload, number
            refusal.details = refusal.details | {"page_raw_id": row.id, "record": number}
            records.append(refusal)
            continue
        kept.extend(record_events)
        kept_judged.extend(verdicts)
    return Screened(kept, kept_judged, records=records)


def keep(session: Session, registry: sites.SiteRegistry, screened: Screened) -> None:
    """Record the verdicts of what goes through (an enrolment's verdict names its registry)."""
    qualification.keep(session, registry, screened.judged)


def refuse(session: Session, registry: sites.SiteRegistry, row: RawMessage, refusal: Refusal) -> QuarantineEntry:
    """A payload refused whole: its verdicts kept, its alerts raised, quarantined at the refusal's stage."""
    qualification.keep(session, registry, refusal.judged)
    for one in refusal.refused:
        qualification.alert(session, registry, one, row.id)
    entry = quarantine.put(
        session,
        stage=refusal.stage,
        reason=refusal.reason,
        system=row.system,
        kind=row.kind,
        raw_id=row.id,
        details=refusal.details,
    )
    archive.mark(session, row.id, "quarantined")
    return entry


def refuse_record(session: Session, registry: sites.SiteRegistry, row: RawMessage, refusal: Refusal) -> int:
    """One record of a page refused: archived as a payload of its own (the same bytes live ingest
    archives, so a record already split out is found again, not stored twice), quarantined and
    alerted. Returns its raw id."""
    assert refusal.payload is not None
    (saved,) = archive.store_many(
        session,
        [Inbound(row.system, row.kind, "split", refusal.payload, row.received_at, None, "application/json")],
        status="quarantined",
    )
    qualification.keep(session, registry, refusal.judged)
    quarantine.put(
        session,
        stage=Stage.QUALIFY,
        reason=refusal.reason,
        system=row.system,
        kind=row.kind,
        raw_id=saved.raw_id,
        details=refusal.details,
    )
    archive.mark(session, saved.raw_id, "quarantined")
    for one in refusal.refused:
        qualification.alert(session, registry, one, saved.raw_id)
    return saved.raw_id


def _qualify_refusal(
    registry: sites.SiteRegistry, refused: list[qualification.Judged], judged: list[qualification.Judged]
) -> Refusal:
    return Refusal(
        Stage.QUALIFY,
        qualification.refusal_text(registry, refused),
        qualification.details(registry, refused),
        refused,
        judged,
    )


def _new_to_ledger(session: Session, events: list[CanonicalEvent]) -> bool:
    """Does the ledger lack any of these events (a message applied before is only compared)?"""
    if not events:
        return False
    held = set(
        session.scalars(
            select(LedgerEntry.source_event_id).where(
                LedgerEntry.source_system == events[0].source_system.value,
                LedgerEntry.source_event_id.in_({e.source_event_id for e in events}),
            )
        )
    )
    return any(e.source_event_id not in held for e in events)
