"""`cgthub ledger`: the tamper-evident custody ledger."""

from __future__ import annotations

import typer

from cgthub.cli.common import CliError, console, open_session

app = typer.Typer(help="The hash-chained custody ledger.", no_args_is_help=True)


@app.command()
def verify(order_id: str | None = typer.Option(None, "--order", help="verify one order only")) -> None:
    """Recompute every chain, its seals and heads, and hold it to the latest checkpoint; exit 1
    naming each broken order and entry."""
    from cgthub import ledger

    with open_session(readonly=True) as session:
        result = ledger.verify_all(session, order_id)
    if order_id and result.orders == 0 and not result.problems:
        raise CliError(f"no order {order_id}", "list orders with `cgthub orders list`")
    anchor = (
        f"checked against the checkpoint of {result.checkpoint_at} ({result.checkpoint_lines} lines)"
        if result.checkpoint_at
        else "no checkpoint of this database yet (run `cgthub ledger checkpoint`): a cut-back chain would not show"
    )
    if result.problems:
        for problem in result.problems:
            console.print(f"[red]TAMPERED[/] {problem}")
        console.print(anchor)
        broken = len({p.order_id for p in result.problems if p.order_id})
        raise CliError(
            f"ledger verification failed: {len(result.problems)} problem(s) in {broken} of {result.orders} orders",
            "restore the named orders' ledger rows from backup and investigate who changed them; "
            "the database audit log shows when",
        )
    console.print(
        f"ledger OK: {result.orders} orders, {result.entries} entries, every chain intact and sealed; {anchor}"
    )


@app.command()
def checkpoint() -> None:
    """Append every chain head that moved to the signed checkpoint file (outside the database).

    Run it often (the monitoring DAG does, every 15 minutes): a chain cut back to an earlier head
    shows in `verify` only once a checkpoint has recorded the later one."""
    from cgthub import ledger_anchor

    with open_session(readonly=True) as session:
        result = ledger_anchor.checkpoint(session)
    for order_id, problem in result.problems:
        console.print(f"[red]TAMPERED[/] {f'order {order_id}: ' if order_id else ''}{problem}")
    console.print(f"checkpoint: {result.recorded} of {result.orders} chain heads recorded in {result.path}")
    if result.problems:
        raise CliError(
            f"{len(result.problems)} chain(s) contradict an earlier checkpoint and were not recorded",
            "run `cgthub ledger verify` and restore the named orders from backup",
        )
