"""Reconciliation: does every system tell the same story about each order?

Compares the hub's order record with each partner's own current record of it (a snapshot the
connectors fetch) and with what is lying unmatched in quarantine:

status_disagreement  a partner's status contradicts the hub's (cancelled on one side only), or has
                     lagged behind it for longer than `status_lag_hours` (a missed update)
coi_mismatch         a partner's chain-of-identity id differs from the hub's for the same order
unknown_order        a partner has an order no hub order carries the reference of
orphan_shipment      a courier shipment that matched no order for `orphan_shipment_after_hours`
stuck_order          an open order that has not moved along its life cycle for `stuck_after_days`

`reconcile(...)` is pure. `run(session, ...)` writes a report row, opens an alert per finding and
closes reconciliation alerts that no longer hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import alerts
from cgthub.lifecycle import RANK, TERMINAL, OrderProjection, OrderStatus
from cgthub.ops_config import OpsConfig
from cgthub.ops_tables import ReconciliationReport
from cgthub.tables import Alert, Order, QuarantineEntry, utcnow

KIND_PREFIX = "reconciliation."
_CANCELLED_LIKE = frozenset({OrderStatus.CANCELLED, OrderStatus.TERMINATED})


@dataclass(frozen=True)
class PartnerRecord:
    """One partner's current record of an order, found by that partner's own reference."""

    system: str
    ref_kind: str  # an ExternalRefs field name: crm_order_id, erp_sales_order, cmo_batch_id, ...
    ref_value: str
    status: OrderStatus | None = None
    coi_id: str | None = None
    as_of: datetime | None = None


@dataclass(frozen=True)
class UnmatchedShipment:
    """A courier message waiting in quarantine for an order that never came."""

    quarantine_id: int
    subject: str
    first_seen: datetime


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    subject: str
    message: str
    order_id: str | None = None
    system: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def dedupe_key(self) -> str:
        return f"recon:{self.kind}:{self.system or 'hub'}:{self.subject}"


def reconcile(
    orders: Iterable[OrderProjection],
    records: Iterable[PartnerRecord],
    unmatched: Iterable[UnmatchedShipment],
    now: datetime,
    config: OpsConfig,
) -> list[Finding]:
    """Every disagreement between the hub's orders, the partners' records and quarantine (pure)."""
    rules = config.reconciliation
    orders = list(orders)
    by_ref = {(kind, value): order for order in orders for kind, value in order.refs.pairs()}
    findings: list[Finding] = []
    for record in records:
        order = by_ref.get((record.ref_kind, record.ref_value))
        if order is None:
            findings.append(
                Finding(
                    kind="unknown_order",
                    severity="warning",
                    subject=f"{record.ref_kind}={record.ref_value}",
                    system=record.system,
                    message=f"{record.system} has {record.ref_kind} {record.ref_value}, which no hub order carries",
                )
            )
            continue
        findings.extend(_compare(order, record, now, timedelta(hours=rules.status_lag_hours)))
    for item in unmatched:
        if now - item.first_seen >= timedelta(hours=rules.orphan_shipment_after_hours):
            findings.append(
                Finding(
                    kind="orphan_shipment",
                    severity="warning",
                    subject=item.subject or f"quarantine#{item.quarantine_id}",
                    system="courier",
                    message=f"courier shipment {item.subject or '?'} has matched no order since "
                    f"{item.first_seen:%Y-%m-%d %H:%M}Z (quarantine #{item.quarantine_id})",
                    details={"quarantine_id": item.quarantine_id},
                )
            )
    for order in orders:
        # Progress along the life cycle, not any event: a courier booked or an alert resolved today
        # does not move a stalled order (cgthub.lifecycle's last_progress_at).
        stuck_after = timedelta(days=rules.stuck_after(order.stage))
        moved = order.progressed_at()
        if order.stage in TERMINAL or moved is None or now - moved < stuck_after:
            continue
        idle = (now - moved).days
        findings.append(
            Finding(
                kind="stuck_order",
                severity="warning",
                subject=order.order_id,
                order_id=order.order_id,
                message=f"order {order.order_id} has not moved for {idle} days (status {order.status.value})",
                details={"last_progress_at": moved.isoformat(), "status": order.status.value},
            )
        )
    return findings


def _compare(order: OrderProjection, record: PartnerRecord, now: datetime, lag: timedelta) -> list[Finding]:
    subject = order.order_id
    found: list[Finding] = []
    if record.coi_id and order.coi_id and record.coi_id != order.coi_id:
        found.append(
            Finding(
                kind="coi_mismatch",
                severity="critical",
                subject=subject,
                order_id=order.order_id,
                system=record.system,
                message=f"{record.system} {record.ref_kind} {record.ref_value} carries COI id {record.coi_id}, "
                f"the hub's order {order.order_id} has {order.coi_id}",
                details={"partner_coi_id": record.coi_id, "hub_coi_id": order.coi_id},
            )
        )
    theirs, ours = record.status, order.stage
    if theirs is None or theirs is ours:
        return found
    # Since when has the partner been behind: when the hub moved past the partner's status.
    their_rank = RANK.get(theirs, -1)
    passed = [at for status, at in order.milestones.items() if RANK.get(OrderStatus(status), -1) > their_rank]
    since = min(passed) if passed else order.status_since
    if (theirs in _CANCELLED_LIKE) != (ours in _CANCELLED_LIKE):
        severity, why = "critical", "only one side says the order is over"
    elif theirs in RANK and ours in RANK and RANK[theirs] > RANK[ours]:
        severity, why = "warning", "the partner is ahead: the hub missed an event"
    elif since is not None and now - since > lag:
        severity, why = "warning", f"the partner has not caught up in {int((now - since).total_seconds() // 3600)} h"
    else:
        return found  # still within the time a partner may take to catch up
    found.append(
        Finding(
            kind="status_disagreement",
            severity=severity,
            subject=subject,
            order_id=order.order_id,
            system=record.system,
            message=f"{record.system} says {theirs.value}, hub says {ours.value}: {why}",
            details={"partner_status": theirs.value, "hub_status": ours.value, "ref": record.ref_value},
        )
    )
    return found


def unmatched_shipments(session: Session) -> list[UnmatchedShipment]:
    """Courier messages waiting in quarantine for their order (stage `correlate`).

    A shipment has been an orphan since the courier's event happened, or since the hub got it if
    that was earlier; its subject is the shipment id when the event names one.
    """
    rows = session.scalars(
        select(QuarantineEntry).where(
            QuarantineEntry.status == "open", QuarantineEntry.stage == "correlate", QuarantineEntry.system == "courier"
        )
    )
    found = []
    for row in rows:
        event = (row.details or {}).get("event") or {}
        since = row.first_seen
        if event.get("occurred_at"):
            since = min(since, datetime.fromisoformat(event["occurred_at"]))
        subject = (event.get("shipment") or {}).get("shipment_id") or row.subject
        found.append(UnmatchedShipment(row.id, subject, since))
    return found


def hub_orders(session: Session) -> list[OrderProjection]:
    return [OrderProjection.model_validate(p) for p in session.scalars(select(Order.projection))]


@dataclass
class ReconciliationRun:
    report_id: int
    findings: list[Finding]
    opened: list[int]
    closed: list[int]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.findings:
            out[finding.kind] = out.get(finding.kind, 0) + 1
        return out


def run(session: Session, records: list[PartnerRecord], now: datetime, config: OpsConfig) -> ReconciliationRun:
    """Reconcile, store the report, open alerts for findings and close the ones that cleared."""
    started = utcnow()
    orders = hub_orders(session)
    findings = reconcile(orders, records, unmatched_shipments(session), now, config)
    opened: list[int] = []
    current: set[str] = set()
    for finding in findings:
        current.add(finding.dedupe_key)
        existed = session.scalars(select(Alert.id).where(Alert.dedupe_key == finding.dedupe_key)).first()
        alert = alerts.raise_alert(
            session,
            kind=KIND_PREFIX + finding.kind,
            message=finding.message,
            dedupe_key=finding.dedupe_key,
            order_id=finding.order_id,
            severity=alerts.Severity(finding.severity),
            details=finding.details,
        )
        if alert.status != "open":
            alert.status, alert.closed_at, alert.message = "open", None, finding.message
            existed = None
        if existed is None:
            session.flush()
            opened.append(alert.id)
    closed: list[int] = []
    for alert in session.scalars(select(Alert).where(Alert.status == "open", Alert.kind.startswith(KIND_PREFIX))):
        if alert.dedupe_key not in current:
            alerts.close(session, alert)
            closed.append(alert.id)
    result = ReconciliationRun(report_id=0, findings=findings, opened=opened, closed=closed)
    report = ReconciliationReport(
        started_at=started,
        finished_at=utcnow(),
        orders_checked=len(orders),
        records_checked=len(records),
        counts=result.counts(),
        findings=[asdict(f) for f in findings],
    )
    session.add(report)
    session.flush()
    result.report_id = report.id
    return result
