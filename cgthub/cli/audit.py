"""`cgthub audit`: the audit trail of people, exported and verified."""

from __future__ import annotations

from enum import StrEnum

import orjson
import typer

from cgthub.cli.common import CliError, console, open_session

app = typer.Typer(help="Audit trail of people: who did what (hash-chained, sealed).", no_args_is_help=True)


class Format(StrEnum):
    CSV = "csv"
    JSON = "json"


@app.command("export")
def export(
    fmt: Format = typer.Option(Format.CSV, "--format", help="csv or json"),
    output: str = typer.Option("-", "--output", "-o", help="file to write, - for stdout"),
) -> None:
    """Every row of the trail, oldest first, with its seals (verify them with `cgthub audit verify`)."""
    from cgthub import audit_trail

    with open_session(readonly=True) as session:
        text = audit_trail.export_text(session, fmt.value)
    if output == "-":
        typer.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    console.print(f"wrote {output}")


@app.command("verify")
def verify() -> None:
    """Recompute every row's seal and link: an edited, deleted or inserted row fails (exit 1)."""
    from cgthub import audit_trail

    with open_session(readonly=True) as session:
        result = audit_trail.verify(session)
    for problem in result.problems:
        console.print(f"[red]problem:[/] {problem}")
    if not result.ok:
        raise CliError(
            f"{len(result.problems)} problem(s) in {result.rows} audit rows: the trail was altered",
            "compare with an earlier export; the rows named above are where it changed",
        )
    console.print(f"verified: {result.rows} audit rows, chain unbroken to seq {result.head_seq}")


@app.command("checkpoint")
def checkpoint() -> None:
    """Sign the trail's head (seq, seal) into the checkpoint file outside the database.

    Deleting the newest rows leaves no gap in the chain; against a checkpoint, verify sees it."""
    from cgthub import audit_trail

    with open_session(readonly=True) as session:
        result = audit_trail.checkpoint(session)
    for problem in result.problems:
        console.print(f"[red]problem:[/] {problem}")
    if result.problems:
        raise CliError(
            f"the audit trail contradicts its checkpoint in {result.path}: head not recorded",
            "run `cgthub audit verify` and compare with an earlier export",
        )
    if result.recorded:
        console.print(f"checkpointed audit trail head seq {result.head_seq} in {result.path}")
    else:
        console.print(f"audit trail head seq {result.head_seq} already checkpointed (or empty)")


@app.command("config")
def config() -> None:
    """Record which configuration files changed since the trail last noted them (run it after an edit)."""
    from cgthub import audit_trail

    with open_session() as session:
        row = audit_trail.record_config_changes(session)
    if row is None:
        console.print(f"no configuration file under {audit_trail.config_dir()} changed since the trail last noted it")
        return
    console.print(f"recorded as audit row {row.seq}: {', '.join(orjson.loads(row.details)['changed'])}")
