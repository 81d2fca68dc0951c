"""`cgthub ledger`: the tamper-evident custody ledger."""

from __future__ import annotations

import typer

from cgthub import ledger
from cgthub.cli.common import CliError, console, open_session

app = typer.Typer(help="The hash-chained custody ledger.", no_args_is_help=True)


@app.command()
def verify(order_id: str | None = typer.Option(None, "--order", help="verify one order only")) -> None:
    """Recompute every order's hash chain; exit 1 naming each broken order and entry."""
    with open_session(readonly=True) as session:
        checked, problems = ledger.verify(session, order_id)
    if order_id and checked == 0:
        raise CliError(f"no order {order_id}", "list orders with `cgthub orders list`")
    if problems:
        for problem in problems:
            console.print(f"[red]TAMPERED[/] {problem}")
        raise CliError(
            f"ledger verification failed: {len(problems)} problem(s) in "
            f"{len({p.order_id for p in problems})} of {checked} orders",
            "restore the named orders' ledger rows from backup and investigate who changed them; "
            "the database audit log shows when",
        )
    console.print(f"ledger OK: {checked} orders, every chain intact")
