"""Signed operator decisions over HTTP: the same actions, signing and audit as the CLI's.

A route needs a key with the `operate` scope (or `admin`) that sees the subject's order (else 404,
as for an order that does not exist), plus the signature fields in the body: the signer's user id
and password (re-authentication at the moment of signing), meaning, reason code and text, and
optionally the hash of the state the signer was shown (`GET /decisions/preview`). A wrong password
answers 401 `signature_refused`, an operator without the action 403, a view that changed 409. A
signer refused `max_failures` times within the window (config/security.yaml) is locked out: 429
`signer_locked` with Retry-After, whatever the password. A retry on a hub whose live files are not
the release bundle in force answers 503 `release_not_in_force`, naming the environment and bundle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from cgthub import decisions
from cgthub.api.auth import Principal, Scope
from cgthub.api.deps import authorized, read_session
from cgthub.api.errors import ERROR_RESPONSES, NOT_FOUND_RESPONSE, ApiError
from cgthub.api.orders import OrderId
from cgthub.decisions import Action, DecisionResult, Signature
from cgthub.tables import Alert, Order, QuarantineEntry, utcnow

router = APIRouter(tags=["decisions"], responses={**ERROR_RESPONSES, 404: NOT_FOUND_RESPONSE})
OPERATE = Depends(authorized(Scope.OPERATE))
_ROW_ID = 2**53  # ids beyond any row, refused before they reach a 64-bit column
RowId = Annotated[int, Path(ge=1, le=_ROW_ID)]
Partner = Annotated[str, Path(min_length=1, max_length=32, pattern="^[a-z][a-z0-9_-]*$", description="crm, erp, ...")]
Ids = list[Annotated[int, Field(ge=1, le=_ROW_ID)]]
_WORD = "^[A-Za-z0-9_.^-]*$"


class DecisionOut(DecisionResult):
    """A signed decision and what it did."""


class PreviewOut(BaseModel):
    subject: str
    state: dict[str, Any]
    shown_hash: str


class BulkQuarantineBody(Signature):
    entry_ids: Ids | None = Field(default=None, max_length=10_000, description="these entries, or:")
    stage: str | None = Field(default=None, max_length=16, pattern=_WORD, description="every open entry at this stage")
    system: str | None = Field(default=None, max_length=32, pattern=_WORD, description="... from this partner")
    kind: str | None = Field(default=None, max_length=64, pattern=_WORD, description="... of this kind")
    limit: int = Field(default=1000, ge=1, le=10_000)


class ReplayBody(Signature):
    message_ids: Ids | None = Field(default=None, max_length=10_000, description="default: every dead letter")


def _order_visible(session: Session, principal: Principal, order_id: str | None, what: str) -> None:
    """404 unless the key sees the order (a subject tied to no order needs a key that sees all)."""
    if order_id is None:
        if not principal.all_data:
            raise ApiError(404, "not_found", f"no such {what}")
        return
    order = session.get(Order, order_id)
    if order is None or not principal.can_see(site=order.site, cmo=order.cmo, market=order.market):
        raise ApiError(404, "not_found", f"no such {what}")


def _sign(
    request: Request,
    action: Action,
    subject: str,
    signature: Signature,
    work: Callable[[Session], Any],
) -> Any:
    try:
        return decisions.run(
            request.app.state.database_url, work, signer=signature.signer, action=action, subject=subject
        )
    except decisions.SubjectNotFound as exc:
        raise ApiError(404, "not_found", f"no such {subject.split(':', 1)[0]}") from exc
    except decisions.DecisionError as exc:
        message = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        raise ApiError(exc.status, exc.code, message, headers=retry_after_headers(exc)) from exc


def retry_after_headers(exc: decisions.DecisionError) -> dict[str, str]:
    """A locked-out signer is told when to sign again; a hub whose release is not in force, to try later."""
    if isinstance(exc, decisions.SignerLocked):
        seconds = (exc.until - utcnow()).total_seconds()
        return {"Retry-After": str(max(1, math.ceil(seconds)))}
    if isinstance(exc, decisions.Unavailable):
        return {"Retry-After": "60"}
    return {}


def _out(result: DecisionResult) -> DecisionOut:
    return DecisionOut(**result.model_dump())


@router.get("/decisions/preview", response_model=PreviewOut)
def preview(
    subject: str = Query(
        ...,
        max_length=200,
        pattern="^(order|alert|quarantine|outbox):[^\\x00]+$",
        description="order:ID, alert:ID, quarantine:ID or outbox:PARTNER",
    ),
    principal: Principal = OPERATE,
    session: Session = Depends(read_session),
) -> PreviewOut:
    """The state a signer is shown and its hash, to send back as `shown_hash` when signing."""
    kind, _, ident = subject.partition(":")
    try:
        if kind == "order":
            _order_visible(session, principal, ident, "order")
            shown = decisions.preview_order(session, ident)
        elif kind == "alert" and ident.isdigit() and len(ident) <= 15:
            alert = session.get(Alert, int(ident))
            _order_visible(session, principal, alert.order_id if alert else None, "alert")
            shown = decisions.preview_alert(session, int(ident))
        elif kind == "quarantine" and ident.isdigit() and len(ident) <= 15:
            entry = session.get(QuarantineEntry, int(ident))
            _order_visible(session, principal, entry.order_id if entry else None, "quarantine entry")
            shown = decisions.preview_quarantine(session, int(ident))
        elif kind == "outbox" and ident:
            _order_visible(session, principal, None, "partner")
            shown = decisions.preview_dead_letters(session, ident)
        else:
            raise ApiError(400, "bad_request", "subject is order:ID, alert:ID, quarantine:ID or outbox:PARTNER")
    except decisions.SubjectNotFound as exc:
        raise ApiError(404, "not_found", f"no such {kind}") from exc
    return PreviewOut(subject=shown.subject, state=shown.state, shown_hash=shown.shown_hash)


@router.post("/orders/{order_id}/release-hold", response_model=DecisionOut, status_code=201)
def release_hold(order_id: OrderId, body: Signature, request: Request, principal: Principal = OPERATE) -> DecisionOut:
    """Lift a hold the hub placed (COI discrepancy), signed; it enters the order's ledger."""

    def work(session: Session) -> DecisionResult:
        _order_visible(session, principal, order_id, "order")
        return decisions.release_hold(session, order_id, body)

    return _out(_sign(request, Action.RELEASE_HOLD, f"order:{order_id}", body, work))


@router.post("/orders/{order_id}/release-under-exception", response_model=DecisionOut, status_code=201)
def release_under_exception(
    order_id: OrderId, body: Signature, request: Request, principal: Principal = OPERATE
) -> DecisionOut:
    """Release an out-of-specification product under exception (QA), signed."""

    def work(session: Session) -> DecisionResult:
        _order_visible(session, principal, order_id, "order")
        return decisions.release_under_exception(session, order_id, body)

    return _out(_sign(request, Action.RELEASE_UNDER_EXCEPTION, f"order:{order_id}", body, work))


def _alert(request: Request, alert_id: RowId, body: Signature, principal: Principal, acknowledge: bool) -> DecisionOut:
    def work(session: Session) -> DecisionResult:
        alert = session.get(Alert, alert_id)
        _order_visible(session, principal, alert.order_id if alert else None, "alert")
        return decisions.resolve_alert(session, alert_id, body, acknowledge=acknowledge)

    action = Action.ACKNOWLEDGE_ALERT if acknowledge else Action.RESOLVE_ALERT
    return _out(_sign(request, action, f"alert:{alert_id}", body, work))


@router.post("/alerts/{alert_id}/resolve", response_model=DecisionOut, status_code=201)
def resolve_alert(alert_id: RowId, body: Signature, request: Request, principal: Principal = OPERATE) -> DecisionOut:
    """Close an alert, signed."""
    return _alert(request, alert_id, body, principal, acknowledge=False)


@router.post("/alerts/{alert_id}/acknowledge", response_model=DecisionOut, status_code=201)
def acknowledge_alert(
    alert_id: RowId, body: Signature, request: Request, principal: Principal = OPERATE
) -> DecisionOut:
    """Mark an alert seen and in hand (it stays open), signed."""
    return _alert(request, alert_id, body, principal, acknowledge=True)


def _entry(request: Request, entry_id: RowId, body: Signature, principal: Principal, action: Action) -> DecisionOut:
    act = decisions.retry_quarantine if action is Action.RETRY_QUARANTINE else decisions.discard_quarantine

    def work(session: Session) -> DecisionResult:
        entry = session.get(QuarantineEntry, entry_id)
        _order_visible(session, principal, entry.order_id if entry else None, "quarantine entry")
        return act(session, entry_id, body)

    return _out(_sign(request, action, f"quarantine:{entry_id}", body, work))


@router.post("/quarantine/{entry_id}/retry", response_model=DecisionOut, status_code=201)
def retry_quarantine(entry_id: RowId, body: Signature, request: Request, principal: Principal = OPERATE) -> DecisionOut:
    """Run an entry through again with the mapping and registry in force now, signed."""
    return _entry(request, entry_id, body, principal, Action.RETRY_QUARANTINE)


@router.post("/quarantine/{entry_id}/discard", response_model=DecisionOut, status_code=201)
def discard_quarantine(
    entry_id: RowId, body: Signature, request: Request, principal: Principal = OPERATE
) -> DecisionOut:
    """Close an entry without applying it (the payload stays archived), signed."""
    return _entry(request, entry_id, body, principal, Action.DISCARD_QUARANTINE)


def _bulk(request: Request, body: BulkQuarantineBody, principal: Principal, action: Action) -> list[DecisionOut]:
    signature = Signature(**body.model_dump(include=set(Signature.model_fields)))
    if not principal.all_data:
        raise ApiError(403, "forbidden", "bulk quarantine actions need a key that sees every order")

    def work(session: Session) -> list[DecisionResult]:
        ids = body.entry_ids or decisions.matching_entries(
            session, stage=body.stage, system=body.system, kind=body.kind, limit=body.limit
        )
        return decisions.bulk_quarantine(session, action, ids, signature)

    return [_out(r) for r in _sign(request, action, "quarantine:bulk", signature, work)]


@router.post("/quarantine/bulk-retry", response_model=list[DecisionOut], status_code=201)
def bulk_retry(body: BulkQuarantineBody, request: Request, principal: Principal = OPERATE) -> list[DecisionOut]:
    """Retry the entries named, or every open one matching the filter: one decision per entry."""
    return _bulk(request, body, principal, Action.RETRY_QUARANTINE)


@router.post("/quarantine/bulk-discard", response_model=list[DecisionOut], status_code=201)
def bulk_discard(body: BulkQuarantineBody, request: Request, principal: Principal = OPERATE) -> list[DecisionOut]:
    """Discard the entries named, or every open one matching the filter: one decision per entry."""
    return _bulk(request, body, principal, Action.DISCARD_QUARANTINE)


@router.post("/outbox/{partner}/replay", response_model=DecisionOut, status_code=201)
def replay_dead_letters(
    partner: str, body: ReplayBody, request: Request, principal: Principal = OPERATE
) -> DecisionOut:
    """Give a partner's dead letters (all, or those named) a fresh set of attempts, signed."""
    signature = Signature(**body.model_dump(include=set(Signature.model_fields)))

    def work(session: Session) -> DecisionResult:
        _order_visible(session, principal, None, "partner")
        return decisions.replay_dead_letters(session, partner, signature, body.message_ids)

    return _out(_sign(request, Action.REPLAY_DEAD_LETTERS, f"outbox:{partner}", signature, work))
