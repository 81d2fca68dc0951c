"""Signed decisions from the command line: operators, holds, alerts, quarantine, dead letters.

Each command shows what it is about to act on, asks the signer's password (or reads it from stdin
with --password-stdin), and signs with a meaning, a reason code and free text; see
`cgthub.decisions`. cgthub.cli's COMMANDS hangs them on the CLI: `orders release-hold`,
`quarantine retry|discard`, and the `alerts`, `outbox`, `operators` and `decisions` groups.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import decisions, outbox
from cgthub.cli.common import CliError, console, open_session, read_password, signer_id
from cgthub.decisions import Action, DecisionError, Meaning, Preview, Signature
from cgthub.store import database_url
from cgthub.tables import Alert, Operator, OperatorDecision

alerts_app = typer.Typer(help="Alerts: list, acknowledge and resolve them (signed).", no_args_is_help=True)
outbox_app = typer.Typer(help="Messages to partners: dead letters and their replay (signed).", no_args_is_help=True)
operators_app = typer.Typer(help="People who sign decisions (passwords kept as scrypt hashes).", no_args_is_help=True)
decisions_app = typer.Typer(help="Signed decisions and the reason codes they take.", no_args_is_help=True)


# the signing options every decision command takes ------------------------------------------------

_SIGNER = typer.Option(None, "--signer", help="your operator user id (default: CGTHUB_OPERATOR)")
_MEANING = typer.Option(..., "--meaning", help="what your signature means: reviewed or approved")
_REASON = typer.Option(..., "--reason", help="a reason code (`cgthub decisions reasons` lists them)")
_TEXT = typer.Option(..., "--text", help="why, in your words (kept with the decision)")
_STDIN = typer.Option(False, "--password-stdin", help="read the password from the first line of stdin")


def _signature(
    signer: str | None, meaning: Meaning, reason: str, text: str, stdin: bool, shown: str | None
) -> Signature:
    user = signer_id(signer)
    try:
        return Signature(
            signer=user,
            password=read_password(stdin, f"password for {user} (signing: {meaning.value})"),
            meaning=meaning,
            reason_code=reason,
            reason_text=text,
            shown_hash=shown,
        )
    except ValueError as exc:
        raise CliError(f"the signature is not complete: {exc}", "see --help") from exc


def _show(preview: Preview) -> None:
    console.print(f"[bold]you are signing for {escape(preview.subject)}[/], as it is now:")
    for key, value in preview.state.items():
        shown = json.dumps(value, default=str, sort_keys=True) if isinstance(value, dict | list) else str(value)
        console.print(f"  {key}: {escape(shown)}")
    console.print(f"  (shown-state hash {preview.shown_hash[:16]}…)")


def _decide(
    action: Action,
    subject: str,
    look: Callable[[Session], Preview],
    act: Callable[[Session, Signature], Any],
    signing: tuple[str | None, Meaning, str, str, bool],
) -> Any:
    try:
        with open_session(readonly=True) as session:
            preview = look(session)
        _show(preview)
        signature = _signature(*signing, shown=preview.shown_hash)
        return decisions.run(
            database_url(),
            lambda session: act(session, signature),
            signer=signature.signer,
            action=action,
            subject=subject,
        )
    except DecisionError as exc:
        raise CliError(exc.message, exc.hint or None) from exc


def _report(result: decisions.DecisionResult) -> None:
    where = f", ledger entry {result.outcome['ledger_seq']} of order {result.order_id}" if result.order_id else ""
    console.print(
        f"signed decision #{result.decision_id}: {result.action} on {result.subject} by {result.signer} "
        f"({result.meaning}, {result.reason_code}){where}"
    )
    facts = {k: v for k, v in result.outcome.items() if k != "ledger_seq"}
    console.print("outcome: " + escape(json.dumps(facts, sort_keys=True)))


# orders ----------------------------------------------------------------------------------------


def release_hold(
    order_id: str = typer.Argument(..., metavar="ORDER", help="the order's hub id"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Lift a hold the hub placed (a COI discrepancy), signed; it enters the order's ledger."""
    result = _decide(
        Action.RELEASE_HOLD,
        f"order:{order_id}",
        lambda s: decisions.preview_order(s, order_id),
        lambda s, sig: decisions.release_hold(s, order_id, sig),
        (signer, meaning, reason, text, password_stdin),
    )
    _report(result)


def release_under_exception(
    order_id: str = typer.Argument(..., metavar="ORDER", help="the order's hub id"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Release an out-of-specification product under exception (QA), signed."""
    result = _decide(
        Action.RELEASE_UNDER_EXCEPTION,
        f"order:{order_id}",
        lambda s: decisions.preview_order(s, order_id),
        lambda s, sig: decisions.release_under_exception(s, order_id, sig),
        (signer, meaning, reason, text, password_stdin),
    )
    _report(result)


# alerts ----------------------------------------------------------------------------------------


@alerts_app.command("list")
def list_alerts(
    all_: bool = typer.Option(False, "--all", help="closed ones too"),
    order: str | None = typer.Option(None, "--order", help="only this order's"),
    limit: int = typer.Option(200, min=1, max=10_000),
) -> None:
    """Alerts by name, with their order and status (open and acknowledged unless --all)."""
    with open_session(readonly=True) as session:
        query = select(Alert).order_by(Alert.id).limit(limit)
        if not all_:
            query = query.where(Alert.status != "closed")
        if order:
            query = query.where(Alert.order_id == order)
        rows = list(session.scalars(query))
    table = Table(title=f"{len(rows)} alerts")
    for col in ("id", "order", "kind", "severity", "status", "opened", "message"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id),
            row.order_id or "",
            row.kind,
            row.severity,
            row.status,
            row.opened_at.isoformat(timespec="seconds"),
            escape(row.message),
        )
    console.print(table)


@alerts_app.command("resolve")
def resolve_alert(
    alert_id: int = typer.Argument(..., metavar="ID", help="the alert's id (`cgthub alerts list`)"),
    acknowledge: bool = typer.Option(False, "--acknowledge", help="mark it seen and in hand, leave it open"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Close an alert (or, with --acknowledge, mark it in hand), signed."""
    action = Action.ACKNOWLEDGE_ALERT if acknowledge else Action.RESOLVE_ALERT
    result = _decide(
        action,
        f"alert:{alert_id}",
        lambda s: decisions.preview_alert(s, alert_id),
        lambda s, sig: decisions.resolve_alert(s, alert_id, sig, acknowledge=acknowledge),
        (signer, meaning, reason, text, password_stdin),
    )
    _report(result)


@alerts_app.command("acknowledge")
def acknowledge_alert(
    alert_id: int = typer.Argument(..., metavar="ID", help="the alert's id (`cgthub alerts list`)"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Mark an alert seen and in hand (it stays open until resolved), signed."""
    resolve_alert(alert_id, True, signer, meaning, reason, text, password_stdin)


# quarantine ------------------------------------------------------------------------------------

_IDS = typer.Argument(None, metavar="ID", help="entry ids; none: every open entry matching the filters")
_STAGE = typer.Option(None, "--stage", help="bulk: only this stage")
_SYSTEM = typer.Option(None, "--system", help="bulk: only this partner, e.g. crm, hl7")
_KIND = typer.Option(None, "--kind", help="bulk: only this kind")
_LIMIT = typer.Option(1000, "--limit", min=1, max=10_000, help="bulk: most entries")


def _quarantine(
    action: Action,
    ids: list[int] | None,
    filters: dict[str, Any],
    signing: tuple[str | None, Meaning, str, str, bool],
) -> None:
    if ids and any(v for k, v in filters.items() if k != "limit"):
        raise CliError("give entry ids or filters, not both")
    if not ids and not any(v for k, v in filters.items() if k != "limit"):
        raise CliError("which entries? give ids, or a filter (--stage, --system, --kind) for a bulk action")
    if ids and len(ids) == 1:
        act = decisions.retry_quarantine if action is Action.RETRY_QUARANTINE else decisions.discard_quarantine
        entry_id = ids[0]
        _report(
            _decide(
                action,
                f"quarantine:{entry_id}",
                lambda s: decisions.preview_quarantine(s, entry_id),
                lambda s, sig: act(s, entry_id, sig),
                signing,
            )
        )
        return
    with open_session(readonly=True) as session:
        chosen = list(ids) if ids else decisions.matching_entries(session, **filters)
    if not chosen:
        raise CliError("no open quarantine entry matches the filter", "list them with `cgthub quarantine list`")

    def look(session: Session) -> Preview:
        states = [decisions.preview_quarantine(session, i) for i in chosen]
        return Preview(
            f"quarantine:{len(chosen)} entries",
            {f"#{p.state['entry']}": f"{p.state['status']} {p.state['stage']} {p.state['system']}" for p in states},
            decisions.bulk_hash(session, chosen),
        )

    results = _decide(
        action,
        f"quarantine:bulk:{len(chosen)}",
        look,
        lambda s, sig: decisions.bulk_quarantine(s, action, chosen, sig),
        signing,
    )
    for result in results:
        _report(result)
    kept = sum(1 for r in results if r.outcome.get("result") in ("released", "discarded"))
    console.print(
        f"{len(results)} entries signed for; {kept} {'released' if action is Action.RETRY_QUARANTINE else 'discarded'}"
    )


def retry(
    ids: list[int] | None = _IDS,
    stage: str | None = _STAGE,
    system: str | None = _SYSTEM,
    kind: str | None = _KIND,
    limit: int = _LIMIT,
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Run entries through again with the mapping and registry in force now (after a fix), signed."""
    filters = {"stage": stage, "system": system, "kind": kind, "limit": limit}
    _quarantine(Action.RETRY_QUARANTINE, ids, filters, (signer, meaning, reason, text, password_stdin))


def discard(
    ids: list[int] | None = _IDS,
    stage: str | None = _STAGE,
    system: str | None = _SYSTEM,
    kind: str | None = _KIND,
    limit: int = _LIMIT,
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Close entries without applying them (the payload stays archived), signed."""
    filters = {"stage": stage, "system": system, "kind": kind, "limit": limit}
    _quarantine(Action.DISCARD_QUARANTINE, ids, filters, (signer, meaning, reason, text, password_stdin))


# outbox ----------------------------------------------------------------------------------------


@outbox_app.command("dead")
def dead_letters(
    partner: str | None = typer.Option(None, "--partner", help="crm, erp, hl7, cmo, webhook"),
    limit: int = typer.Option(200, min=1, max=10_000),
) -> None:
    """Messages to partners that gave up, with their last error."""
    with open_session(readonly=True) as session:
        rows = outbox.messages(session, destination_kind=partner, status=outbox.OutboxStatus.DEAD, limit=limit)
    table = Table(title=f"{len(rows)} dead letters")
    for col in ("id", "partner", "to", "attempts", "created", "last error"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id),
            row.destination_kind,
            row.destination_id,
            str(row.attempts),
            row.created_at.isoformat(timespec="seconds"),
            escape(row.last_error or ""),
        )
    console.print(table)


@outbox_app.command("replay")
def replay_dead(
    partner: str = typer.Option(..., "--partner", help="crm, erp, hl7, cmo, webhook"),
    message: list[int] = typer.Option([], "--message", help="only these message ids (default: all dead)"),
    signer: str | None = _SIGNER,
    meaning: Meaning = _MEANING,
    reason: str = _REASON,
    text: str = _TEXT,
    password_stdin: bool = _STDIN,
) -> None:
    """Give a partner's dead letters a fresh set of attempts (after its receiver is fixed), signed."""
    ids = list(message) or None
    result = _decide(
        Action.REPLAY_DEAD_LETTERS,
        f"outbox:{partner}",
        lambda s: decisions.preview_dead_letters(s, partner, ids),
        lambda s, sig: decisions.replay_dead_letters(s, partner, sig, ids),
        (signer, meaning, reason, text, password_stdin),
    )
    _report(result)


# operators -------------------------------------------------------------------------------------


@operators_app.command("add")
def add_operator(
    user_id: str = typer.Argument(..., metavar="NAME", help="the user id the person signs with"),
    scope: list[str] = typer.Option(
        ..., "--scope", help=f"{decisions.ALL_ACTIONS} or actions: {', '.join(a.value for a in Action)}"
    ),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin's first line"),
) -> None:
    """Add a person who may sign the actions in --scope; asks their password (stored as a scrypt hash)."""
    if password_stdin:
        password = read_password(True, "password")
    else:
        password = typer.prompt(f"password for {user_id}", hide_input=True, confirmation_prompt=True)
    scopes = [part.strip() for value in scope for part in value.split(",") if part.strip()]
    try:
        with open_session() as session:
            row = decisions.add_operator(session, user_id, password, scopes)
            scopes = list(row.scopes)
    except DecisionError as exc:
        raise CliError(exc.message, exc.hint or "see `cgthub operators add --help`") from exc
    console.print(f"operator {user_id} added; may sign: {', '.join(scopes)}")


@operators_app.command("list")
def list_operators() -> None:
    """Every operator, their scopes, and whether they may still sign (never a password hash)."""
    with open_session(readonly=True) as session:
        rows = list(session.scalars(select(Operator).order_by(Operator.id)))
    table = Table(title=f"{len(rows)} operators")
    for col in ("user id", "may sign", "added", "disabled"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row.id,
            ", ".join(row.scopes),
            row.created_at.isoformat(timespec="seconds"),
            row.disabled_at.isoformat(timespec="seconds") if row.disabled_at else "",
        )
    console.print(table)


@operators_app.command("disable")
def disable_operator(user_id: str = typer.Argument(..., metavar="NAME")) -> None:
    """Stop a person signing from now on (their past signatures stay)."""
    try:
        with open_session() as session:
            decisions.disable_operator(session, user_id)
    except DecisionError as exc:
        raise CliError(exc.message, "list operators with `cgthub operators list`") from exc
    console.print(f"operator {user_id} disabled")


# decisions -------------------------------------------------------------------------------------


@decisions_app.command("reasons")
def list_reasons() -> None:
    """The reason codes of config/reason_codes.yaml and the actions each may justify."""
    try:
        codes = decisions.reason_codes()
    except DecisionError as exc:
        raise CliError(exc.message, exc.hint or None) from exc
    table = Table(title=f"{len(codes.codes)} reason codes ({decisions.reason_codes_path()})")
    for col in ("code", "actions", "meaning"):
        table.add_column(col, overflow="fold")
    for code in codes.codes:
        table.add_row(code.code, ", ".join(a.value for a in code.actions), code.title)
    console.print(table)


@decisions_app.command("list")
def list_decisions(
    order: str | None = typer.Option(None, "--order", help="only this order's"),
    limit: int = typer.Option(100, min=1, max=10_000),
) -> None:
    """Signed decisions, newest first: who signed what, meaning, reason and outcome."""
    with open_session(readonly=True) as session:
        query = select(OperatorDecision).order_by(OperatorDecision.id.desc()).limit(limit)
        if order:
            query = query.where(OperatorDecision.order_id == order)
        rows = list(session.scalars(query))
    table = Table(title=f"{len(rows)} signed decisions")
    for col in ("id", "signed", "signer", "meaning", "action", "subject", "reason", "text", "outcome"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id),
            row.signed_at.isoformat(timespec="seconds"),
            row.signer,
            row.meaning,
            row.action,
            row.subject,
            row.reason_code,
            escape(row.reason_text),
            escape(json.dumps(row.outcome, sort_keys=True, default=str)),
        )
    console.print(table)
