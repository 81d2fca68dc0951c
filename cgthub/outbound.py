"""Outbound: which partner hears about which order change, and delivering what the outbox holds.

`route` reads the change feed from its cursor and enqueues one outbox message per interested
partner (in the same transaction that moves the cursor, so a change is routed exactly once).
`drain(kind)` delivers one partner's due messages through the push its declaration names
(cgthub.partners), or, when its connector is switched off, as JSON files in `var/outbound/<kind>/`
(the file exchange many CMOs and hospitals use); failures go back to the outbox with backoff
(cgthub.outbox).

A push may return what the partner answered as `Inbound` payloads (the courier's booking with its
shipment id): they are archived and mapped like anything the partner sends, in the transaction
that marks the message delivered, so the answer is in the order once the message counts as sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import changes, outbox, partners, pipeline, routing
from cgthub.archive import Inbound
from cgthub.lifecycle import OrderStatus
from cgthub.ops_tables import FeedCursor
from cgthub.settings import var_dir
from cgthub.store import session_scope
from cgthub.tables import Order, utcnow

log = logging.getLogger(__name__)
CURSOR = "outbound-router"


def interests() -> dict[str, frozenset[str] | None]:
    """Which statuses each partner is told about (None: every change), from the partners' declarations."""
    return {name: partner.push.statuses for name, partner in partners.pushed().items() if partner.push}


def interested(wanted: frozenset[str] | None, status: str, changed: list[str]) -> bool:
    """Whether a change concerns a partner told about `wanted` statuses (None: every change)."""
    if wanted is None:
        return True
    return ("status" in changed or "on_hold" in changed) and OrderStatus(status) in wanted


def route(session: Session, *, limit: int = 5000) -> dict[str, int]:
    """Enqueue the partner messages for every change after the router's cursor; move the cursor."""
    cursor = session.get(FeedCursor, CURSOR, with_for_update=True)
    if cursor is None:
        cursor = FeedCursor(name=CURSOR, tx=0, change_id=0, updated_at=utcnow())
        session.add(cursor)
    rows = changes.read(session, changes.FeedPosition(cursor.tx, cursor.change_id), limit)
    known = _known(session, {row.order_id for row in rows})
    wanted = interests()
    counts = dict.fromkeys(wanted, 0)
    for row in rows:
        for partner, statuses in wanted.items():
            if not interested(statuses, row.status, list(row.changed)):
                continue
            payload = {
                "order_id": row.order_id,
                "status": row.status,
                "previous_status": row.previous_status,
                "on_hold": row.on_hold,
                "status_since": row.status_since.isoformat() if row.status_since else None,
                "refs": known.get(row.order_id, {}).get("refs", {}),
                "scheduled": known.get(row.order_id, {}).get("scheduled", {}),
                "market": row.market,
                "site": row.site,
                "cmo": known.get(row.order_id, {}).get("cmo"),
                "stage": known.get(row.order_id, {}).get("stage"),  # where the order is now (a leg may be past)
                "change_id": row.id,
            }
            key = f"{partner}:{row.order_id}:{row.id}"
            outbox.enqueue(session, outbox.Destination(partner, partner), key, {**payload, "idempotency_key": key})
            counts[partner] += 1
    if rows:
        cursor.tx, cursor.change_id, cursor.updated_at = rows[-1].tx, rows[-1].id, utcnow()
    return counts


def _known(session: Session, order_ids: set[str]) -> dict[str, dict[str, Any]]:
    """What a partner may need beside the change: each order's references, booked dates, CMO and stage now."""
    out: dict[str, dict[str, Any]] = {}
    for order_id, projection in session.execute(select(Order.id, Order.projection).where(Order.id.in_(order_ids))):
        out[order_id] = {
            "refs": dict(projection.get("refs") or {}),
            "scheduled": dict(projection.get("scheduled") or {}),
            "cmo": projection.get("cmo"),
            "stage": projection.get("stage"),
        }
    return out


def deliverer(partner: str) -> tuple[str, Callable[[dict[str, Any]], Any]]:
    """How messages reach `partner`: its declared push, or the file exchange when its connector is off."""
    from cgthub.partner_sync import connector_enabled

    declared = partners.get(partner).push
    if declared is not None and connector_enabled(partner):
        return partners.origin(declared.deliver), partners.resolve(declared.deliver)
    folder = var_dir() / "outbound" / partner
    folder.mkdir(parents=True, exist_ok=True)

    def write_file(payload: dict[str, Any]) -> None:
        name = payload["idempotency_key"].replace(":", "_") + ".json"
        (folder / name).write_text(json.dumps(payload, sort_keys=True, indent=1))

    return f"files in {folder}", write_file


def _answers(returned: Any) -> list[Inbound]:
    """The partner's answers among what a push returned (anything else it returns is not kept)."""
    if isinstance(returned, Inbound):
        return [returned]
    if isinstance(returned, list | tuple):
        return [item for item in returned if isinstance(item, Inbound)]
    return []


def drain(partner: str, *, database_url: str | None = None, limit: int = 200) -> dict[str, Any]:
    """Deliver one partner's due outbox messages; one failure never stops the others."""
    via, push = deliverer(partner)
    with session_scope(database_url) as session:
        claimed = outbox.claim(session, partner, limit)
        session.expunge_all()
    delivered, failed = 0, 0
    errors: list[str] = []
    for message in claimed:
        try:
            answered = _answers(push(dict(message.payload)))
        except Exception as error:  # a partner's failure, whatever its type, is retried by the outbox
            with session_scope(database_url) as session:
                outbox.mark_failed(session, message, f"{type(error).__name__}: {error}")
            failed += 1
            errors.append(f"#{message.id}: {type(error).__name__}")
            continue
        with session_scope(database_url) as session:
            if answered:
                pipeline.ingest_batch(session, answered, routing.mapper_for(session))
            outbox.mark_delivered(session, message)
        delivered += 1
    summary = {"partner": partner, "via": via, "claimed": len(claimed), "delivered": delivered, "failed": failed}
    if errors:
        summary["errors"] = errors[:20]
    log.info("outbound %s: %s", partner, summary)
    return summary
