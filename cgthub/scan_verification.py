"""Scan verification at handoffs and the bedside: does the bag in hand belong to this order?

Someone scans a label (the ISBT 128 DIN, with its `=` data identifier and flag characters as the
scanner sends them, and/or the CoI id) at a step of the order's life: the apheresis label, receipt
at the CMO, receipt at the site, the bedside before infusion. The hub compares the scanned
identifiers with the ones the order's chain of identity holds and answers match or no match.

Every scan is a custody event in the order's ledger (`custody.scanned`: who scanned, where, when,
what, and whether it matched), so the custody export shows it. A no-match is what the check exists
for: the order goes on hold (a hub event, lifted only by a signed `release_hold` decision) and a
critical `scan_mismatch` alert opens. The scanned identifiers are kept only in the scan's own
attributes, never as the order's keys: a wrong bag must not become the order's.

`verify(session, Scan(...))` is the whole of it, for the API, the CLI and in-process callers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import alerts, ledger
from cgthub.errors import CgthubError
from cgthub.identifiers import IdentifierError, normalize_din, validate_coi_id
from cgthub.model import CanonicalEvent, Custody, EventType, Provenance, SourceSystem
from cgthub.tables import Order, OrderKey, utcnow

ALERT_KIND = "scan_mismatch"
_MAPPING = Provenance(mapping_id="cgthub/scan-verification", mapping_version="1")


class Step(StrEnum):
    """Where in the order's life the label is scanned."""

    APHERESIS_LABEL = "apheresis_label"
    CMO_RECEIPT = "cmo_receipt"
    SITE_RECEIPT = "site_receipt"
    BEDSIDE = "bedside"


class ScanRefused(CgthubError, ValueError):
    """A scan that cannot be judged (nothing scanned, unreadable, nothing on record to compare)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class OrderNotFound(CgthubError, LookupError):
    """No such order."""


@dataclass(frozen=True)
class Scan:
    """One scan as the scanner reported it. `scanned_by` says who (an API key, an operator)."""

    order_id: str
    step: Step
    scanned_by: str
    din: str | None = None
    coi_id: str | None = None
    site: str | None = None  # where: the site (or CMO) the scan was made at; default: the step's own
    location: str | None = None  # where inside it: a room, a bay, a fridge
    scanned_at: datetime | None = None
    scan_id: str | None = None  # the scanner's own id for the scan: a resend records it once


class ScanResult(BaseModel):
    """What the scanner is told: ids and codes only, never the order's identifiers or a patient's."""

    order_id: str
    step: Step
    match: bool
    checked: list[str]  # the identifiers compared: din, coi_id
    mismatched: list[str]  # those that did not match the order
    scan_event: str  # the scan's source event id in the order's ledger
    ledger_seq: int | None
    on_hold: bool
    alert_id: int | None = None
    scanned_at: datetime


def verify(session: Session, scan: Scan) -> ScanResult:
    """Compare a scan with the order, record it in the order's ledger, hold the order on a mismatch."""
    order = session.get(Order, scan.order_id)
    if order is None:
        raise OrderNotFound(f"order {scan.order_id} does not exist")
    if not (scan.din or scan.coi_id):
        raise ScanRefused("nothing_scanned", "send the scanned DIN, the CoI id, or both")
    scanned: dict[str, str] = {}
    for kind, value, read in (("din", scan.din, normalize_din), ("coi_id", scan.coi_id, validate_coi_id)):
        if not value:
            continue
        try:
            scanned[kind] = read(value)
        except IdentifierError as exc:  # its words quote the scan: not repeated to the caller
            raise ScanRefused(
                "unreadable_scan",
                f"the scanned {kind} is not a valid ISBT 128 identifier (length, characters or check "
                "character); scan the label again",
            ) from exc
    held = _keys(session, order.id, list(scanned))
    missing = [kind for kind in scanned if not held.get(kind)]
    if missing:
        raise ScanRefused(
            "nothing_to_compare",
            f"order {order.id} has no {' or '.join(missing)} on record yet to compare the scan with",
        )
    mismatched = [kind for kind, value in scanned.items() if value not in held[kind]]
    now = utcnow()
    at = scan.scanned_at or now
    event_id = f"scan:{order.id}:{scan.scan_id or uuid.uuid4().hex}"
    where = scan.site or (order.cmo if scan.step is Step.CMO_RECEIPT else order.site)
    attributes: dict[str, str | int | float | bool | None] = {
        "step": scan.step.value,
        "scanned_by": scan.scanned_by,
        "match": not mismatched,
        "mismatched": ",".join(mismatched) or None,
        **{f"scanned_{kind}": value for kind, value in scanned.items()},
    }
    recorded = CanonicalEvent(
        source_system=SourceSystem.HUB,
        source_event_id=event_id,
        event_type=EventType.CUSTODY_SCANNED,
        occurred_at=at,
        received_at=now,
        order_id=order.id,
        custody=Custody(
            what=tuple(scanned.values()),
            read_point=scan.location,
            biz_location=where,
            biz_step="inspecting",
            disposition="non_conformant" if mismatched else "conformant",
        ),
        reason=f"{scan.step.value} scan: {'no match (' + ', '.join(mismatched) + ')' if mismatched else 'match'}",
        attributes={k: v for k, v in attributes.items() if v is not None},
        provenance=_MAPPING,
    )
    events = [recorded]
    if mismatched:
        events.append(
            CanonicalEvent(
                source_system=SourceSystem.HUB,
                source_event_id=f"scan-hold:{event_id}",
                event_type=EventType.ORDER_ON_HOLD,
                occurred_at=at,
                received_at=now,
                order_id=order.id,
                reason=f"scan mismatch at {scan.step.value}",
                attributes={"scan_event": event_id},
                provenance=_MAPPING,
            )
        )
    outcomes = ledger.append_many(session, events)
    alert_id = None
    if mismatched:
        alert_id = alerts.raise_alert(
            session,
            kind=ALERT_KIND,
            severity=alerts.Severity.CRITICAL,
            order_id=order.id,
            message=(
                f"order held: the {', '.join(mismatched)} scanned at {scan.step.value} does not match order "
                f"{order.id} (scan {event_id} by {scan.scanned_by}); do not proceed until the bag is identified"
            ),
            dedupe_key=f"{ALERT_KIND}:{event_id}",
            details={"scan_event": event_id, "step": scan.step.value, "mismatched": mismatched, "site": where},
        ).id
    session.flush()
    session.refresh(order)
    return ScanResult(
        order_id=order.id,
        step=scan.step,
        match=not mismatched,
        checked=list(scanned),
        mismatched=mismatched,
        scan_event=event_id,
        ledger_seq=outcomes[0].seq,
        on_hold=order.on_hold,
        alert_id=alert_id,
        scanned_at=at,
    )


def _keys(session: Session, order_id: str, kinds: list[str]) -> dict[str, set[str]]:
    """The order's identity keys of these kinds (its DINs, its CoI id) as its chain holds them."""
    held: dict[str, set[str]] = {kind: set() for kind in kinds}
    rows = session.execute(
        select(OrderKey.kind, OrderKey.value).where(OrderKey.order_id == order_id, OrderKey.kind.in_(kinds))
    )
    for kind, value in rows:
        held[kind].add(value)
    return held
