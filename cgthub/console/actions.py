"""The console's signed decisions: a form showing what is signed, then cgthub.decisions does the rest.

The console adds nothing to a decision's rules: the signer re-enters their operator password at
the moment of signing, picks a reason code allowed for the action and says why in words; the
preview's hash goes with the signature, so a subject that changed after it was shown is refused.
The console only decides who is offered the form: the Airflow user's role must grant the action's
console scope and their data scope must cover the subject's order (else 403 / 404, no form).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from cgthub import decisions, quarantine
from cgthub.console import auth, ops
from cgthub.decisions import Action, Signature
from cgthub.errors import CgthubError
from cgthub.tables import Alert, Order, QuarantineEntry

CONSOLE_SCOPE = {
    Action.RELEASE_HOLD: auth.RELEASE_HOLD,
    Action.RELEASE_UNDER_EXCEPTION: auth.RELEASE_HOLD,
    Action.RESOLVE_ALERT: auth.RESOLVE_ALERT,
    Action.ACKNOWLEDGE_ALERT: auth.RESOLVE_ALERT,
    Action.RETRY_QUARANTINE: auth.QUARANTINE_ACT,
    Action.DISCARD_QUARANTINE: auth.QUARANTINE_ACT,
    Action.REPLAY_DEAD_LETTERS: auth.OUTBOX_REPLAY,
}

TITLES = {
    Action.RELEASE_HOLD: "Release the hold",
    Action.RELEASE_UNDER_EXCEPTION: "Release under exception",
    Action.RESOLVE_ALERT: "Resolve the alert",
    Action.ACKNOWLEDGE_ALERT: "Acknowledge the alert",
    Action.RETRY_QUARANTINE: "Retry the quarantined message",
    Action.DISCARD_QUARANTINE: "Discard the quarantined message",
    Action.REPLAY_DEAD_LETTERS: "Replay dead letters",
}

BULK = "bulk"  # the key of a quarantine action on every open entry a filter matches
BULK_TITLES = {
    Action.RETRY_QUARANTINE: "Retry every quarantined message the filter matches",
    Action.DISCARD_QUARANTINE: "Discard every quarantined message the filter matches",
}
BULK_FILTERS = ("stage", "partner", "kind")


class NotOffered(CgthubError):
    """The user may not be offered this action on this subject (status 403 or 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Subject:
    """What a decision is about, and the page the signer goes back to."""

    action: Action
    key: str
    order_id: str | None
    back: str
    entry_ids: tuple[int, ...] = ()  # a bulk quarantine action: the open entries the filter matched


ROW_ID_MAX = 2**63 - 1  # the largest id a table's key holds (PostgreSQL's bigint)


def row_id(text: str) -> int | None:
    """The row id `text` names, or None: ASCII digits only ("²" is a digit to str.isdigit, not to
    int) and within a bigint, so a malformed or huge id is "not found", never a database error."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if 0 < number <= ROW_ID_MAX else None


def bulk_filters(params: Mapping[str, str]) -> dict[str, str]:
    """The bulk filter a page or form carries (stage, partner, kind), empty values left out."""
    return {name: params[name] for name in BULK_FILTERS if params.get(name)}


def bulk_entries(session: Session, user: auth.ConsoleUser, filters: Mapping[str, str]) -> list[int]:
    """Open entries matching the filter that the user's data scope covers, oldest first."""
    if filters.get("stage") and filters["stage"] not in {s.value for s in quarantine.Stage}:
        return []
    entries = ops.quarantine_list(session, user.principal, stage=filters.get("stage"), partner=filters.get("partner"))
    return sorted(e.id for e in entries if not filters.get("kind") or e.kind == filters["kind"])


def subject_of(
    session: Session, user: auth.ConsoleUser, action: Action, key: str, filters: Mapping[str, str] | None = None
) -> Subject:
    """The subject if this user may act on it: the role grants the action, the data scope the order."""
    if action not in CONSOLE_SCOPE:  # a decision signed elsewhere (booking, release approval)
        raise NotOffered(404, f"the console has no form for {action.value}")
    if not user.may(CONSOLE_SCOPE[action]):
        raise NotOffered(403, f"your Airflow role does not grant {CONSOLE_SCOPE[action]}")
    if key == BULK and action in BULK_TITLES:
        chosen = bulk_filters(filters or {})
        if not chosen:
            raise NotOffered(404, "a bulk action needs a filter: stage, partner or kind")
        entry_ids = bulk_entries(session, user, chosen)
        if not entry_ids:
            raise NotOffered(404, "no open quarantine entry you may see matches the filter")
        return Subject(action, key, None, f"/quarantine?{urlencode(chosen)}", tuple(entry_ids))
    order_id: str | None
    if action in (Action.RELEASE_HOLD, Action.RELEASE_UNDER_EXCEPTION):
        order_id, back = key, f"/orders/{key}"
    elif action in (Action.RESOLVE_ALERT, Action.ACKNOWLEDGE_ALERT):
        alert = session.get(Alert, alert_id) if (alert_id := row_id(key)) else None
        if alert is None:
            raise NotOffered(404, f"no alert {key}")
        order_id = alert.order_id
        back = f"/orders/{order_id}" if order_id else "/orders"
    elif action in (Action.RETRY_QUARANTINE, Action.DISCARD_QUARANTINE):
        entry = session.get(QuarantineEntry, entry_id) if (entry_id := row_id(key)) else None
        if entry is None:
            raise NotOffered(404, f"no quarantine entry {key}")
        order_id, back = entry.order_id, f"/quarantine/{entry.id}"
    else:
        order_id, back = None, f"/partners?partner={key}"
    if order_id is None:
        if not user.principal.all_data:
            raise NotOffered(404, "no such subject you may see")
    else:
        order = session.get(Order, order_id)
        if order is None or not user.principal.can_see(site=order.site, cmo=order.cmo, market=order.market):
            raise NotOffered(404, "no such order")
    return Subject(action, key, order_id, back)


def preview(session: Session, subject: Subject, message_ids: list[int] | None) -> decisions.Preview:
    if subject.entry_ids:
        ids = list(subject.entry_ids)
        states = [decisions.preview_quarantine(session, i).state for i in ids]
        return decisions.Preview(
            f"{len(ids)} quarantine entries",
            {f"#{s['entry']}": f"{s['status']} {s['stage']} {s['system']} {s.get('kind', '')}".strip() for s in states},
            decisions.bulk_hash(session, ids),
        )
    if subject.action in (Action.RELEASE_HOLD, Action.RELEASE_UNDER_EXCEPTION):
        return decisions.preview_order(session, subject.key)
    if subject.action in (Action.RESOLVE_ALERT, Action.ACKNOWLEDGE_ALERT):
        return decisions.preview_alert(session, int(subject.key))
    if subject.action in (Action.RETRY_QUARANTINE, Action.DISCARD_QUARANTINE):
        return decisions.preview_quarantine(session, int(subject.key))
    return decisions.preview_dead_letters(session, subject.key, message_ids)


def work(subject: Subject, signature: Signature, message_ids: list[int] | None) -> Callable[[Session], Any]:
    """The decision itself, as cgthub.decisions runs it for the CLI and the API."""
    action, key = subject.action, subject.key
    if subject.entry_ids:
        ids = list(subject.entry_ids)
        return lambda s: decisions.bulk_quarantine(s, action, ids, signature)
    if action is Action.RELEASE_HOLD:
        return lambda s: decisions.release_hold(s, key, signature)
    if action is Action.RELEASE_UNDER_EXCEPTION:
        return lambda s: decisions.release_under_exception(s, key, signature)
    if action is Action.RESOLVE_ALERT:
        return lambda s: decisions.resolve_alert(s, int(key), signature)
    if action is Action.ACKNOWLEDGE_ALERT:
        return lambda s: decisions.resolve_alert(s, int(key), signature, acknowledge=True)
    if action is Action.RETRY_QUARANTINE:
        return lambda s: decisions.retry_quarantine(s, int(key), signature)
    if action is Action.DISCARD_QUARANTINE:
        return lambda s: decisions.discard_quarantine(s, int(key), signature)
    return lambda s: decisions.replay_dead_letters(s, key, signature, message_ids)


def reason_codes(action: Action) -> list[decisions.ReasonCode]:
    return decisions.reason_codes().for_action(action)
