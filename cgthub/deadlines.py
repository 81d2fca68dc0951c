"""Deadline monitoring: overdue milestones, temperature excursions, vein-to-vein time at risk.

`breaches(order, now, config)` is pure: the order's projection and the clock in, what is late out.
`run(session, now)` applies it to every open order, opens an alert per breach (idempotent on its
dedupe key) and closes deadline alerts whose condition has cleared (the receipt finally arrived),
so "open alerts" always means "still true". Thresholds live in config/ops.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import alerts
from cgthub.lifecycle import RANK, TERMINAL, OrderProjection
from cgthub.ops_config import MilestoneRule, OpsConfig
from cgthub.tables import Alert, Order

MILESTONE_OVERDUE = "milestone_overdue"
VEIN_TO_VEIN_AT_RISK = "vein_to_vein_at_risk"
TEMPERATURE_EXCURSION = "temperature_excursion"
# Kinds this module owns and may close again; excursions are facts and stay open until handled.
CLEARABLE = frozenset({MILESTONE_OVERDUE, VEIN_TO_VEIN_AT_RISK})


@dataclass(frozen=True)
class Breach:
    kind: str
    order_id: str
    severity: alerts.Severity
    message: str
    dedupe_key: str
    details: dict[str, Any] = field(default_factory=dict)


def breaches(order: OrderProjection, now: datetime, config: OpsConfig) -> list[Breach]:
    """What is late or at risk on this order at `now` (pure)."""
    found = [_excursion(order, record) for record in order.excursions]
    if order.stage in TERMINAL:
        return found
    if not order.on_hold:  # a hold is a deliberate stop: its clock is the hold reason's owner's
        found.extend(b for rule in config.deadlines.milestones if (b := _overdue(order, rule, now)))
    at_risk = _vein_to_vein(order, now, config)
    if at_risk:
        found.append(at_risk)
    return found


def _overdue(order: OrderProjection, rule: MilestoneRule, now: datetime) -> Breach | None:
    if order.stage is not rule.after or rule.expect.value in order.milestones:
        return None
    start = {
        "status_since": order.status_since,
        "scheduled_apheresis": order.scheduled.get("apheresis"),
        "scheduled_infusion": order.scheduled.get("infusion"),
    }[rule.start] or order.status_since
    if start is None:
        return None
    due = start + timedelta(hours=rule.within_hours)
    if now <= due:
        return None
    late_hours = round((now - due).total_seconds() / 3600, 1)
    return Breach(
        kind=MILESTONE_OVERDUE,
        order_id=order.order_id,
        severity=alerts.Severity(rule.severity),
        message=f"{rule.expect.value} overdue: order {rule.after.value} since {start:%Y-%m-%d %H:%M}Z, "
        f"expected within {rule.within_hours:g} h, late by {late_hours:g} h",
        dedupe_key=f"deadline:{order.order_id}:{rule.after.value}->{rule.expect.value}",
        details={"after": rule.after.value, "expect": rule.expect.value, "due": due.isoformat(), "late_h": late_hours},
    )


def _vein_to_vein(order: OrderProjection, now: datetime, config: OpsConfig) -> Breach | None:
    """Projected vein-to-vein: time so far plus what the current step still needs, or at least the next step's."""
    elapsed = order.vein_to_vein_days(now)
    remaining = config.deadlines.remaining_days
    if elapsed is None or order.stage not in remaining or order.status_since is None:
        return None
    in_status = (now - order.status_since).total_seconds() / 86400
    later = [days for status, days in remaining.items() if RANK.get(status, 0) > RANK.get(order.stage, 0)]
    next_step = max(later, default=0.0)  # what the next step still needs on a normal course
    still_needed = max(remaining[order.stage] - in_status, next_step)
    projected = round(elapsed + still_needed, 1)
    target = config.deadlines.target_days(order.market)
    if projected <= target:
        return None
    return Breach(
        kind=VEIN_TO_VEIN_AT_RISK,
        order_id=order.order_id,
        severity=alerts.Severity.WARNING,
        message=f"vein-to-vein at risk: {elapsed:g} d so far, ~{projected:g} d projected "
        f"against the {order.market or 'default'} target of {target:g} d",
        dedupe_key=f"v2v:{order.order_id}",
        details={"elapsed_days": elapsed, "projected_days": projected, "target_days": target},
    )


def _excursion(order: OrderProjection, record: dict[str, Any]) -> Breach:
    # Same dedupe key as the projection's alert: one alert per excursion, whoever sees it first.
    return Breach(
        kind=TEMPERATURE_EXCURSION,
        order_id=order.order_id,
        severity=alerts.Severity.CRITICAL,
        message=f"temperature excursion on shipment {record.get('shipment_id', '?')}",
        dedupe_key=f"excursion:{order.order_id}:{record['source_event_id']}",
        details=record,
    )


@dataclass
class DeadlineRun:
    orders_checked: int = 0
    opened: list[int] = field(default_factory=list)
    still_open: int = 0
    closed: list[int] = field(default_factory=list)


def run(session: Session, now: datetime, config: OpsConfig) -> DeadlineRun:
    """Check every open order; open alerts for new breaches, close cleared deadline alerts."""
    open_deadline_alerts = list(session.scalars(select(Alert).where(Alert.status == "open", Alert.kind.in_(CLEARABLE))))
    flagged_orders = {a.order_id for a in open_deadline_alerts if a.order_id}
    terminal = [s.value for s in TERMINAL]
    rows = session.execute(
        select(Order.id, Order.projection).where(Order.status.not_in(terminal) | Order.id.in_(flagged_orders))
    ).all()
    result = DeadlineRun(orders_checked=len(rows))
    current: set[str] = set()
    for _order_id, projection in rows:
        state = OrderProjection.model_validate(projection)
        for breach in breaches(state, now, config):
            current.add(breach.dedupe_key)
            known = session.scalars(select(Alert.id).where(Alert.dedupe_key == breach.dedupe_key)).first()
            alert = alerts.raise_alert(
                session,
                kind=breach.kind,
                message=breach.message,
                dedupe_key=breach.dedupe_key,
                order_id=breach.order_id,
                severity=breach.severity,
                details=breach.details,
            )
            if alert.status != "open":  # cleared once, late again: reopen the same alert
                alert.status, alert.closed_at = "open", None
                known = None
            # The text says how late, so far: it follows the order rather than the day it was raised.
            if alert.message != breach.message or alert.details != breach.details:
                alert.message, alert.details = breach.message, breach.details
            if known is None:
                session.flush()
                result.opened.append(alert.id)
            else:
                result.still_open += 1
    for alert in open_deadline_alerts:
        if alert.dedupe_key not in current:
            alerts.close(session, alert)
            result.closed.append(alert.id)
    return result
