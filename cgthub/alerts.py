"""Alerts an operator must look at: COI discrepancies, impossible transitions, excursions.

Raising is idempotent on a dedupe key, so recomputing a projection never opens the same alert twice.
Messages carry order ids and codes, never patient identifiers.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cgthub.tables import Alert, utcnow

log = logging.getLogger(__name__)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


def raise_alert(
    session: Session,
    *,
    kind: str,
    message: str,
    dedupe_key: str,
    order_id: str | None = None,
    severity: Severity = Severity.WARNING,
    details: dict[str, Any] | None = None,
) -> Alert:
    existing = session.scalars(select(Alert).where(Alert.dedupe_key == dedupe_key)).first()
    if existing is not None:
        return existing
    alert = Alert(
        order_id=order_id,
        kind=kind,
        severity=severity.value,
        message=message,
        details=details or {},
        dedupe_key=dedupe_key,
        status="open",
        opened_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(alert)
    except IntegrityError:
        found = session.scalars(select(Alert).where(Alert.dedupe_key == dedupe_key)).first()
        if found is None:
            raise
        return found
    log.warning("alert %s [%s] order=%s: %s", kind, severity.value, order_id, message)
    return alert


CONTROL_ID_REUSED = "control_id_reused"


def control_id_reused(session: Session, *, system: str, raw_id: int, earlier_raw_id: int) -> Alert:
    """A sender reused a message's delivery id (an HL7 control id, a file name) for other content.

    The new payload was archived and applied as a message of its own; the operator should know, since
    a sender that reuses ids may also resend what it means as new. Raw ids only: the text goes to
    every operator, and the ids themselves may be partner data.
    """
    return raise_alert(
        session,
        kind=CONTROL_ID_REUSED,
        message=(
            f"{system} reused the delivery id of raw message #{earlier_raw_id} for different content: "
            f"raw message #{raw_id} was archived as a new message (applied, unless its quarantine entry says why not)"
        ),
        dedupe_key=f"{CONTROL_ID_REUSED}:{system}:{raw_id}",
        details={"system": system, "raw_id": raw_id, "earlier_raw_id": earlier_raw_id},
    )


EVENT_CONFLICT = "event_conflict"


def event_conflict(
    session: Session,
    *,
    system: str,
    quarantine_id: int,
    order_id: str | None,
    fields: list[str],
    raw_id: int | None,
) -> Alert:
    """An event id the ledger holds came again with other content (`cgthub.conflicts`): the first
    version stays applied, the new one waits in quarantine for an operator's decision. The text
    names the differing fields, never their values, nor the sender's event id (partner data)."""
    return raise_alert(
        session,
        kind=EVENT_CONFLICT,
        order_id=order_id,
        message=(
            f"{system} sent an event it had sent before with different content (fields: {', '.join(fields)}); "
            f"the first version is applied, the new one is held in quarantine #{quarantine_id}: "
            "retry it as a correction or discard it"
        ),
        dedupe_key=f"{EVENT_CONFLICT}:{quarantine_id}",
        details={"system": system, "quarantine_id": quarantine_id, "fields": fields, "raw_id": raw_id},
    )


def open_alerts(session: Session, order_id: str | None = None) -> list[Alert]:
    query = select(Alert).where(Alert.status == "open").order_by(Alert.id)
    if order_id is not None:
        query = query.where(Alert.order_id == order_id)
    return list(session.scalars(query))


def close(session: Session, alert: Alert) -> None:
    alert.status = "closed"
    alert.closed_at = utcnow()
