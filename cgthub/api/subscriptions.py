"""Webhook subscription routes: create (secret shown once), list, delete, replay dead letters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cgthub import outbox
from cgthub.api import webhook_targets, webhooks
from cgthub.api.auth import Principal, Scope
from cgthub.api.deps import WRITE_SESSION, authorized, read_session
from cgthub.api.errors import ERROR_RESPONSES, NOT_FOUND_RESPONSE, ApiError, not_found
from cgthub.api.schemas import ReplayResult, Subscription, SubscriptionCreated, SubscriptionRequest
from cgthub.api.tables import WebhookSubscription

router = APIRouter(tags=["webhooks"], responses=ERROR_RESPONSES | {404: NOT_FOUND_RESPONSE})

SubscriptionId = Path(min_length=1, max_length=24)


def _view(session: Session, sub: WebhookSubscription) -> dict[str, Any]:
    rows = session.execute(
        select(outbox.OutboxMessage.status, func.count())
        .where(outbox.OutboxMessage.destination_kind == webhooks.KIND, outbox.OutboxMessage.destination_id == sub.id)
        .group_by(outbox.OutboxMessage.status)
    )
    counts = {status: int(count) for status, count in rows}
    return {
        "id": sub.id,
        "url": sub.url,
        "statuses": sub.statuses,
        "active": sub.active,
        "created_at": sub.created_at,
        "delivery": dict(counts),
    }


def _owned(session: Session, principal: Principal, subscription_id: str) -> WebhookSubscription:
    sub = session.get(WebhookSubscription, subscription_id)
    if sub is None or (sub.key_id != principal.key_id and not principal.has(Scope.ADMIN)):
        raise not_found("subscription")
    return sub


@router.post("/subscriptions", response_model=SubscriptionCreated, status_code=201)
def create_subscription(
    request: SubscriptionRequest,
    http_request: Request,
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = WRITE_SESSION,
) -> dict[str, Any]:
    """Subscribe a URL to the change feed from now on; it receives what this key may see."""
    url = str(request.url)
    if len(url) > 2000:
        raise ApiError(422, "invalid_request", "the URL is longer than 2000 characters")
    server = http_request.scope.get("server")
    try:
        webhook_targets.check(url, serving_port=server[1] if server else None)
    except webhook_targets.HostUnresolved:
        pass  # judged at each delivery, where it must resolve to an address webhooks may reach
    except webhook_targets.TargetRefused as exc:
        raise ApiError(
            422, "webhook_target_refused", str(exc), [{"location": "body.url", "problem": "target refused"}]
        ) from exc
    sub, secret = webhooks.create(
        session, key_id=principal.key_id, url=url, statuses=[s.value for s in request.statuses]
    )
    return _view(session, sub) | {"secret": secret}


@router.get("/subscriptions", response_model=list[Subscription])
def list_subscriptions(
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = Depends(read_session),
) -> list[dict[str, Any]]:
    """This key's subscriptions (every subscription for admin keys), with delivery counts."""
    query = select(WebhookSubscription).order_by(WebhookSubscription.created_at, WebhookSubscription.id)
    if not principal.has(Scope.ADMIN):
        query = query.where(WebhookSubscription.key_id == principal.key_id)
    return [_view(session, sub) for sub in session.scalars(query)]


@router.delete("/subscriptions/{subscription_id}", response_model=Subscription)
def delete_subscription(
    subscription_id: str = SubscriptionId,
    principal: Principal = Depends(authorized(Scope.STATUS_READ)),
    session: Session = WRITE_SESSION,
) -> dict[str, Any]:
    """Stop deliveries; undelivered messages go dead (replayable if the subscription is re-activated)."""
    sub = _owned(session, principal, subscription_id)
    sub.active = False
    return _view(session, sub)


@router.post("/subscriptions/{subscription_id}/replay", response_model=ReplayResult)
def replay_dead_letters(
    subscription_id: str = SubscriptionId,
    principal: Principal = Depends(authorized(Scope.ADMIN)),
    session: Session = WRITE_SESSION,
) -> dict[str, int]:
    """Operator action: retry the subscription's dead letters after the receiver is fixed."""
    sub = _owned(session, principal, subscription_id)
    return {"replayed": webhooks.replay(session, sub.id)}
