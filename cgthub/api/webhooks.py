"""Webhook subscriptions: the change feed pushed to a consumer's URL through the outbox.

`fan_out` walks each active subscription's own cursor over the change feed (the key's data scope and
the subscription's status filter apply) and enqueues one outbox message per change, advancing the
cursor in the same transaction, so no change is skipped or enqueued twice. `deliver` drains the
outbox: each POST carries `X-CGTHub-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
under the subscription's secret and `X-CGTHub-Delivery` (the idempotency key: deliveries are
at-least-once). Failures back off exponentially, at least as long as the receiver's Retry-After
asks; dead letters wait for `replay`. A delivery ends within CGTHUB_WEBHOOK_DELIVERY_DEADLINE
whatever the receiver does (cgthub.api.webhook_targets), and its answer's body is never read.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from cgthub.settings import get_settings
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
    postponed: int = 0  # not attempted: the receiver had just failed to answer an earlier message
    errors: list[str] = field(default_factory=list)

    def add(self, other: DeliveryReport) -> None:
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.postponed += other.postponed
        self.errors.extend(other.errors)


@dataclass(frozen=True)
class _Outcome:
    error: str | None = None  # None: the receiver took it (2xx)
    retry_after: timedelta | None = None  # the receiver's Retry-After
    unanswered: bool = False  # no answer at all (refused, reset, timed out)


_Work = tuple[outbox.OutboxMessage, tuple[str, str] | None]


def deliver(database_url: str | None, *, client: httpx.Client | None = None, limit: int = 50) -> DeliveryReport:
    """Claim due webhook messages, POST them, record the outcome. HTTP happens outside any transaction.

    Each subscription's messages go in claim order, subscriptions side by side
    (CGTHUB_WEBHOOK_DELIVERY_WORKERS), each recording its own outcomes as soon as it is done: a
    receiver that is slow or silent holds only its own messages. Once a receiver does not answer
    at all, its remaining messages of the round wait for its next attempt, uncounted."""
    report = DeliveryReport()
    by_subscription: dict[str, list[_Work]] = {}
    with session_scope(database_url) as session:
        for message in outbox.claim(session, KIND, limit):
            sub = session.get(WebhookSubscription, message.destination_id)
            target = (sub.url, secret_of(sub)) if sub is not None and sub.active else None
            by_subscription.setdefault(message.destination_id, []).append((message, target))
    if not by_subscription:
        return report
    own_client = client is None
    http = client or webhook_targets.delivery_client(TIMEOUT)
    workers = min(get_settings().webhook_delivery_workers, len(by_subscription))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook-delivery") as pool:
            running = [pool.submit(_deliver_in_order, database_url, http, work) for work in by_subscription.values()]
            for done in running:
                report.add(done.result())
    finally:
        if own_client:
            http.close()
    return report


def _deliver_in_order(database_url: str | None, http: httpx.Client, work: list[_Work]) -> DeliveryReport:
    """One subscription's claimed messages, in order, until its receiver does not answer."""
    report = DeliveryReport()
    outcomes: list[tuple[outbox.OutboxMessage, _Outcome]] = []
    for message, target in work:
        outcomes.append((message, _post(http, message, target)))
        if outcomes[-1][1].unanswered:
            break
    with session_scope(database_url) as session:
        until = utcnow()
        for message, outcome in outcomes:
            if outcome.error is None:
                outbox.mark_delivered(session, message)
                report.delivered += 1
                continue
            row = outbox.mark_failed(session, message, outcome.error, retry_after=outcome.retry_after)
            report.errors.append(outcome.error)
            if row.status == outbox.OutboxStatus.DEAD.value:
                report.dead += 1
                log.warning("webhook message %s is dead after %s attempts: %s", row.id, row.attempts, outcome.error)
            else:
                report.failed += 1
                until = row.next_attempt_at
        for message, _target in work[len(outcomes) :]:
            outbox.postpone(session, message, max(until, utcnow() + outbox.BASE_DELAY))
            report.postponed += 1
    return report


def _post(http: httpx.Client, message: outbox.OutboxMessage, target: tuple[str, str] | None) -> _Outcome:
    """How the receiver took one message. Its answer's body is never read: a receiver may send an
    endless one, and the status says all the hub needs."""
    if target is None:
        return _Outcome("subscription deleted or inactive")
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
        return _Outcome(f"target refused: {exc}")
    try:
        pinned, host_header, extensions = _pinned(url, checked)
        with webhook_targets.deadline(get_settings().webhook_delivery_deadline):
            request = http.build_request(
                "POST", pinned, content=body, headers={**headers, "Host": host_header}, extensions=extensions
            )
            response = http.send(request, stream=True)
            response.close()
    except httpx.HTTPError as exc:
        unanswered = isinstance(exc, httpx.TimeoutException | httpx.NetworkError)
        return _Outcome(f"{type(exc).__name__}: {exc}"[:500], unanswered=unanswered)
    if 200 <= response.status_code < 300:
        return _Outcome()
    return _Outcome(
        f"receiver answered HTTP {response.status_code}", retry_after=_retry_after(response.headers.get("retry-after"))
    )


def _retry_after(value: str | None) -> timedelta | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return timedelta(seconds=int(text[:9]))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when - datetime.now(UTC), timedelta(0))


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
        total.add(report)
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
    with webhook_targets.delivery_client(TIMEOUT) as client:
        while not stop.is_set():
            try:
                heartbeat.beat(database_url, heartbeat.WEBHOOK_DELIVERY, interval=interval, stale_after=stale)
                pump(database_url, client=client)
            except Exception:
                log.exception("webhook delivery round failed; retrying")
            stop.wait(interval)
