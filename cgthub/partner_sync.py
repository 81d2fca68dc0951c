"""What the sync DAGs' tasks do, as plain functions: pull a partner, apply the HL7 inbox, drain the outbox.

DAG files stay thin and import this module inside their tasks. A partner is pulled through its
connector (`connectors.<partner>...pull`) when that package is installed, and always through its
canonical drop folder (see cgthub.canonical_feed); every payload goes archive -> mapping -> ledger
via cgthub.pipeline. Each function returns a small JSON-able summary (it becomes the task's XCom).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from cgthub import archive, canonical_feed, pipeline, routing
from cgthub.store import session_scope
from cgthub.tables import utcnow

log = logging.getLogger(__name__)

# Partner -> (connector module, pull function). The connectors package (issue 5) provides these.
CONNECTOR_PULLS: dict[str, tuple[str, str]] = {
    "crm": ("connectors.crm.sync", "pull"),
    "erp": ("connectors.erp.sync", "pull"),
    "courier": ("connectors.courier.sync", "pull"),
    "cmo": ("connectors.cmo.sync", "pull"),
    "cmo_batch": ("connectors.cmo.batch", "pull"),
}
# Drop-folder name -> the source system its events are archived under.
ARCHIVE_SYSTEM = {"cmo_batch": "cmo"}


@dataclass
class PullSummary:
    partner: str
    via: list[str] = field(default_factory=list)
    payloads: int = 0
    duplicate_payloads: int = 0
    appended: int = 0
    duplicates: int = 0
    quarantined: int = 0
    orders: list[str] = field(default_factory=list)

    @property
    def new_events(self) -> bool:
        return self.appended > 0

    def absorb(self, results: list[pipeline.IngestResult]) -> None:
        orders = set(self.orders)
        for result in results:
            self.payloads += 1
            self.duplicate_payloads += int(result.duplicate_payload)
            self.appended += result.appended
            self.duplicates += result.duplicates
            self.quarantined += result.quarantined
            orders |= result.order_ids
        self.orders = sorted(orders)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "new_events": self.new_events}


def connector_enabled(partner: str) -> bool:
    """CGTHUB_CONNECTORS (comma list) limits which partners are pulled through their connector; unset = all."""
    chosen = os.environ.get("CGTHUB_CONNECTORS")
    return chosen is None or partner in {p.strip() for p in chosen.split(",")}


def connector_pull(partner: str) -> Callable[..., Any] | None:
    """The connector's pull function, or None when that connector is not installed."""
    module_name, attr = CONNECTOR_PULLS[partner]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        if missing.name and module_name.startswith(missing.name):
            return None
        raise
    return getattr(module, attr, None)


def mapper_for(session: Session) -> Callable[[archive.Inbound], pipeline.Mapper | None]:
    """The mapping for an archived payload: canonical JSON here, partner formats in cgthub.mapping
    under the market their site belongs to (cgthub.routing)."""
    routed = routing.mapper_for(session)

    def lookup(item: archive.Inbound) -> pipeline.Mapper | None:
        if item.kind == canonical_feed.KIND:
            return canonical_feed.CanonicalJsonMapper()
        return routed(item)

    return lookup


def pull(partner: str, *, database_url: str | None = None) -> dict[str, Any]:
    """One batch from a partner: its connector's pull, then its canonical drop folder."""
    summary = PullSummary(partner=partner)
    pull_fn = connector_pull(partner) if connector_enabled(partner) else None
    if pull_fn is not None:
        report = pull_fn()
        summary.via.append(CONNECTOR_PULLS[partner][0])
        for name in ("appended", "duplicates", "quarantined"):
            setattr(summary, name, getattr(summary, name) + int(getattr(report, name, 0) or 0))
        summary.payloads += int(getattr(report, "payloads", getattr(report, "fetched", 0)) or 0)
        summary.orders = sorted(set(summary.orders) | set(getattr(report, "order_ids", ()) or ()))
    files = [(canonical_feed.KIND, path) for path in canonical_feed.pending_files(partner)]
    files += canonical_feed.native_files(partner)
    if files:
        summary.via.append(f"drop folder {canonical_feed.inbox(partner)}")
        system = ARCHIVE_SYSTEM.get(partner, partner)
        items = [
            archive.Inbound(
                system=system,
                kind=kind,
                channel="file",
                payload=path.read_bytes(),
                received_at=utcnow(),
                dedupe_key=f"file:{partner}:{kind}:{path.name}",
                content_type="application/json" if path.suffix == ".json" else "application/octet-stream",
            )
            for kind, path in files
        ]
        with session_scope(database_url) as session:
            summary.absorb(pipeline.ingest_batch(session, items, mapper_for(session)))
        for _kind, path in files:  # only after the commit: a crash before this re-reads them, and the archive dedupes
            canonical_feed.mark_done(path)
    log.info("pulled %s: %s", partner, summary.as_dict())
    return summary.as_dict()


def apply_hl7_inbox(*, database_url: str | None = None, limit: int = 5000) -> dict[str, Any]:
    """Map and apply what the MLLP listener archived (status `received`), oldest first."""
    summary = PullSummary(partner="hl7", via=["raw archive (MLLP listener)"])
    with session_scope(database_url) as session:
        summary.absorb(pipeline.process_pending(session, "hl7", mapper_for(session), limit=limit))
    return summary.as_dict()
