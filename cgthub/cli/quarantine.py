"""`cgthub quarantine`: what could not go through, and why."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cgthub import quarantine
from cgthub.cli.common import CliError, console, open_session

app = typer.Typer(help="Quarantined payloads and events.", no_args_is_help=True)


@app.command("list")
def list_entries(
    status: quarantine.QuarantineStatus = typer.Option(quarantine.QuarantineStatus.OPEN, help="entry status"),
    stage: quarantine.Stage | None = typer.Option(None, help="only this stage"),
    system: str | None = typer.Option(None, help="only this source system"),
    limit: int = typer.Option(200, min=1, max=10_000),
) -> None:
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
            row.reason,
        )
    console.print(table)


@app.command()
def show(entry_id: int) -> None:
    with open_session(readonly=True) as session:
        row = quarantine.get(session, entry_id)
        if row is None:
            raise CliError(f"no quarantine entry {entry_id}", "list entries with `cgthub quarantine list`")
    console.print(f"[bold]quarantine #{row.id}[/] {row.status}  {row.system}/{row.kind}  stage {row.stage}")
    console.print(f"reason: {row.reason}")
    console.print(f"raw payload: #{row.raw_id}  order: {row.order_id or '-'}")
    console.print(f"first seen {row.first_seen.isoformat()}  last seen {row.last_seen.isoformat()}  x{row.occurrences}")
    if row.resolution:
        console.print(f"resolution: {row.resolution} at {row.resolved_at}")
    console.print_json(json.dumps(row.details, default=str))
