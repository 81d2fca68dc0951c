"""What the quarantine, partner-health and mappings pages show, read from the hub's own tables and files."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cgthub import archive, health, quarantine
from cgthub.api.auth import Principal
from cgthub.console.masking import masked_by_name, masked_payload
from cgthub.mapping import registry, replay
from cgthub.mapping.replay import FieldChange, configured_markets, diff
from cgthub.mapping.spec import MappingError
from cgthub.outbox import OutboxMessage, OutboxStatus
from cgthub.sync_state import SyncState
from cgthub.tables import Order, QuarantineEntry, RawMessage


def aware(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo else at.replace(tzinfo=UTC)


def age(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    return duration(max((now - aware(at)).total_seconds(), 0))  # type: ignore[operator]


def duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _may_see_entry(session: Session, principal: Principal, entry: QuarantineEntry) -> bool:
    """An entry tied to an order follows the order's data scope; an entry tied to none (a payload
    that matched no order) is for users who see all data."""
    if entry.order_id is None:
        return principal.all_data
    order = session.get(Order, entry.order_id)
    return order is not None and principal.can_see(site=order.site, cmo=order.cmo, market=order.market)


def quarantine_list(
    session: Session, principal: Principal, *, stage: str | None, partner: str | None, status: str = "open"
) -> list[QuarantineEntry]:
    entries = quarantine.list_entries(
        session,
        status=quarantine.QuarantineStatus(status) if status else None,
        stage=quarantine.Stage(stage) if stage else None,
        system=partner or None,
        limit=500,
    )
    return [e for e in entries if _may_see_entry(session, principal, e)]


PAYLOAD_SHOWN = 200_000  # characters of a quarantined payload a page shows; a 10 MB one stays a page


@dataclass(frozen=True)
class QuarantineView:
    entry: QuarantineEntry
    meaning: str
    details: dict[str, Any]
    payload: str | None
    content_type: str | None
    mapping_in_use: str | None
    payload_chars: int = 0  # the masked payload's length when the page shows only its start


def quarantine_entry(session: Session, principal: Principal, entry_id: int) -> QuarantineView | None:
    entry = quarantine.get(session, entry_id)
    if entry is None or not _may_see_entry(session, principal, entry):
        return None
    stage = quarantine.Stage(entry.stage)
    payload = content_type = None
    payload_chars = 0
    if entry.raw_id is not None:
        raw = session.get(RawMessage, entry.raw_id)
        content_type = raw.content_type if raw else None
        try:
            payload = masked_payload(archive.read(session, entry.raw_id), content_type or "")
        except (LookupError, ValueError) as exc:
            payload = f"(the archived payload cannot be read: {exc})"
        if payload is not None and len(payload) > PAYLOAD_SHOWN:
            payload_chars, payload = len(payload), payload[:PAYLOAD_SHOWN]
    mapping = None
    if stage in quarantine.MAPPING_STAGES:
        try:
            found = registry.get_mapper(entry.system, entry.kind)
            mapping = f"{found.mapping_id}@v{found.spec.version}" if found else f"none for {entry.system}/{entry.kind}"
        except (MappingError, ValueError) as exc:
            mapping = f"none that loads ({exc})"
    return QuarantineView(
        entry=entry,
        meaning=quarantine.STAGE_MEANING[stage],
        details=masked_by_name(quarantine.masked_details(dict(entry.details or {}))),
        payload=payload,
        content_type=content_type,
        mapping_in_use=mapping,
        payload_chars=payload_chars,
    )


@dataclass(frozen=True)
class PartnerHealth:
    partner: str
    last_sync: datetime | None
    lag: str
    records_per_hour: int
    reject_rate: float | None
    breaker: str
    backlog: int
    dead_letters: int
    last_errors: list[str]
    held: health.Held | None = None  # payloads archived but not applied yet, as /health/ready counts them
    held_for: str = "-"  # how long the oldest of them has waited


PARTNERS = ("crm", "erp", "courier", "cmo", "hl7")


def partner_health(session: Session, now: datetime) -> list[PartnerHealth]:
    """Per partner: its last clean sync, how far its watermark trails now, what arrived in the last
    hour, what share of the last day's payloads went to quarantine, what it sent that waits to be
    applied (/health/ready's `held`, behind after 15 minutes), and its outbound queue."""
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    states: dict[str, list[SyncState]] = {}
    for row in session.scalars(select(SyncState)):
        states.setdefault(row.partner, []).append(row)
    per_hour = dict(
        session.execute(
            select(RawMessage.system, func.count()).where(RawMessage.received_at >= hour).group_by(RawMessage.system)
        ).all()
    )
    per_day = dict(
        session.execute(
            select(RawMessage.system, func.count()).where(RawMessage.received_at >= day).group_by(RawMessage.system)
        ).all()
    )
    rejected = dict(
        session.execute(
            select(QuarantineEntry.system, func.count())
            .where(
                QuarantineEntry.first_seen >= day,
                QuarantineEntry.stage.in_([s.value for s in quarantine.MAPPING_STAGES]),
            )
            .group_by(QuarantineEntry.system)
        ).all()
    )
    outbox: dict[tuple[str, str], int] = {
        (kind, status): count
        for kind, status, count in session.execute(
            select(OutboxMessage.destination_kind, OutboxMessage.status, func.count())
            .where(OutboxMessage.status != OutboxStatus.DELIVERED.value)
            .group_by(OutboxMessage.destination_kind, OutboxMessage.status)
        )
    }
    held = {waiting.partner: waiting for waiting in health.held_by_partner(session, now)}
    partners = sorted(set(PARTNERS) | set(states) | {k for k, _ in outbox} | set(held))
    found = []
    for partner in partners:
        rows = states.get(partner, [])
        errors = [e for r in rows for e in (r.last_report or {}).get("errors", [])]
        clean = [aware(r.updated_at) for r in rows if not (r.last_report or {}).get("errors")]
        marks = [aware(r.watermark) for r in rows if r.watermark is not None]
        breaker = "open" if any("circuit open" in e for e in errors) else ("failing" if errors else "closed")
        received = per_day.get(partner, 0)
        found.append(
            PartnerHealth(
                partner=partner,
                last_sync=max(clean) if clean else None,  # type: ignore[type-var]
                lag=age(min(marks), now) if marks else "-",  # type: ignore[type-var]
                records_per_hour=per_hour.get(partner, 0),
                reject_rate=(rejected.get(partner, 0) / received) if received else None,
                breaker=breaker if rows else "no sync yet",
                backlog=outbox.get((partner, OutboxStatus.PENDING.value), 0)
                + outbox.get((partner, OutboxStatus.FAILED.value), 0),
                dead_letters=outbox.get((partner, OutboxStatus.DEAD.value), 0),
                last_errors=errors[-3:],
                held=held.get(partner),
                held_for=duration(held[partner].oldest_seconds) if partner in held else "-",
            )
        )
    return found


def dead_letters(session: Session, partner: str | None = None, limit: int = 200) -> list[OutboxMessage]:
    query = select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD.value)
    if partner:
        query = query.where(OutboxMessage.destination_kind == partner)
    return list(session.scalars(query.order_by(OutboxMessage.id).limit(limit)))


@dataclass(frozen=True)
class MappingInForce:
    market: str
    system: str
    kind: str
    version: int | None
    effective: str
    change_note: str
    pinned: bool
    next_version: int | None
    next_effective: str
    next_note: str
    problem: str | None = None
    next_compared: int = 0  # archived payloads the next version was compared on
    next_changes: list[FieldChange] = field(default_factory=list)


DIFF_PAYLOADS = 50  # newest archived payloads a page compares versions on, so it stays quick


def newest_archived(session: Session, system: str, kind: str, limit: int) -> list[tuple[str, bytes]]:
    """The newest archived payloads a mapping of this feed maps (its kind and the kinds it also maps)."""
    rows = replay.archived(session, system, kind, newest=limit)
    return [(f"raw #{row.id}", archive.read(session, row.id)) for row in rows]


def mappings_in_force(session: Session | None = None, *, diff_payloads: int = DIFF_PAYLOADS) -> list[MappingInForce]:
    """Per market and partner feed: the version live ingest maps with today, and the one after it
    with the canonical fields it would fill differently on the newest archived payloads."""
    feeds = sorted({(f.system, f.kind) for f in registry.discover()})
    found = []
    payloads: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    diffs: dict[tuple[str, str, str, int | None, int], tuple[int, list[FieldChange]]] = {}
    for market in configured_markets():
        pins = registry.market_config(market).get("mappings") or {}
        for system, kind in feeds:
            versions = registry.versions(system, kind)
            try:
                current = registry.get_mapper(system, kind, market=market)
            except (MappingError, ValueError) as exc:
                found.append(MappingInForce(market, system, kind, None, "", "", False, None, "", "", str(exc)))
                continue
            number = current.spec.version if current else None
            later = [v for v in versions if number is None or v.version > number]
            nxt = registry.load_file(later[0].path).spec if later else None
            compared, changes = 0, list[FieldChange]()
            if session is not None and current is not None and later:
                key = (market, system, kind, number, later[0].version)
                if key not in diffs:
                    if (system, kind) not in payloads:
                        payloads[(system, kind)] = newest_archived(session, system, kind, diff_payloads)
                    try:
                        upcoming = registry.compile_file(later[0].path, market)
                        diffs[key] = diff(payloads[(system, kind)], current, upcoming)
                    except MappingError:
                        diffs[key] = (0, [])
                compared, changes = diffs[key]
            found.append(
                MappingInForce(
                    market=market,
                    system=system,
                    kind=kind,
                    version=number,
                    effective=str(current.spec.effective) if current else "",
                    change_note=current.spec.change_note if current else "",
                    pinned=f"{system}/{kind}" in pins,
                    next_version=nxt.version if nxt else None,
                    next_effective=str(nxt.effective) if nxt else "",
                    next_note=nxt.change_note if nxt else "",
                    next_compared=compared,
                    next_changes=changes,
                )
            )
    return found
