"""Decisions people sign: lifting a hub-placed hold, releasing under exception, resolving or
acknowledging an alert, retrying or discarding a quarantine entry, replaying dead letters.

Each one is an electronic signature in the sense of 21 CFR Part 11: the signer re-authenticates at
the moment of signing with two distinct components (user id and password, checked against a scrypt
hash), names what the signature means ("reviewed", "approved"), and gives a reason code from
`config/reason_codes.yaml` plus free text. The decision row keeps signer, meaning, reason, time and
a SHA-256 of the state the signer was shown; a view that changed since it was shown is refused, so
nobody signs what they did not see. A decision about an order enters its ledger as a hub event
(custody exports carry it) and every decision, refused ones too, enters the audit trail.

The CLI, the API and the Airflow console call the same functions here; `run` gives each a
transaction and records refusals in a transaction of their own (the refused one rolls back).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from sqlalchemy import Select, delete, select, text
from sqlalchemy.orm import Session

from cgthub import alerts, audit_trail, ledger, outbox, pipeline, projection, quarantine, release_guard, security_policy
from cgthub.errors import CgthubError
from cgthub.jsontext import canonical_json
from cgthub.lifecycle import OrderStatus
from cgthub.model import CanonicalEvent, EventType, Provenance, SourceSystem
from cgthub.settings import get_settings
from cgthub.store import session_scope
from cgthub.tables import (
    SIGNATURE_REFUSED,
    Alert,
    AuditRecord,
    LedgerEntry,
    Operator,
    OperatorDecision,
    Order,
    QuarantineEntry,
    WaitingKey,
    utcnow,
)

_T = TypeVar("_T")


class Action(StrEnum):
    RELEASE_HOLD = "release_hold"
    RELEASE_UNDER_EXCEPTION = "release_under_exception"
    RESOLVE_ALERT = "resolve_alert"
    ACKNOWLEDGE_ALERT = "acknowledge_alert"
    RETRY_QUARANTINE = "retry_quarantine"
    DISCARD_QUARANTINE = "discard_quarantine"
    REPLAY_DEAD_LETTERS = "replay_dead_letters"
    BOOK_SLOT = "book_slot"  # cgthub.booking: reserve a manufacturing slot and schedule the apheresis
    RESCHEDULE_SLOT = "reschedule_slot"  # cgthub.booking: move a booked slot chain to another apheresis date
    CANCEL_BOOKING = "cancel_booking"  # cgthub.booking: release the slot chain; the order waits to be booked again
    APPROVE_RELEASE = "approve_release"  # cgthub.release: approve a release bundle for production
    BUILD_RELEASE = "build_release"  # cgthub.release: sign a release bundle as its builder


class Meaning(StrEnum):
    REVIEWED = "reviewed"
    APPROVED = "approved"


ALL_ACTIONS = "all"  # an operator scope that grants every action


# errors: each says what the person can do about it ---------------------------------------------


class DecisionError(CgthubError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class SignatureRefused(DecisionError):
    status, code = 401, "signature_refused"


class NotPermitted(DecisionError):
    status, code = 403, "forbidden"


class SubjectNotFound(DecisionError):
    status, code = 404, "not_found"


class NotApplicable(DecisionError):
    status, code = 409, "conflict"


class StaleView(DecisionError):
    status, code = 409, "stale_view"


class InvalidReason(DecisionError):
    status, code = 422, "invalid_reason"


class SignerLocked(SignatureRefused):
    """Too many failed signatures by this signer lately (config/security.yaml): refused until `until`."""

    status, code = 429, "signer_locked"

    def __init__(self, message: str, hint: str = "", *, until: datetime) -> None:
        super().__init__(message, hint)
        self.until = until


class Unavailable(DecisionError):
    """The hub cannot act on this now (its release is not in force, its policy cannot be read)."""

    status, code = 503, "unavailable"


class ReleaseNotInForce(Unavailable):
    code = "release_not_in_force"


# reason codes ----------------------------------------------------------------------------------


class ReasonCode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=r"^[A-Z][A-Z0-9-]{1,39}$")
    title: str = Field(min_length=3, max_length=200)
    actions: tuple[Action, ...] = Field(min_length=1)


class ReasonCodes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    codes: tuple[ReasonCode, ...] = Field(min_length=1)

    @field_validator("codes")
    @classmethod
    def _unique(cls, codes: tuple[ReasonCode, ...]) -> tuple[ReasonCode, ...]:
        twice = sorted(code for code, count in Counter(c.code for c in codes).items() if count > 1)
        if twice:
            raise ValueError(f"reason code(s) listed twice: {', '.join(twice)}")
        return codes

    def for_action(self, action: Action) -> list[ReasonCode]:
        return [c for c in self.codes if action in c.actions]

    def check(self, code: str, action: Action) -> ReasonCode:
        allowed = self.for_action(action)
        for candidate in allowed:
            if candidate.code == code:
                return candidate
        choices = ", ".join(c.code for c in allowed) or "none configured"
        raise InvalidReason(
            f"the reason code is not one for {action.value}", f"choose one of: {choices} (see {REASON_CODES})"
        )


REASON_CODES = "config/reason_codes.yaml"


def reason_codes_path() -> Path:
    """config/reason_codes.yaml of the configuration directory in force (CGTHUB_CONFIG_DIR)."""
    return get_settings().config_dir / "reason_codes.yaml"


def reason_codes() -> ReasonCodes:
    path = reason_codes_path()
    try:
        return _load_codes(str(path), path.stat().st_mtime_ns)
    except OSError as exc:
        raise InvalidReason(f"cannot read the reason codes at {path}: {exc.strerror}", "restore the file") from exc


@lru_cache(maxsize=4)
def _load_codes(path: str, _mtime: int) -> ReasonCodes:
    try:
        return ReasonCodes.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as exc:
        raise InvalidReason(f"{path} is not a valid reason code list: {exc}", "fix the file") from exc


# operators and their passwords -----------------------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 12


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    encode = base64.urlsafe_b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def password_matches(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        fresh = hashlib.scrypt(
            password.encode(),
            salt=base64.urlsafe_b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.urlsafe_b64decode(digest)),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(fresh, base64.urlsafe_b64decode(digest))


_DUMMY = hash_password(secrets.token_urlsafe(16))  # an unknown user costs what a known one does


def scopes_known(scopes: Iterable[str]) -> list[str]:
    wanted = sorted(set(scopes))
    known = {a.value for a in Action} | {ALL_ACTIONS}
    unknown = [s for s in wanted if s not in known]
    if unknown or not wanted:
        raise NotApplicable(
            f"unknown operator scope(s) {unknown}" if unknown else "an operator needs at least one scope",
            f"choose from: {ALL_ACTIONS}, {', '.join(a.value for a in Action)}",
        )
    return wanted


def add_operator(session: Session, user_id: str, password: str, scopes: Iterable[str]) -> Operator:
    """A person who may sign the actions in `scopes`; the trail records who added them."""
    wanted = scopes_known(scopes)
    if not user_id or len(user_id) > 64 or not user_id.isprintable() or " " in user_id:
        raise NotApplicable("a user id is 1-64 printable characters without spaces")
    if len(password) < MIN_PASSWORD:
        raise NotApplicable(f"the password must have at least {MIN_PASSWORD} characters")
    if session.get(Operator, user_id) is not None:
        raise NotApplicable(f"operator {user_id} exists", "choose another user id")
    row = Operator(id=user_id, scopes=wanted, password_hash=hash_password(password), created_at=utcnow())
    session.add(row)
    session.flush()
    audit_trail.record(session, "operator.added", f"operator:{user_id}", {"scopes": wanted})
    return row


def disable_operator(session: Session, user_id: str) -> None:
    row = session.get(Operator, user_id)
    if row is None:
        raise SubjectNotFound(f"no operator {user_id}")
    if row.disabled_at is None:
        row.disabled_at = utcnow()
        audit_trail.record(session, "operator.disabled", f"operator:{user_id}")


def authenticate(session: Session, user_id: str, password: str) -> Operator:
    """The active operator with this user id and password; one refusal for either part wrong.

    The one place a signature's password is checked: a signer locked out by repeated failures
    (`refuse_if_locked`) is refused before the password is even looked at."""
    refuse_if_locked(session, user_id)
    row = session.get(Operator, user_id) if user_id else None
    ok = password_matches(row.password_hash if row is not None else _DUMMY, password)
    if row is None or row.disabled_at is not None or not ok:
        raise SignatureRefused(
            "re-authentication failed: the user id and password do not match an active operator",
            "sign again with your own user id and password",
        )
    return row


# lockout after repeated failed signatures -----------------------------------------------------

REFUSED = "decision.refused"  # the audit trail's action for a refused signature (see `run`)
_CLAIMED = "claimed:"


def _claimed(user_id: str) -> str:
    return f"{_CLAIMED}{user_id[:64]}"


def _failures(session: Session, user_id: str, since: datetime) -> list[datetime]:
    """When this claimed user id's password was refused since `since`, oldest first (from the audit
    trail: `run` records every refusal with why=signature_refused; a refusal for being locked out
    has another why and does not count, so waiting out a lockout ends it).

    Read through the partial index ix_audit_trail_signature_refusals (actor, at; migration 0022),
    which holds only the rows of a refused password: the query names its condition word for word
    (tables.SIGNATURE_REFUSED) so SQLite and PostgreSQL both match it to the index. A check reads this
    signer's few refusals, whatever the trail's length or another signer's guesses (bench.lockout_bench)."""
    return list(session.scalars(failures_query(user_id, since)))


def failures_query(user_id: str, since: datetime) -> Select[datetime]:
    """The query `_failures` runs (bench.lockout_bench and the tests EXPLAIN it on both databases)."""
    return (
        select(AuditRecord.at)
        .where(AuditRecord.actor == _claimed(user_id), text(SIGNATURE_REFUSED), AuditRecord.at >= since)
        .order_by(AuditRecord.at)
    )


def locked_until(session: Session, user_id: str, now: datetime | None = None) -> datetime | None:
    """Until when signing as `user_id` is refused, or None. Locked for `lockout_seconds` after a
    failure that made `max_failures` failures within `window_seconds`. Counted per signer, so other
    signers are unaffected; a success does not reset the count (an attacker could otherwise slip
    max_failures - 1 guesses between two of the owner's signatures)."""
    try:
        rules = security_policy.policy().signatures
    except security_policy.PolicyError as exc:
        raise Unavailable(str(exc), exc.hint or "") from exc
    now = now or utcnow()
    times = _failures(session, user_id, now - rules.window - rules.lockout)
    until: datetime | None = None
    for i in range(rules.max_failures - 1, len(times)):
        if times[i] - times[i - rules.max_failures + 1] <= rules.window:
            ends = times[i] + rules.lockout
            until = ends if until is None or ends > until else until
    return until if until is not None and until > now else None


def refuse_if_locked(session: Session, user_id: str) -> None:
    until = locked_until(session, user_id)
    if until is not None:
        rules = security_policy.policy().signatures
        raise SignerLocked(
            f"signing as {user_id} is locked until {until.strftime('%Y-%m-%d %H:%M:%S')} UTC after "
            f"{rules.max_failures} failed signatures within {rules.window_seconds / 60:g} minutes",
            "wait until then; if these attempts were not yours, tell security (an alert is open)",
            until=until,
        )


def _alert_if_locked(session: Session, user_id: str) -> None:
    """After a failure is recorded: if it locked the signer, raise a critical alert (once per lockout)."""
    until = locked_until(session, user_id)
    if until is None:
        return
    rules = security_policy.policy().signatures
    alerts.raise_alert(
        session,
        kind="signature_lockout",
        severity=alerts.Severity.CRITICAL,
        message=(
            f"signing as {user_id[:64]} is locked until {until.strftime('%Y-%m-%d %H:%M:%S')} UTC: "
            f"{rules.max_failures} failed signatures within {rules.window_seconds / 60:g} minutes"
        ),
        dedupe_key=f"signature_lockout:{user_id[:64]}:{until.isoformat()}",
        details={"signer": user_id[:64], "failures": rules.max_failures, "until": until.isoformat()},
    )


# what a signer signs ---------------------------------------------------------------------------


class Signature(BaseModel):
    """The signing fields, in an API body or gathered by the CLI's prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signer: str = Field(
        min_length=1, max_length=64, pattern=r"^[^\s\x00-\x1f\x7f]+$", description="the operator's user id"
    )
    password: SecretStr = Field(min_length=1, max_length=1024, description="re-entered at each signature")
    meaning: Meaning
    reason_code: str = Field(
        min_length=1, max_length=40, pattern=r"^[A-Za-z0-9-]+$", description="a code of config/reason_codes.yaml"
    )
    reason_text: str = Field(
        min_length=1, max_length=2000, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$", description="why, in words"
    )
    shown_hash: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the state shown to the signer (from the preview); refused if it changed since",
    )


@dataclass(frozen=True)
class Preview:
    """What a signer is shown before signing, and the hash a signature over it carries."""

    subject: str
    state: dict[str, Any]
    shown_hash: str


def state_hash(state: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(state).encode()).hexdigest()


def _preview(subject: str, state: dict[str, Any]) -> Preview:
    return Preview(subject, state, state_hash(state))


def preview_order(session: Session, order_id: str) -> Preview:
    order = session.get(Order, order_id)
    if order is None:
        raise SubjectNotFound(f"no order {order_id}", "find it with `cgthub orders list` or `orders show REF`")
    state = projection.load(order)
    return _preview(
        f"order:{order.id}",
        {
            "order": order.id,
            "status": order.status,
            "stage": state.stage.value,
            "on_hold": order.on_hold,
            "hold_reason": state.hold_reason,
            "ledger_length": order.ledger_length,
            "ledger_head": order.ledger_head,
        },
    )


def preview_alert(session: Session, alert_id: int) -> Preview:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise SubjectNotFound(f"no alert {alert_id}")
    return _preview(
        f"alert:{alert.id}",
        {
            "alert": alert.id,
            "order": alert.order_id,
            "kind": alert.kind,
            "severity": alert.severity,
            "status": alert.status,
            "message": alert.message,
            "details": alert.details,
        },
    )


def preview_quarantine(session: Session, entry_id: int) -> Preview:
    entry = session.get(QuarantineEntry, entry_id)
    if entry is None:
        raise SubjectNotFound(f"no quarantine entry {entry_id}", "list entries with `cgthub quarantine list`")
    return _preview(
        f"quarantine:{entry.id}",
        {
            "entry": entry.id,
            "status": entry.status,
            "stage": entry.stage,
            "system": entry.system,
            "kind": entry.kind,
            "reason": entry.reason,
            "occurrences": entry.occurrences,
            "raw_id": entry.raw_id,
            "order": entry.order_id,
        },
    )


def preview_dead_letters(session: Session, partner: str, message_ids: list[int] | None = None) -> Preview:
    dead = _dead(session, partner, message_ids)
    return _preview(
        f"outbox:{partner}",
        {"partner": partner, "dead": [[m.id, m.attempts, m.idempotency_key] for m in dead]},
    )


# signing ---------------------------------------------------------------------------------------


class DecisionResult(BaseModel):
    """What a signed decision did: the API answers with it as it is (`api.decisions.DecisionOut`)."""

    decision_id: int
    action: str
    subject: str
    order_id: str | None
    signer: str
    meaning: str
    reason_code: str
    signed_at: str
    shown_hash: str
    outcome: dict[str, Any]


def sign_decision(
    session: Session, action: Action, signature: Signature, preview: Preview, order_id: str | None
) -> tuple[OperatorDecision, ReasonCode]:
    """Check the signer's password, scope, reason code and view, then record the decision (not yet acted on).

    Public so an action outside this module (a slot booking) signs exactly as the operator decisions do.
    """
    operator = authenticate(session, signature.signer, signature.password.get_secret_value())
    if action.value not in operator.scopes and ALL_ACTIONS not in operator.scopes:
        raise NotPermitted(
            f"operator {operator.id} may not sign {action.value}",
            "ask an administrator to add the scope (`cgthub operators add` lists them)",
        )
    reason = reason_codes().check(signature.reason_code, action)
    if signature.shown_hash is not None and signature.shown_hash != preview.shown_hash:
        raise StaleView(
            f"{preview.subject} changed since it was shown to you",
            "look at it again and sign what it is now",
        )
    decision = OperatorDecision(
        action=action.value,
        subject=preview.subject,
        order_id=order_id,
        signer=operator.id,
        meaning=signature.meaning.value,
        reason_code=reason.code,
        reason_text=signature.reason_text.strip(),
        shown_hash=preview.shown_hash,
        signed_at=utcnow(),
        outcome={},
    )
    session.add(decision)
    session.flush()
    return decision, reason


def record_outcome(session: Session, decision: OperatorDecision, outcome: dict[str, Any]) -> AuditRecord:
    """What a signed decision did, on the decision and in the audit trail of people (one shape for every action).
    Returns the trail's row (a release build keeps its seq, to check the decision against it later)."""
    decision.outcome = outcome
    return audit_trail.record(
        session,
        f"decision.{decision.action}",
        decision.subject,
        {
            "decision": decision.id,
            "meaning": decision.meaning,
            "reason_code": decision.reason_code,
            "shown_hash": decision.shown_hash,
            "decision_hash": decision_digest(decision),
            "outcome": outcome,
        },
        actor=decision.signer,
    )


def decision_digest(decision: OperatorDecision) -> str:
    """What binds the whole decision, its free text included, into the ledger without copying the text."""
    return state_hash(
        {
            "decision": decision.id,
            "action": decision.action,
            "subject": decision.subject,
            "signer": decision.signer,
            "meaning": decision.meaning,
            "reason_code": decision.reason_code,
            "reason_text": decision.reason_text,
            "shown_hash": decision.shown_hash,
            "signed_at": decision.signed_at.isoformat(),
        }
    )


def _finish(
    session: Session,
    decision: OperatorDecision,
    reason: ReasonCode,
    outcome: dict[str, Any],
    event_type: EventType | None = None,
) -> DecisionResult:
    """Put the decision in its order's ledger (a hub event) and in the audit trail."""
    if decision.order_id is not None:
        event = CanonicalEvent(
            source_system=SourceSystem.HUB,
            source_event_id=f"decision:{decision.id}",
            event_type=event_type or EventType.ORDER_UPDATED,
            occurred_at=decision.signed_at,
            received_at=decision.signed_at,
            order_id=decision.order_id,
            reason=f"{reason.code}: {reason.title}",
            attributes={
                "decision_id": decision.id,
                "decision": decision.action,
                "subject": decision.subject,
                "signer": decision.signer,
                "meaning": decision.meaning,
                "reason_code": decision.reason_code,
                "shown_hash": decision.shown_hash,
                "decision_hash": decision_digest(decision),
            },
            provenance=Provenance(mapping_id="cgthub/decision", mapping_version="1"),
        )
        appended = ledger.append(session, event)
        outcome = {**outcome, "ledger_seq": appended.seq}
    record_outcome(session, decision, outcome)
    session.flush()
    return DecisionResult(
        decision_id=decision.id,
        action=decision.action,
        subject=decision.subject,
        order_id=decision.order_id,
        signer=decision.signer,
        meaning=decision.meaning,
        reason_code=decision.reason_code,
        signed_at=decision.signed_at.isoformat(),
        shown_hash=decision.shown_hash,
        outcome=outcome,
    )


# the actions -----------------------------------------------------------------------------------


def release_hold(session: Session, order_id: str, signature: Signature) -> DecisionResult:
    """Lift a hold the hub placed (a COI discrepancy); a partner's hold is the partner's to lift."""
    shown = preview_order(session, order_id)
    if not shown.state["on_hold"]:
        raise NotApplicable(f"order {order_id} is not on hold")
    placed_by = session.scalars(
        select(LedgerEntry.source_system)
        .where(
            LedgerEntry.order_id == order_id,
            LedgerEntry.event_type.in_([EventType.ORDER_ON_HOLD.value, EventType.ORDER_HOLD_RELEASED.value]),
        )
        .order_by(LedgerEntry.occurred_at.desc(), LedgerEntry.seq.desc())
        .limit(1)
    ).first()
    if placed_by != SourceSystem.HUB.value:
        raise NotApplicable(
            f"the hold on order {order_id} was placed by {placed_by or 'a partner'}, not by the hub",
            "the partner that placed it lifts it with its own message",
        )
    decision, reason = sign_decision(session, Action.RELEASE_HOLD, signature, shown, order_id)
    return _finish(session, decision, reason, {"hold": "released"}, EventType.ORDER_HOLD_RELEASED)


def release_under_exception(session: Session, order_id: str, signature: Signature) -> DecisionResult:
    """Release an out-of-specification product under exception (QA's decision, signed)."""
    shown = preview_order(session, order_id)
    if shown.state["stage"] != OrderStatus.OOS_REVIEW.value:
        raise NotApplicable(f"order {order_id} is not in OOS review (it is {shown.state['stage']})")
    decision, reason = sign_decision(session, Action.RELEASE_UNDER_EXCEPTION, signature, shown, order_id)
    return _finish(session, decision, reason, {"released": "under exception"}, EventType.OOS_RELEASED_UNDER_EXCEPTION)


def resolve_alert(
    session: Session, alert_id: int, signature: Signature, *, acknowledge: bool = False
) -> DecisionResult:
    """Close an alert (resolve) or mark it seen and being handled (acknowledge)."""
    shown = preview_alert(session, alert_id)
    alert = session.get(Alert, alert_id)
    assert alert is not None
    if alert.status == "closed" or (acknowledge and alert.status == "acknowledged"):
        raise NotApplicable(f"alert {alert_id} is already {alert.status}")
    action = Action.ACKNOWLEDGE_ALERT if acknowledge else Action.RESOLVE_ALERT
    decision, reason = sign_decision(session, action, signature, shown, alert.order_id)
    if acknowledge:
        alert.status = "acknowledged"
    else:
        alert.status, alert.closed_at = "closed", decision.signed_at
    return _finish(session, decision, reason, {"alert": alert.id, "status": alert.status})


def retry_quarantine(session: Session, entry_id: int, signature: Signature) -> DecisionResult:
    """Run an entry through again as if it arrived now (after a mapping, site or config fix)."""
    shown = preview_quarantine(session, entry_id)
    entry = _open_entry(session, entry_id)
    if entry.stage == quarantine.Stage.DELIVER.value:
        raise NotApplicable(
            f"quarantine entry {entry_id} is an outbound message", "replay it with `cgthub outbox replay --partner P`"
        )
    _release_in_force(session)
    decision, reason = sign_decision(session, Action.RETRY_QUARANTINE, signature, shown, entry.order_id)
    went_through, detail = _retry(session, entry)
    if went_through:
        quarantine.release(session, entry, f"retried under decision #{decision.id}: {detail}")
        session.execute(delete(WaitingKey).where(WaitingKey.quarantine_id == entry.id))
    outcome = {"entry": entry.id, "result": "released" if went_through else "still failing", "detail": detail}
    from cgthub import requalify  # the site registry's part: a release closes its payload's refusal alerts

    outcome |= requalify.after_retry(session, entry, went_through)
    return _finish(session, decision, reason, outcome)


def _release_in_force(session: Session) -> None:
    """A retry maps and applies as ingest does, so it is held to the same release guard: on a hub
    whose live files are not the bundle promoted to its CGTHUB_RELEASE_ENV it is refused (503, the
    environment, bundle and first file named), before anything is signed or mapped. Checked once per
    transaction: a bulk retry of 1,000 entries does not walk the files 1,000 times."""
    if session.info.get(_RELEASE_CHECKED):
        return
    try:
        release_guard.check_in_force(session)
    except release_guard.ReleaseRefused as refused:
        raise ReleaseNotInForce(f"not retried: {refused.message}", refused.hint or "") from refused
    session.info[_RELEASE_CHECKED] = True


_RELEASE_CHECKED = "cgthub.decisions.release_checked"


def _retry(session: Session, entry: QuarantineEntry) -> tuple[bool, str]:
    if entry.stage == quarantine.Stage.CONFLICT.value:
        return _retry_conflict(session, entry)
    event_data = (entry.details or {}).get("event")
    if entry.stage in (quarantine.Stage.CORRELATE.value, quarantine.Stage.IDENTITY.value) and event_data:
        seen = entry.occurrences
        appended = ledger.append(session, CanonicalEvent.model_validate(event_data))
        session.refresh(entry)
        if appended.status == "quarantined" or entry.occurrences > seen:
            return False, "the event is refused again: " + (appended.reason or "quarantined")
        return True, f"event {appended.status} to order {appended.order_id}"
    if entry.raw_id is None:
        raise NotApplicable(f"quarantine entry {entry.id} keeps no payload or event to retry")
    from cgthub import requalify

    mapper = requalify.mapper(session, entry.system, entry.kind)  # routed, its sites judged again
    if mapper is None:
        return False, f"no mapping is configured for {entry.system}/{entry.kind}"
    result = pipeline.process(session, entry.raw_id, mapper)
    if result.rejected:
        return False, f"the payload is refused again by {mapper.mapping_id}@{mapper.version}"
    if result.quarantined:
        return False, f"mapped; {result.quarantined} event(s) quarantined again"
    return True, f"mapped by {mapper.mapping_id}@{mapper.version}: {result.appended} event(s) appended"


def _retry_conflict(session: Session, entry: QuarantineEntry) -> tuple[bool, str]:
    """The version held at stage `conflict` goes in as a correction of the one in force (`cgthub.conflicts`)."""
    from cgthub import conflicts

    try:
        fix = conflicts.correction(session, entry)
    except conflicts.CorrectionRefused as refused:
        raise NotApplicable(str(refused)) from refused
    appended = ledger.append(session, fix)
    if appended.status == "quarantined":
        return False, "the correction is refused: " + (appended.reason or "quarantined")
    return True, f"applied as correction {fix.source_event_id} of {fix.supersedes} to order {appended.order_id}"


def discard_quarantine(session: Session, entry_id: int, signature: Signature) -> DecisionResult:
    """Close an entry without applying it; the payload stays archived."""
    shown = preview_quarantine(session, entry_id)
    entry = _open_entry(session, entry_id)
    decision, reason = sign_decision(session, Action.DISCARD_QUARANTINE, signature, shown, entry.order_id)
    entry.status = quarantine.QuarantineStatus.DISCARDED.value
    entry.resolved_at = decision.signed_at
    entry.resolution = f"discarded under decision #{decision.id} ({reason.code})"
    session.execute(delete(WaitingKey).where(WaitingKey.quarantine_id == entry.id))
    return _finish(session, decision, reason, {"entry": entry.id, "result": "discarded"})


def matching_entries(
    session: Session,
    *,
    stage: str | None = None,
    system: str | None = None,
    kind: str | None = None,
    limit: int = 1000,
) -> list[int]:
    """Open entries a bulk action would take: oldest first."""
    query = select(QuarantineEntry.id).where(QuarantineEntry.status == quarantine.QuarantineStatus.OPEN.value)
    if stage:
        query = query.where(QuarantineEntry.stage == stage)
    if system:
        query = query.where(QuarantineEntry.system == system)
    if kind:
        query = query.where(QuarantineEntry.kind == kind)
    return list(session.scalars(query.order_by(QuarantineEntry.id).limit(limit)))


def bulk_quarantine(
    session: Session, action: Action, entry_ids: list[int], signature: Signature
) -> list[DecisionResult]:
    """One signature, one decision per entry (each with the hash of the entry it acted on)."""
    if action not in (Action.RETRY_QUARANTINE, Action.DISCARD_QUARANTINE):
        raise NotApplicable(f"{action.value} is not a quarantine action")
    if not entry_ids:
        raise NotApplicable("no open quarantine entry matches the filter")
    if signature.shown_hash is not None and signature.shown_hash != bulk_hash(session, entry_ids):
        raise StaleView("the entries matching the filter changed since they were shown", "list them again")
    one = signature.model_copy(update={"shown_hash": None})
    act = retry_quarantine if action is Action.RETRY_QUARANTINE else discard_quarantine
    return [act(session, entry_id, one) for entry_id in entry_ids]


def bulk_hash(session: Session, entry_ids: list[int]) -> str:
    return state_hash({"entries": [preview_quarantine(session, i).shown_hash for i in entry_ids]})


def _open_entry(session: Session, entry_id: int) -> QuarantineEntry:
    entry = session.get(QuarantineEntry, entry_id)
    if entry is None:
        raise SubjectNotFound(f"no quarantine entry {entry_id}")
    if entry.status != quarantine.QuarantineStatus.OPEN.value:
        raise NotApplicable(f"quarantine entry {entry_id} is {entry.status}, not open")
    return entry


def replay_dead_letters(
    session: Session, partner: str, signature: Signature, message_ids: list[int] | None = None
) -> DecisionResult:
    """Give a partner's dead outbound messages (all, or those named) a fresh set of attempts."""
    shown = preview_dead_letters(session, partner, message_ids)
    ids = [row[0] for row in shown.state["dead"]]
    if not ids:
        raise NotApplicable(f"no dead letters to {partner}" + (" among the messages named" if message_ids else ""))
    decision, reason = sign_decision(session, Action.REPLAY_DEAD_LETTERS, signature, shown, None)
    count = outbox.replay_dead(session, destination_kind=partner, message_ids=ids)
    return _finish(session, decision, reason, {"partner": partner, "replayed": count, "messages": ids})


def _dead(session: Session, partner: str, message_ids: list[int] | None) -> list[outbox.OutboxMessage]:
    query = (
        select(outbox.OutboxMessage)
        .where(
            outbox.OutboxMessage.destination_kind == partner,
            outbox.OutboxMessage.status == outbox.OutboxStatus.DEAD.value,
        )
        .order_by(outbox.OutboxMessage.id)
    )
    if message_ids is not None:
        query = query.where(outbox.OutboxMessage.id.in_(message_ids))
    return list(session.scalars(query))


def for_order(session: Session, order_id: str) -> list[OperatorDecision]:
    """The signed decisions about one order, oldest first (the console's order detail)."""
    query = select(OperatorDecision).where(OperatorDecision.order_id == order_id).order_by(OperatorDecision.id)
    return list(session.scalars(query))


# one transaction per decision, refusals recorded apart ---------------------------------------


def run(url: str | None, work: Callable[[Session], _T], *, signer: str, action: Action, subject: str) -> _T:
    """Run a decision in its own transaction. A refused signature or scope rolls the decision back
    and is then recorded in the audit trail by a transaction of its own (repeated failures show)."""
    if action is Action.RETRY_QUARANTINE:
        # A retry follows a fix on disk (a mapping, a market pin, the site registry): a long-running
        # server must map with what is there now, not with what it compiled before the fix.
        from cgthub import sites
        from cgthub.mapping import registry

        registry.clear_cache()
        sites.clear_cache()
    try:
        with session_scope(url) as session:
            audit_trail.record_config_changes(session)  # the configuration the decision is taken under
            return work(session)
    except (SignatureRefused, NotPermitted, ReleaseNotInForce) as refused:
        with session_scope(url) as session:
            audit_trail.record(
                session,
                REFUSED,
                subject,
                {"action": action.value, "why": refused.code},
                actor=_claimed(signer),
            )
            if refused.code == SignatureRefused.code:
                _alert_if_locked(session, signer)
        raise
