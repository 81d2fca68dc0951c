"""Getting alerts in front of operators: the log always, a webhook when config/ops.yaml names one.

`deliver_pending` sends every open hub alert not sent before (one `alert_notifications` row each,
so a rerun never pages twice). Airflow calls it through `cgthub.notifier.HubAlertNotifier`.
Payloads carry order ids, kinds and codes, never patient identifiers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import ops_config
from cgthub.ops_tables import AlertNotification
from cgthub.tables import Alert, utcnow

log = logging.getLogger("cgthub.alerts.notify")
_RANK = {"info": 0, "warning": 1, "critical": 2}


def alert_payload(alert: Alert) -> dict[str, Any]:
    return {
        "source": "cgthub",
        "alert_id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "order_id": alert.order_id,
        "message": alert.message,
        "opened_at": alert.opened_at.isoformat(),
    }


def post(payload: dict[str, Any], config: ops_config.Notify) -> int | None:
    """POST one JSON payload to the alert webhook; the HTTP status, or None when none is configured."""
    url = config.effective_webhook()
    if not url:
        return None
    try:  # the answer's status is all we need: its body is never read (a receiver may send one without end)
        with httpx.stream("POST", url, json=payload, timeout=config.timeout_seconds) as response:
            status = response.status_code
    except httpx.HTTPError as error:
        log.error("alert webhook unreachable (%s): %s", type(error).__name__, error)
        return 0
    if status >= 300:
        log.error("alert webhook answered %s", status)
    return status


@dataclass
class Delivery:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def deliver_pending(session: Session, config: ops_config.Notify) -> Delivery:
    """Log and post every open alert at or above `min_severity` that was not notified yet.

    A webhook failure leaves the alert pending (next run retries); the log line is written anyway.
    """
    floor = _RANK[config.min_severity]
    notified = select(AlertNotification.alert_id)
    pending = session.scalars(
        select(Alert).where(Alert.status == "open", Alert.id.not_in(notified)).order_by(Alert.id)
    ).all()
    result = Delivery()
    for alert in pending:
        if _RANK.get(alert.severity, 0) < floor:
            continue
        level = logging.CRITICAL if alert.severity == "critical" else logging.WARNING
        log.log(
            level, "ALERT #%s %s [%s] order=%s: %s", alert.id, alert.kind, alert.severity, alert.order_id, alert.message
        )
        status = post(alert_payload(alert), config)
        if status is not None and not 200 <= status < 300:
            result.failed.append(alert.id)
            continue
        channels = "log" if status is None else "log,webhook"
        session.add(
            AlertNotification(alert_id=alert.id, notified_at=utcnow(), channels=channels, webhook_status=status)
        )
        result.sent.append(alert.id)
    session.flush()
    return result
