"""`cgthub quarantine`: what could not go through, and why."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cgthub import quarantine
from cgthub.cli.common import CliError, console, open_session
from cgthub.tables import RawMessage

app = typer.Typer(help="Quarantined payloads and events.", no_args_is_help=True)


@app.command("list")
def list_entries(
    status: quarantine.QuarantineStatus = typer.Option(quarantine.QuarantineStatus.OPEN, help="entry status"),
    stage: quarantine.Stage | None = typer.Option(None, help="only this stage"),
    system: str | None = typer.Option(None, help="only this source system (partner), e.g. crm, hl7"),
    limit: int = typer.Option(200, min=1, max=10_000, help="most entries to show"),
) -> None:
    """One line per quarantined payload or event: partner, kind, stage, how often seen, why."""
    with open_session(readonly=True) as session:
        rows = quarantine.list_entries(session, status=status, stage=stage, system=system, limit=limit)
    table = Table(title=f"{len(rows)} {status.value} quarantine entries")
    for col in ("id", "system", "kind", "stage", "seen", "last seen", "raw", "reason"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id),
            row.system,
            row.kind,
            row.stage,
            str(row.occurrences),
            row.last_seen.isoformat(timespec="seconds"),
            str(row.raw_id or ""),
            escape(row.reason),
        )
    console.print(table)


@app.command()
def show(
    entry_id: int = typer.Argument(..., metavar="ID", help="the entry's id, from `cgthub quarantine list`"),
) -> None:
    """One entry in full: why, at which stage, from which partner, since when, and what to do."""
    now = datetime.now(UTC)
    with open_session(readonly=True) as session:
        row = quarantine.get(session, entry_id)
        if row is None:
            raise CliError(f"no quarantine entry {entry_id}", "list entries with `cgthub quarantine list`")
        raw = session.get(RawMessage, row.raw_id) if row.raw_id is not None else None
    stage = quarantine.Stage(row.stage)
    lines = [
        f"[bold]quarantine #{row.id}[/] {row.status}",
        f"reason:  {escape(row.reason)}",
        f"stage:   {stage.value}: {quarantine.STAGE_MEANING[stage]}",
        f"partner: {row.system}",
        f"kind:    {row.kind}",
        f"age:     first seen {_at(row.first_seen)} ({_age(now - _aware(row.first_seen))} ago), "
        f"last seen {_at(row.last_seen)}, {row.occurrences} time(s)",
        f"order:   {row.order_id or '-'}",
    ]
    if raw is not None:
        lines.append(
            f"payload: raw #{raw.id}, {raw.size} bytes {raw.content_type} over {raw.channel}, "
            f"received {_at(raw.received_at)}, archive status {raw.status} "
            "(read it with the archive, it may hold PHI)"
        )
    if row.resolution:
        lines.append(f"resolved: {escape(row.resolution)} at {_at(row.resolved_at)}")
    for line in lines:
        console.print(line)
    details = dict(row.details or {})
    if stage in quarantine.MAPPING_STAGES and "mapping" not in details:
        details["mapping now in use"] = _mapping_in_use(row.system, row.kind)
    console.print("details:" if details else "details: none recorded beyond the reason")
    for key, value in quarantine.masked_details(details).items():
        console.print(f"  {escape(str(key))}: {escape(_text(value))}")
    if row.status == quarantine.QuarantineStatus.OPEN.value:
        console.print(f"what to do: {_next_step(stage, row.system, row.kind, row.id)}")


def _mapping_in_use(system: str, kind: str) -> str:
    """The version live ingest maps this partner's payloads with today: the one a fix replaces."""
    from cgthub.mapping import registry
    from cgthub.mapping.spec import MappingError

    try:
        mapper = registry.get_mapper(system, kind)
    except (MappingError, ValueError) as exc:
        return f"none that loads ({exc})"
    return f"{mapper.mapping_id}@v{mapper.spec.version}" if mapper else f"none for {system}/{kind}"


def _next_step(stage: quarantine.Stage, system: str, kind: str, entry_id: int) -> str:
    if stage in quarantine.MAPPING_STAGES:
        return (
            f"fix or add a mapping version under mappings/{system}/ (`cgthub mappings test`), then "
            f"`cgthub mappings replay --system {system} --kind {kind} --version vN` releases it"
        )
    if stage is quarantine.Stage.CORRELATE:
        return "nothing if the order is still to be enrolled: the event is replayed once it is"
    if stage is quarantine.Stage.CONFLICT:
        return (
            "check the fields named in the reason with the partner: if the new version is right, "
            f"`cgthub quarantine retry {entry_id}` applies it as a correction of the version in force; "
            f"if it is not, `cgthub quarantine discard {entry_id}` keeps the first version (both signed). "
            "The partner's next delivery of it is counted here, it does not release it"
        )
    if stage is quarantine.Stage.IDENTITY:
        return "the order is on hold: settle the chain-of-identity discrepancy with the partners named above"
    return "fix the cause named in the reason; the partner's next delivery or a replay releases it"


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _at(at: datetime | None) -> str:
    return "-" if at is None else _aware(at).isoformat(timespec="seconds")


def _age(span: timedelta) -> str:
    seconds = max(span.total_seconds(), 0)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
