"""Webhook subscriptions: the change feed pushed to a consumer's URL through the outbox.

`fan_out` walks each active subscription's own cursor over the change feed (the key's data scope and
the subscription's status filter apply) and enqueues one outbox message per change, advancing the
cursor in the same transaction, so no change is skipped or enqueued twice. `deliver` drains the
outbox: each POST carries `X-CGTHub-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
under the subscription's secret and `X-CGTHub-Delivery` (the idempotency key: deliveries are
at-least-once). Failures back off exponentially; dead letters wait for `replay`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import archive, changes, heartbeat, outbox
from cgthub.api import webhook_targets
from cgthub.api.auth import principal_of
from cgthub.api.cursor import encode_feed_cursor
from cgthub.api.tables import ApiKey, WebhookSubscription
from cgthub.changes import FeedPosition, OrderChange
from cgthub.store import session_scope
from cgthub.tables import utcnow

log = logging.getLogger(__name__)

KIND = "webhook"
SIGNATURE_HEADER = "X-CGTHub-Signature"
DELIVERY_HEADER = "X-CGTHub-Delivery"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def _aad(subscription_id: str) -> bytes:
    return f"webhook:{subscription_id}".encode()


def create(session: Session, *, key_id: str, url: str, statuses: list[str]) -> tuple[WebhookSubscription, str]:
    """A new subscription starting at the current end of the feed; returns it and its secret (shown once)."""
    sub_id = "sub_" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    start = changes.end(session)
    row = WebhookSubscription(
        id=sub_id,
        key_id=key_id,
        url=url,
        secret_sealed=archive.seal(secret.encode(), _aad(sub_id)),
        statuses=sorted(set(statuses)),
        active=True,
        cursor_tx=start.tx,
        cursor_id=start.id,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, secret


def secret_of(subscription: WebhookSubscription) -> str:
    return archive.unseal(subscription.secret_sealed, _aad(subscription.id)).decode()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance: int = 300, now: int | None = None) -> bool:
    """What a receiver does: recompute the HMAC and reject stale timestamps (replay protection)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else int(time.time())) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def change_payload(change: Any, cursor: str) -> dict[str, Any]:
    return {
        "cursor": cursor,
        "order_id": change.order_id,
        "status": change.status,
        "previous_status": change.previous_status,
        "on_hold": bool(change.on_hold),
        "changed": list(change.changed),
        "milestones": dict(change.milestones),
        "status_since": change.status_since.isoformat() if change.status_since else None,
        "recorded_at": change.recorded_at.isoformat(),
    }


def fan_out(session: Session, *, batch: int = 500) -> int:
    """Enqueue the feed's new changes for every active subscription; returns messages enqueued."""
    enqueued = 0
    for sub in session.scalars(select(WebhookSubscription).where(WebhookSubscription.active.is_(True))):
        key = session.get(ApiKey, sub.key_id)
        if key is None or key.revoked_at is not None:
            continue
        principal = principal_of(key)
        where = principal.data_filter(OrderChange.site, OrderChange.cmo, OrderChange.market)
        if sub.statuses:
            where.append(OrderChange.status.in_(sub.statuses))
        found, scanned = changes.scan(session, FeedPosition(sub.cursor_tx, sub.cursor_id), batch, where=where)
        for change in found:
            cursor = encode_feed_cursor(changes.position(change))
            delivery_id = f"{sub.id}:{change.id}"
            payload = {"id": delivery_id, "type": "order.changed", **change_payload(change, cursor)}
            outbox.enqueue(session, outbox.Destination(KIND, sub.id), delivery_id, payload)
            enqueued += 1
        sub.cursor_tx, sub.cursor_id = scanned.tx, scanned.id
    session.flush()
    return enqueued


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


def deliver(database_url: str | None, *, client: httpx.Client | None = None, limit: int = 50) -> DeliveryReport:
    """Claim due webhook messages, POST them, record the outcome. HTTP happens outside any transaction."""
    report = DeliveryReport()
    with session_scope(database_url) as session:
        claimed = outbox.claim(session, KIND, limit)
        work = []
        for message in claimed:
            sub = session.get(WebhookSubscription, message.destination_id)
            target = (sub.url, secret_of(sub)) if sub is not None and sub.active else None
            work.append((message, target))
    if not work:
        return report
    own_client = client is None
    http = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    outcomes: list[tuple[outbox.OutboxMessage, str | None]] = []
    try:
        for message, target in work:
            outcomes.append((message, _post(http, message, target)))
    finally:
        if own_client:
            http.close()
    with session_scope(database_url) as session:
        for message, error in outcomes:
            if error is None:
                outbox.mark_delivered(session, message)
                report.delivered += 1
                continue
            row = outbox.mark_failed(session, message, error)
            report.errors.append(error)
            if row.status == outbox.OutboxStatus.DEAD.value:
                report.dead += 1
                log.warning("webhook message %s is dead after %s attempts: %s", row.id, row.attempts, error)
            else:
                report.failed += 1
    return report


def _post(http: httpx.Client, message: outbox.OutboxMessage, target: tuple[str, str] | None) -> str | None:
    """None when the receiver took it (2xx), else why not."""
    if target is None:
        return "subscription deleted or inactive"
    url, secret = target
    body = json.dumps(message.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        DELIVERY_HEADER: message.idempotency_key,
        "User-Agent": "cgthub-webhooks/1",
    }
    try:
        checked = webhook_targets.check(url)
    except webhook_targets.TargetRefused as exc:
        # Decided before any connection, so an internal port's state never shows in the outcome.
        return f"target refused: {exc}"
    try:
        pinned, host_header, extensions = _pinned(url, checked)
        response = http.post(pinned, content=body, headers={**headers, "Host": host_header}, extensions=extensions)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"receiver answered HTTP {response.status_code}"


def _pinned(url: str, target: webhook_targets.Target) -> tuple[httpx.URL, str, dict[str, Any]]:
    """The URL with its host replaced by the checked address (no second lookup that a rebinding name
    could answer differently), the Host header the receiver expects, and the extension that keeps TLS
    verifying the URL's own host name."""
    original = httpx.URL(url)
    extensions: dict[str, Any] = {}
    if original.scheme == "https":
        extensions["sni_hostname"] = original.host
    return original.copy_with(host=target.address), original.netloc.decode("ascii"), extensions


def pump(database_url: str | None, *, client: httpx.Client | None = None, rounds: int = 20) -> DeliveryReport:
    """Fan out new changes and deliver what is due, until nothing is left to do now."""
    total = DeliveryReport()
    for _ in range(rounds):
        with session_scope(database_url) as session:
            fan_out(session)
        report = deliver(database_url, client=client)
        total.delivered += report.delivered
        total.failed += report.failed
        total.dead += report.dead
        total.errors.extend(report.errors)
        if not (report.delivered or report.failed or report.dead):
            break
    return total


def replay(session: Session, subscription_id: str | None = None) -> int:
    """Operator action: give a subscription's dead letters (or every webhook's) a fresh set of attempts."""
    return outbox.replay_dead(session, destination_kind=KIND, destination_id=subscription_id)


# How old the delivery loop's last beat may grow before /health/ready reports it down: three missed
# rounds, but at least long enough for a round that meets a few slow endpoints (TIMEOUT each).
STALE_AFTER_FLOOR = 30.0


def run_forever(
    database_url: str | None, stop: threading.Event, *, interval: float = 1.0, stale_after: float | None = None
) -> None:
    """The delivery loop `cgthub api serve` runs in a thread (and `cgthub api webhooks run`).

    Each round starts with a heartbeat in the hub's database (cgthub.heartbeat), so /health/ready
    can tell a loop that stopped or hangs from one that has nothing to do."""
    stale = stale_after if stale_after is not None else max(3 * interval, STALE_AFTER_FLOOR)
    with httpx.Client(timeout=TIMEOUT, follow_redirects=False) as client:
        while not stop.is_set():
            try:
                heartbeat.beat(database_url, heartbeat.WEBHOOK_DELIVERY, interval=interval, stale_after=stale)
                pump(database_url, client=client)
            except Exception:
                log.exception("webhook delivery round failed; retrying")
            stop.wait(interval)
