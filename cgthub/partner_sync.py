"""What the sync DAGs' tasks do, as plain functions: pull a partner, apply the HL7 inbox.

DAG files stay thin and import this module inside their tasks. A partner is pulled through the
streams its declaration names (cgthub.partners) and always through its canonical drop folder
(cgthub.canonical_feed). Connectors only fetch: they yield pages ready for the archive and where
their stream stands after each; `ingest_pages` here archives, maps and applies each page and moves
the stream's watermark in one transaction, so the mark never passes an uncommitted record. Every
run is counted in one `SyncReport`, which becomes the task's XCom.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from cgthub import archive, canonical_feed, drop_folder, partners, pipeline, quarantine, requalify, routing, sync_state
from cgthub.errors import PayloadRejected
from cgthub.model import CanonicalEvent
from cgthub.release import ensure_release_in_force
from cgthub.settings import get_settings
from cgthub.store import session_scope
from cgthub.sync_state import SyncReport
from cgthub.tables import utcnow

log = logging.getLogger(__name__)
CONNECTORS_ENV = "CGTHUB_CONNECTORS"


def connector_enabled(partner: str) -> bool:
    """CGTHUB_CONNECTORS (comma list) limits which partners are reached through their connector; unset = all."""
    chosen = get_settings().connectors
    return chosen is None or partner in {p.strip() for p in chosen.split(",")}


class _Refused:
    """The mapping of a partner's error document: archived as received, quarantined with the partner's words."""

    mapping_id = "partner-refusal"
    version = "1"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        raise PayloadRejected(quarantine.Stage.RECEIVE, self.reason)


def mapper_for(session: Session) -> Callable[[archive.Inbound], pipeline.Mapper | None]:
    """The mapping for an archived payload: canonical JSON here, partner formats in cgthub.mapping
    under the market their site belongs to (cgthub.routing)."""
    routed = routing.mapper_for(session)

    def lookup(item: archive.Inbound) -> pipeline.Mapper | None:
        if item.kind == canonical_feed.KIND:  # no routing to judge its sites: judged here (cgthub.requalify)
            return requalify.Judging(session, canonical_feed.CanonicalJsonMapper())
        return routed(item)

    return lookup


def _page_mapper(session: Session, page: partners.Page) -> Callable[[archive.Inbound], pipeline.Mapper | None]:
    if page.refused:
        refused = _Refused(page.refused)
        return lambda _item: refused
    return mapper_for(session)


def count(report: SyncReport, results: Iterable[pipeline.IngestResult]) -> None:
    """Add ingested payloads to a report: the one place results become counters."""
    orders = set(report.order_ids)
    for result in results:
        report.payloads += 1
        report.duplicate_payloads += int(result.duplicate_payload)
        report.appended += result.appended
        report.duplicates += result.duplicates
        report.quarantined += result.quarantined
        orders |= result.order_ids
    report.order_ids = sorted(orders)


def ingest_pages(
    report: SyncReport,
    stream: str,
    pages: Iterable[partners.Page],
    *,
    partner: str | None = None,
    database_url: str | None = None,
) -> None:
    """Each page archived, mapped and applied, counted, and its stream's mark moved, in one transaction.

    A partner that cannot be read (`partners.PartnerUnavailable`) ends the stream for this run with
    its message in the report; what was committed before stays, and the next run goes on from there.
    """
    owner = partner or report.partner
    label = f"{stream}: " if report.stream != stream else ""
    try:
        for page in pages:
            with session_scope(database_url) as session:
                results = pipeline.ingest_batch(session, page.items, _page_mapper(session, page))
                first = report.payloads + 1
                count(report, results)
                report.records += page.records
                for n, result in enumerate(results, start=first):
                    why = page.problem if page.problem and n == first else None
                    why = why or ("; ".join(result.reasons) if result.rejected else None)
                    if why:
                        report.errors.append(f"{label}page {n}: {why} (archived as raw #{result.raw_id})")
                if page.problem and not results:  # nothing archived to attach it to (a drop folder's notes)
                    report.errors.append(f"{label}{page.problem}")
                sync_state.advance(session, owner, stream, report, page.watermark, new_cursor=page.cursor)
            if page.after_commit is not None:  # only after the commit: a crash before re-reads, the archive dedupes
                page.after_commit()
    except partners.PartnerUnavailable as unavailable:
        report.errors.append(f"{label}{unavailable}")
    with session_scope(database_url) as session:
        sync_state.advance(session, owner, stream, report, None)


def pull_stream(
    partner: partners.Partner,
    declared: partners.Pull,
    *,
    database_url: str | None = None,
    fetch: Callable[[partners.Mark], Iterable[partners.Page]] | None = None,
    report: SyncReport | None = None,
) -> SyncReport:
    """One stream of a partner from its mark: the connector's `fetch` (or the declared one) into the hub."""
    report = report or SyncReport(partner=partner.name, stream=declared.stream)
    with session_scope(database_url) as session:
        row = sync_state.state(session, partner.name, declared.stream)
        mark = partners.Mark(row.watermark, row.cursor) if row else partners.Mark()
    if report.watermark_before is None:
        report.watermark_before = sync_state.describe(mark.watermark, mark.cursor)
    report.via.append(partners.origin(declared.fetch))
    fetcher = fetch or partners.resolve(declared.fetch)
    ingest_pages(report, declared.stream, fetcher(mark), partner=partner.name, database_url=database_url)
    return report


def pull(partner: str, *, database_url: str | None = None) -> dict[str, Any]:
    """One batch from a partner: each stream it declares, then its canonical drop folder."""
    declared = partners.get(partner)
    streams = "+".join(p.stream for p in declared.pulls)
    report = SyncReport(partner=partner, stream=streams or "files", release=ensure_release_in_force(database_url))
    if connector_enabled(partner):
        for stream in declared.pulls:
            pull_stream(declared, stream, database_url=database_url, report=report)
    page = _drop_folder_page(declared, report)
    if page is not None:
        report.via.append(f"drop folder {canonical_feed.inbox(partner)}")
        ingest_pages(report, "files", [page], database_url=database_url)
    log.info("pulled %s: %s", partner, {k: v for k, v in report.as_dict().items() if k != "order_ids"})
    return report.as_dict()


def _drop_folder_page(partner: partners.Partner, report: SyncReport) -> partners.Page | None:
    """The files ready in the partner's inbox as one page; each read through cgthub.drop_folder, and
    what it left alone or set aside (and a file that changed while it was read) in the report."""
    waiting, skipped = canonical_feed.waiting(partner.name)
    report.errors.extend(f"drop folder: {line}" for line in skipped)
    drops: list[tuple[str, drop_folder.Drop]] = []
    for kind, path in waiting:
        drop = drop_folder.read(path)
        if isinstance(drop, str):
            report.errors.append(f"drop folder: {drop}")
        else:
            drops.append((kind, drop))
    if not drops:
        return None
    items = [
        archive.Inbound(
            system=partner.system,
            kind=kind,
            channel="file",
            payload=drop.data,
            received_at=utcnow(),
            dedupe_key=f"file:{partner.name}:{kind}:{drop.path.name}",
            content_type="application/json" if drop.path.suffix == ".json" else "application/octet-stream",
        )
        for kind, drop in drops
    ]

    def done() -> None:
        for _kind, drop in drops:
            kept = canonical_feed.mark_done(drop)
            if kept:  # still being written: read again next run, what was archived is then a duplicate
                report.errors.append(f"drop folder: {kept}")

    return partners.Page(items=items, after_commit=done)


def apply_hl7_inbox(*, database_url: str | None = None, limit: int = 5000) -> dict[str, Any]:
    """Map and apply what the MLLP listener archived (status `received`), oldest first."""
    release = ensure_release_in_force(database_url)  # checked before anything is mapped; the report names it
    report = SyncReport(partner="hl7", stream="inbox", via=["raw archive (MLLP listener)"], release=release)
    with session_scope(database_url) as session:
        count(report, pipeline.process_pending(session, "hl7", mapper_for(session), limit=limit))
    return report.as_dict()
